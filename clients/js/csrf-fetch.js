// csrf-fetch.js: `fetch` with the secure-routes CSRF token (signed double-submit cookie).
//
// One self-contained ES module with no imports: the gateway serves this file as it is at
// `/_secure-routes/csrf-fetch.js`.
//
//   import csrfFetch from '/_secure-routes/csrf-fetch.js';
//   const res = await csrfFetch('/api/user/notes', {
//     method: 'POST',
//     headers: { 'Content-Type': 'application/json' },
//     body: JSON.stringify({ text: 'hello' }),
//   });
//
// What it does, and why:
// - Safe methods (GET, HEAD, OPTIONS, TRACE; RFC 9110 section 9.2.1) go out unchanged: the
//   server checks no token on them, so none is read or fetched.
// - Every other method (POST, PUT, PATCH, DELETE and extension methods, as the server's
//   safe-list) to the page's own origin gets `X-CSRF-Token`. The token comes from the readable
//   cookie (`__Host-csrf-token`, else `csrf-token`), else from the token endpoint
//   (`GET /_secure-routes/csrf`, JSON `{"csrfToken": "..."}`, which also sets the cookie).
// - A request to another origin never gets the token: a token sent to a third party can be
//   replayed by it against the user's session.
// - Credentials are `same-origin` unless the caller chose otherwise, so the session and CSRF
//   cookies go to the origin that issued them and nowhere else.
// - A 403 whose problem `type` is `urn:secure-routes:problem:csrf` (token missing, invalid,
//   expired, or minted for an earlier session) is retried once with a fresh token from the
//   endpoint. Any other 403 (authorization, a ban) is returned as it is: a new token cannot
//   change it.

/** The request header the server reads the token from (`guard::csrf::HEADER_NAME`). */
export const CSRF_HEADER = 'X-CSRF-Token';

/** The gateway's token endpoint. The demo's is `/api/csrf`. */
export const DEFAULT_TOKEN_URL = '/_secure-routes/csrf';

/** The problem `type` of every CSRF refusal (`RejectionKind::CsrfFailed`). */
export const CSRF_PROBLEM_TYPE = 'urn:secure-routes:problem:csrf';

// The cookie names, most trusted first. `__Host-` cookies can only be set Secure, Path=/ and
// without Domain, so a sibling subdomain cannot plant one ("cookie tossing"); when both exist
// (a site that moved to HTTPS), that one is the server's.
const COOKIE_NAMES = ['__Host-csrf-token', 'csrf-token'];

// Methods that need no token: RFC 9110 section 9.2.1, the same safe-list as the server. Compared
// after fetch's own normalization (only DELETE, GET, HEAD, OPTIONS, POST and PUT are
// upper-cased), so `patch` stays an unknown method and gets a token, as the server expects.
const SAFE_METHODS = new Set(['GET', 'HEAD', 'OPTIONS', 'TRACE']);
const NORMALIZED_METHODS = new Set(['DELETE', 'GET', 'HEAD', 'OPTIONS', 'POST', 'PUT']);

// A token is base64url (75 characters today). Anything else in a cookie or a response is not
// ours and is never copied into a header.
const TOKEN_SHAPE = /^[A-Za-z0-9_-]{1,512}$/;

// A CSRF problem body is a few hundred bytes; a 403 announcing more is not read for a retry.
const MAX_PROBLEM_BYTES = 64 * 1024;

/** The token endpoint failed: no usable token, so the request was not sent. */
export class CsrfTokenError extends Error {
  /**
   * @param {string} message
   * @param {number | undefined} status the endpoint's HTTP status, if it answered
   */
  constructor(message, status) {
    super(message);
    this.name = 'CsrfTokenError';
    /** @type {number | undefined} */
    this.status = status;
  }
}

function normalizeMethod(method) {
  const m = String(method);
  const upper = m.toUpperCase();
  return NORMALIZED_METHODS.has(upper) ? upper : m;
}

// The value of cookie `name` in a `document.cookie` string, if it has a token's shape.
function readCookie(cookieString, name) {
  if (typeof cookieString !== 'string') return undefined;
  for (const part of cookieString.split(';')) {
    const eq = part.indexOf('=');
    if (eq < 0) continue;
    if (part.slice(0, eq).trim() !== name) continue;
    const value = part.slice(eq + 1).trim();
    if (TOKEN_SHAPE.test(value)) return value;
  }
  return undefined;
}

/**
 * A `fetch` that adds the CSRF token. Every option is looked up when a request is made, so a
 * test (or a polyfill) can install its globals after this module loaded.
 *
 * @param {object} [options]
 * @param {string | URL} [options.tokenUrl] the token endpoint (default `/_secure-routes/csrf`)
 * @param {typeof fetch} [options.fetch] the fetch to call (default `globalThis.fetch`)
 * @param {{ cookie?: string, baseURI?: string }} [options.document] where the cookie is read
 *   and relative URLs resolve (default `globalThis.document`)
 * @param {{ origin: string, href?: string }} [options.location] the page's origin (default
 *   `globalThis.location`)
 * @returns {(input: RequestInfo | URL, init?: RequestInit) => Promise<Response>}
 */
export function createCsrfFetch(options = {}) {
  const tokenUrl = options.tokenUrl ?? DEFAULT_TOKEN_URL;
  const getFetch = () => options.fetch ?? globalThis.fetch;
  const getDocument = () => options.document ?? globalThis.document;
  const getLocation = () => options.location ?? globalThis.location;

  // The last token the endpoint returned: used only when no cookie is readable (cookies the
  // page cannot see, no `document`). The cookie wins because the server compares the header
  // with the cookie it receives.
  let fetchedToken;
  // One endpoint call at a time, shared by concurrent requests.
  let pending;

  const pageOrigin = () => {
    const origin = getLocation()?.origin;
    // An opaque origin ("null": file:, data:, sandboxed frames) is the same as nothing.
    return typeof origin === 'string' && origin !== 'null' ? origin : undefined;
  };

  const baseUrl = () => getDocument()?.baseURI ?? getLocation()?.href ?? pageOrigin();

  const resolve = (url) => {
    try {
      return new URL(url, baseUrl());
    } catch {
      return undefined;
    }
  };

  const cookieToken = () => {
    const cookies = getDocument()?.cookie;
    for (const name of COOKIE_NAMES) {
      const value = readCookie(cookies, name);
      if (value !== undefined) return value;
    }
    return undefined;
  };

  const fetchToken = () => {
    pending ??= (async () => {
      const url = resolve(tokenUrl);
      if (url === undefined) throw new CsrfTokenError(`bad token URL: ${tokenUrl}`, undefined);
      let res;
      try {
        res = await getFetch()(url.href, {
          method: 'GET',
          credentials: 'same-origin',
          cache: 'no-store',
          headers: { Accept: 'application/json' },
        });
      } catch (err) {
        throw new CsrfTokenError(`token endpoint unreachable: ${err?.message ?? err}`, undefined);
      }
      if (!res.ok) throw new CsrfTokenError(`token endpoint answered ${res.status}`, res.status);
      let body;
      try {
        body = await res.json();
      } catch {
        throw new CsrfTokenError('token endpoint answered something other than JSON', res.status);
      }
      const token = body?.csrfToken;
      if (typeof token !== 'string' || !TOKEN_SHAPE.test(token)) {
        throw new CsrfTokenError('token endpoint answered no csrfToken', res.status);
      }
      fetchedToken = token;
      return token;
    })().finally(() => {
      pending = undefined;
    });
    return pending;
  };

  const currentToken = async () => cookieToken() ?? fetchedToken ?? (await fetchToken());

  return async function csrfFetch(input, init = undefined) {
    const fetchImpl = getFetch();
    // Duck-typed rather than `instanceof`, so a Request from another realm (an iframe) is not
    // mistaken for a string: "[object Request]" would resolve to a same-origin path.
    const isRequest =
      typeof input === 'object' &&
      input !== null &&
      typeof input.url === 'string' &&
      typeof input.clone === 'function';
    const method = normalizeMethod(init?.method ?? (isRequest ? input.method : 'GET'));

    // Credentials `same-origin` unless the caller set them (in `init`, or on their Request).
    let sendInit = init;
    if (!isRequest && init?.credentials === undefined) {
      sendInit = { ...init, credentials: 'same-origin' };
    }

    const origin = pageOrigin();
    const target = resolve(isRequest ? input.url : input);
    const sameOrigin = origin !== undefined && target !== undefined && target.origin === origin;
    if (SAFE_METHODS.has(method) || !sameOrigin) {
      return sendInit === undefined ? fetchImpl(input) : fetchImpl(input, sendInit);
    }

    const token = await currentToken();
    // One Request holding the body; its clone (taken before the first try, since a body can be
    // read once only) is the retry.
    const first = new Request(isRequest ? input : target.href, sendInit);
    const spare = first.clone();
    first.headers.set(CSRF_HEADER, token);
    const res = await fetchImpl(first);
    if (!(await isCsrfRefusal(res))) return res;

    // The refusal is replaced by the retry's answer: release its body (and connection).
    res.body?.cancel().catch(() => {});
    const fresh = await fetchToken();
    spare.headers.set(CSRF_HEADER, fresh);
    return fetchImpl(spare);
  };
}

// Whether `res` is a secure-routes CSRF refusal. Reads at most MAX_PROBLEM_BYTES of a clone,
// so the caller still gets an unread body when it is returned, and a large 403 (chunked, with
// no length) is not held in memory to find out.
async function isCsrfRefusal(res) {
  if (res.status !== 403) return false;
  const type = res.headers.get('content-type') ?? '';
  if (!type.toLowerCase().startsWith('application/problem+json')) return false;
  if (Number(res.headers.get('content-length')) > MAX_PROBLEM_BYTES) return false;
  try {
    const text = await readAtMost(res.clone(), MAX_PROBLEM_BYTES);
    return text !== undefined && JSON.parse(text)?.type === CSRF_PROBLEM_TYPE;
  } catch {
    return false;
  }
}

// The body as text if it is at most `limit` bytes, else undefined (the rest is not read).
async function readAtMost(res, limit) {
  if (res.body === null) return '';
  const reader = res.body.getReader();
  const chunks = [];
  let size = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    size += value.byteLength;
    if (size > limit) {
      reader.cancel().catch(() => {});
      return undefined;
    }
    chunks.push(value);
  }
  const bytes = new Uint8Array(size);
  let at = 0;
  for (const c of chunks) {
    bytes.set(c, at);
    at += c.byteLength;
  }
  return new TextDecoder().decode(bytes);
}

/** `fetch` with the CSRF token from `/_secure-routes/csrf` (the gateway's endpoint). */
export const csrfFetch = createCsrfFetch();

export default csrfFetch;
