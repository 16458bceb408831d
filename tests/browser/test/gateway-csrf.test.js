// CSRF through the gateway in a real browser (issue 12 part 5): a page on the gateway's own
// origin writes with csrfFetch (2xx), and a page on another site that auto-submits a form at
// the same route is refused with 403 before the upstream sees it, and audited.
//
// These are the two halves of the contract a browser user relies on: the protection must not
// break the app's own pages, and it must stop the classic CSRF attack (a cross-site form POST
// carries the victim's cookies in browsers without SameSite defaults, or with Lax cookies on
// top-level POSTs within two minutes of setting them).

import assert from 'node:assert/strict';
import { test } from 'node:test';

import {
  auditRows,
  binaryPresent,
  BIN,
  openBrowser,
  screenshot,
  send,
  startGateway,
  startHttp,
  tempDir,
  waitFor,
} from '../support/harness.js';

// A CSRF-protected route that needs no login: the token is required for every unsafe method
// (`csrf = "always"`), so an anonymous cross-site POST is refused by the Fetch Metadata check
// and a same-origin POST without the token by the signed double-submit check.
const ROUTES = `
[[routes]]
path = "/api/notes"
preset = "public"
csrf = "always"
`;

// The app's page: a module script (the upstream's own CSP allows only 'self' scripts, which
// the gateway passes on instead of its API default `default-src 'none'`).
const PAGE = `<!doctype html>
<html><head><meta charset="utf-8"><title>notes</title>
<script type="module" src="/app.js"></script></head>
<body><h1>Notes (served by the upstream through the gateway)</h1>
<p>without a token: <output id="plain">pending</output></p>
<p>with csrfFetch: <output id="result">pending</output></p></body></html>`;

const APP_JS = `import csrfFetch from '/_secure-routes/csrf-fetch.js';
const show = (id, text) => { document.getElementById(id).textContent = text; };
// First a plain fetch: the route must really be protected for the second call to mean anything.
const plain = await fetch('/api/notes', {
  method: 'POST',
  headers: { 'Content-Type': 'application/json' },
  body: JSON.stringify({ text: 'no token' }),
});
show('plain', String(plain.status) + ' ' + (await plain.json()).type);
const res = await csrfFetch('/api/notes', {
  method: 'POST',
  headers: { 'Content-Type': 'application/json' },
  body: JSON.stringify({ text: 'hello from the browser' }),
});
show('result', String(res.status) + ' ' + (await res.text()));
`;

/** The recording upstream: the page, its script, and the protected route. */
function upstreamHandler(req, body, res) {
  const page = { 'content-security-policy': "default-src 'self'" };
  if (req.method === 'GET' && req.url === '/') return send(res, 200, 'text/html; charset=utf-8', PAGE, page);
  if (req.method === 'GET' && req.url === '/app.js') return send(res, 200, 'text/javascript', APP_JS, page);
  if (req.url === '/api/notes') return send(res, 201, 'application/json', JSON.stringify({ saved: body }));
  return send(res, 404, 'text/plain', 'not found');
}

test('the binary under test exists', () => {
  assert.ok(binaryPresent(), `${BIN} is missing: cargo build -p secure-routes-cli --locked`);
});

test('a page on the gateway origin posts with csrfFetch and gets 2xx', async (t) => {
  const dir = tempDir(t, 'csrf-same');
  const upstream = await startHttp(t, '127.0.0.1', upstreamHandler);
  const gw = await startGateway(t, { dir, upstream: upstream.origin, routes: ROUTES });
  const { page, consoleErrors } = await openBrowser(t);

  await page.goto(gw.url('/'));
  await waitFor('the csrfFetch result', async () => (await page.textContent('#result')) !== 'pending');
  await screenshot(page, 'gateway-csrf-same-origin');

  const plain = await page.textContent('#plain');
  assert.equal(plain, '403 urn:secure-routes:problem:csrf', 'a POST without the token is refused');
  const result = await page.textContent('#result');
  assert.match(result, /^201 /, `csrfFetch got ${result}; console: ${consoleErrors.join('\n')}`);
  assert.match(result, /hello from the browser/);

  // The upstream saw exactly one POST (the csrfFetch one), with the token header.
  const posts = upstream.seen.filter((r) => r.method === 'POST');
  assert.equal(posts.length, 1, `upstream POSTs: ${JSON.stringify(posts.map((p) => p.body))}`);
  assert.equal(posts[0].url, '/api/notes');
  assert.deepEqual(JSON.parse(posts[0].body), { text: 'hello from the browser' });
  assert.match(posts[0].headers['x-csrf-token'] ?? '', /^[A-Za-z0-9_-]+$/);
  // The token came from the gateway's endpoint, not from the upstream.
  assert.ok(!upstream.seen.some((r) => r.url.startsWith('/_secure-routes/')), 'reserved paths never reach the upstream');
});

test('a cross-site page auto-submitting a form gets 403, the upstream never sees it, and it is audited', async (t) => {
  const dir = tempDir(t, 'csrf-cross');
  const upstream = await startHttp(t, '127.0.0.1', upstreamHandler);
  const gw = await startGateway(t, { dir, upstream: upstream.origin, routes: ROUTES });
  // The attacker: another site (localhost vs 127.0.0.1) whose page submits a form at once.
  const target = gw.url('/api/notes');
  const attacker = await startHttp(t, 'localhost', (req, _body, res) =>
    send(
      res,
      200,
      'text/html; charset=utf-8',
      `<!doctype html><html><body><h1>You won a prize</h1>
<form id="f" method="POST" action="${target}"><input type="hidden" name="text" value="forged"></form>
<script>document.getElementById('f').submit();</script></body></html>`,
    ),
  );
  const { page, context } = await openBrowser(t);
  // The victim has used the app before: the browser holds the gateway's CSRF cookie.
  await page.goto(gw.url('/_secure-routes/csrf'));
  assert.ok((await context.cookies()).some((c) => c.name === 'csrf-token'), 'no csrf-token cookie');

  const landed = page.waitForResponse((r) => r.url() === target && r.request().method() === 'POST');
  await page.goto(attacker.url('/'));
  const response = await landed;
  await page.waitForURL(target);
  await page.waitForLoadState('load');
  await screenshot(page, 'gateway-csrf-cross-site-form');

  // The browser really sent it as a cross-site form post: what the gateway had to refuse.
  const sent = await response.request().allHeaders();
  assert.equal(sent['sec-fetch-site'], 'cross-site');
  assert.equal(sent['origin'], attacker.origin);
  assert.equal(response.status(), 403);
  assert.match(response.headers()['content-type'], /^application\/problem\+json/);
  // The browser shows the problem document.
  const shown = await page.textContent('body');
  assert.match(shown, /urn:secure-routes:problem:csrf/);
  assert.match(shown, /Invalid or missing CSRF token/);

  assert.equal(upstream.seen.filter((r) => r.method === 'POST').length, 0, 'the upstream saw the forged POST');

  const rows = await waitFor('a csrf_validation_failed audit row', async () => {
    const r = await auditRows(gw.audit, { action: 'csrf_validation_failed' });
    return r.length > 0 && r;
  });
  assert.equal(rows.length, 1, JSON.stringify(rows));
  assert.equal(rows[0].status, 403);
  assert.equal(rows[0].method, 'POST');
  assert.equal(rows[0].path, '/api/notes');
  assert.equal(rows[0].outcome, 'denied');
  assert.equal(rows[0].client_ip, '127.0.0.1');
  // Refused by a CSRF check: the signed token (a form cannot send the header) or the Fetch
  // Metadata one (whichever the pipeline asks first; both must say no).
  assert.ok(['missing_header', 'missing_cookie', 'cross_site_fetch'].includes(rows[0].reason), rows[0].reason);
  console.log(`cross-site form refused with reason ${rows[0].reason}`);
});
