// The browser tests' harness: the real `secure-routes` binary, small node HTTP servers playing
// the upstream and a cross-site attacker, and Debian's headless Chromium driven by
// playwright-core.
//
// Why each piece is the way it is:
// - Every process a test starts is tracked by the returned handle and killed by
//   `t.after(...)` (and on process exit), so a failed assertion leaves no gateway or browser
//   behind for the next test or for another helper on the machine.
// - The gateway listens on `127.0.0.1:0` and its address is read from its banner line, so two
//   test runs on one machine never race for a port.
// - The attacker's pages are served on `localhost:PORT2` while the gateway is `127.0.0.1:PORT`:
//   a different *site* (registrable domain), not only a different origin, so the browser sends
//   `Sec-Fetch-Site: cross-site` and withholds `SameSite=Strict` cookies, exactly as it would
//   for evil.example.
// - Waiting is always "poll a condition until a liveness bound", never a sleep that assumes
//   how long something takes: the bound only turns a hang into a failure.

import { spawn, execFile } from 'node:child_process';
import { once } from 'node:events';
import { mkdtempSync, mkdirSync, writeFileSync, readFileSync, rmSync, existsSync } from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';

import { chromium } from 'playwright-core';

const execFileP = promisify(execFile);

/** The repository root (tests/browser/support/ is three levels down). */
export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..', '..');

/** The binary under test: `SECURE_ROUTES_BIN`, else the workspace's debug build. */
export const BIN = process.env.SECURE_ROUTES_BIN || path.join(ROOT, 'target', 'debug', 'secure-routes');

/** Debian's Chromium (`apt-get install chromium`); `CHROMIUM` overrides it. */
export const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';

/** Where screenshots go, kept as CI artifacts. */
export const ARTIFACTS = path.join(ROOT, 'target', 'browser-artifacts');

export const JWT_SECRET = 'browser-tests-jwt-secret-0123456789abcdef';
export const CSRF_SECRET = 'browser-tests-csrf-secret-0123456789abcdef';
export const ADMIN_TOKEN = 'browser-tests-admin-token-0123456789abcdef';

/** A liveness bound for anything that must happen (a start, an audit row): not a speed goal. */
export const BOUND_MS = 20_000;

// Every child process still running, killed if node exits early (an uncaught error).
const children = new Set();
process.on('exit', () => {
  for (const c of children) {
    try {
      c.kill('SIGKILL');
    } catch {
      // already gone
    }
  }
});

/** Polls `fn` until it returns a truthy value (returned) or `bound` ms pass (throws `what`). */
export async function waitFor(what, fn, bound = BOUND_MS) {
  const deadline = Date.now() + bound;
  let last;
  for (;;) {
    try {
      const v = await fn();
      if (v) return v;
    } catch (e) {
      last = e;
    }
    if (Date.now() > deadline) {
      throw new Error(`timed out after ${bound} ms waiting for ${what}${last ? `: ${last}` : ''}`);
    }
    // A polling interval, not a timing assumption: the condition above decides.
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** A fresh temp dir, removed when the test ends. */
export function tempDir(t, name) {
  const dir = mkdtempSync(path.join(os.tmpdir(), `sr-browser-${name}-`));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

/** The environment every `secure-routes` process gets: only what it needs, nothing inherited
 * from the developer's shell that could change its behaviour (a SECURE_ROUTES_* left set). */
function childEnv(extra = {}) {
  return {
    PATH: process.env.PATH,
    HOME: process.env.HOME,
    NO_COLOR: '1',
    RUST_LOG: 'warn',
    SECURE_ROUTES_JWT_SECRET: JWT_SECRET,
    CSRF_SECRET,
    SECURE_ROUTES_ADMIN_TOKEN: ADMIN_TOKEN,
    ...extra,
  };
}

/** Runs `secure-routes ARGS...` to completion; returns stdout (throws with stderr on failure). */
export async function cli(args, { cwd, env } = {}) {
  try {
    const { stdout } = await execFileP(BIN, args, { cwd, env: childEnv(env), timeout: BOUND_MS });
    return stdout;
  } catch (e) {
    throw new Error(`secure-routes ${args.join(' ')} failed: ${e.message}\n${e.stderr ?? ''}`);
  }
}

/** The audit rows (`secure-routes audit --json`, newest first) of a SQLite audit file. */
export async function auditRows(db, { action } = {}) {
  const args = ['audit', '--audit', `sqlite:${db}`, '--json', '--limit', '500'];
  if (action) args.push('--action', action);
  const out = await cli(args);
  return out
    .split('\n')
    .filter((l) => l.trim() !== '')
    .map((l) => JSON.parse(l));
}

/**
 * Starts a long-running `secure-routes ARGS...` whose banner line on stdout matches `banner`
 * (a regex whose group 1 is the `host:port` it listens on). Returns `{ url(path), addr, stop,
 * output() }`; the process is killed when the test ends.
 */
export async function startServer(t, args, { cwd, env, banner }) {
  const child = spawn(BIN, args, { cwd, env: childEnv(env), stdio: ['ignore', 'pipe', 'pipe'] });
  children.add(child);
  let out = '';
  let err = '';
  child.stdout.on('data', (d) => (out += d));
  child.stderr.on('data', (d) => (err += d));
  const exited = once(child, 'exit');
  const stop = async () => {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill('SIGTERM');
      const killer = setTimeout(() => child.kill('SIGKILL'), 10_000);
      await exited;
      clearTimeout(killer);
    }
    children.delete(child);
  };
  t.after(stop);
  let addr;
  try {
    addr = await waitFor(`the banner of secure-routes ${args[0]}`, () => {
      if (child.exitCode !== null) {
        throw new Error(`secure-routes ${args.join(' ')} exited ${child.exitCode}`);
      }
      return out.match(banner)?.[1];
    });
  } catch (e) {
    throw new Error(`${e.message}\nstdout:\n${out}\nstderr:\n${err}`);
  }
  return {
    addr,
    url: (p = '/') => `http://${addr}${p}`,
    stop,
    output: () => `stdout:\n${out}\nstderr:\n${err}`,
  };
}

/**
 * `secure-routes serve` with `routes` (TOML after `listen`, `upstream` and `[stores]`) in
 * `dir`: the audit trail in `dir/audit.db`, bans and limits in `dir/limits.db` (a location the
 * `bans` CLI can open too). Ready when `/_secure-routes/health` answers 200.
 */
export async function startGateway(t, { dir, upstream, routes }) {
  const config = path.join(dir, 'secure-routes.toml');
  writeFileSync(
    config,
    `listen = "127.0.0.1:0"
upstream = "${upstream}"

[stores]
audit = "sqlite:${path.join(dir, 'audit.db')}"
limits = "sqlite:${path.join(dir, 'limits.db')}"

${routes}
`,
  );
  const gw = await startServer(t, ['serve', '--config', config], {
    cwd: dir,
    banner: /listening on https?:\/\/(\S+)/,
  });
  await waitFor('the gateway health check', async () => (await fetch(gw.url('/_secure-routes/health'))).ok);
  return {
    ...gw,
    audit: path.join(dir, 'audit.db'),
    limits: `sqlite:${path.join(dir, 'limits.db')}`,
  };
}

/**
 * A node HTTP server on `host` (an ephemeral port) answering with `handler(req, body, res)`
 * and recording every request it saw (`method`, `url`, `headers`, `body`).
 */
export async function startHttp(t, host, handler) {
  const seen = [];
  const server = http.createServer((req, res) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => {
      const body = Buffer.concat(chunks).toString('utf8');
      seen.push({ method: req.method, url: req.url, headers: req.headers, body });
      handler(req, body, res);
    });
  });
  // `localhost` may resolve to ::1 first: listen on the address the browser will use.
  const listenHost = host === 'localhost' ? '127.0.0.1' : host;
  server.listen(0, listenHost);
  await once(server, 'listening');
  t.after(() => {
    server.closeAllConnections();
    server.close();
  });
  const { port } = server.address();
  return { seen, port, origin: `http://${host}:${port}`, url: (p = '/') => `http://${host}:${port}${p}` };
}

/** Sends `body` with `type` and, optionally, extra headers. */
export function send(res, status, type, body, headers = {}) {
  res.writeHead(status, { 'content-type': type, 'cache-control': 'no-store', ...headers });
  res.end(body);
}

/**
 * Headless Chromium (Debian's, through playwright-core: no browser download) with one fresh
 * context; closed when the test ends. `page.on('dialog')` is recorded in `dialogs` (an XSS
 * would open one) and console errors in `consoleErrors`.
 */
export async function openBrowser(t) {
  if (!existsSync(CHROMIUM)) {
    throw new Error(`${CHROMIUM} is missing: apt-get install chromium chromium-driver (see README, Testing)`);
  }
  const browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    // No proxy from the environment: every page is on loopback.
    args: ['--no-proxy-server'],
  });
  t.after(() => browser.close());
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  const page = await context.newPage();
  const dialogs = [];
  const consoleErrors = [];
  page.on('dialog', async (d) => {
    dialogs.push(d.message());
    await d.dismiss();
  });
  page.on('console', (m) => {
    if (m.type() === 'error') consoleErrors.push(m.text());
  });
  page.on('pageerror', (e) => consoleErrors.push(String(e)));
  return { browser, context, page, dialogs, consoleErrors };
}

/** Saves a full-page screenshot as `target/browser-artifacts/NAME.png`; returns its path. */
export async function screenshot(page, name) {
  mkdirSync(ARTIFACTS, { recursive: true });
  const file = path.join(ARTIFACTS, `${name}.png`);
  await page.screenshot({ path: file, fullPage: true });
  return file;
}

/** Whether the binary exists (the tests say how to build it when not). */
export function binaryPresent() {
  return existsSync(BIN);
}

/** Reads a file as text (for error messages). */
export function readText(file) {
  try {
    return readFileSync(file, 'utf8');
  } catch {
    return '';
  }
}
