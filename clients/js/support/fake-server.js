// A fake same-origin server for the tests: a `fetch` that answers like secure-routes (token
// endpoint plus a CSRF-checked route) and records every request it received, with its body.

export const ORIGIN = 'https://app.example';

/** A token-shaped string (75 characters of base64url, like the server's). */
export function token(label) {
  return (label + '_'.repeat(75)).slice(0, 75);
}

export function problem(status, type, title) {
  return new Response(JSON.stringify({ type, title, status, detail: title, error: title }), {
    status,
    headers: { 'content-type': 'application/problem+json' },
  });
}

export function csrfProblem() {
  return problem(403, 'urn:secure-routes:problem:csrf', 'CSRF Validation Failed');
}

/**
 * @param {object} [opts]
 * @param {string} [opts.cookie] the initial `document.cookie`
 * @param {string[]} [opts.tokens] what the token endpoint hands out, in order (the last repeats)
 * @param {string[]} [opts.accept] tokens the route accepts besides those the endpoint issued
 * @param {(req: Request, seen: object) => Response | undefined} [opts.route] answers a
 *   non-endpoint request first; by default an unsafe request passes when its header is an
 *   accepted token (a stale cookie fails with the CSRF problem).
 * @param {string} [opts.tokenPath]
 */
export function fakeServer(opts = {}) {
  const tokens = opts.tokens ?? [token('fresh')];
  const tokenPath = opts.tokenPath ?? '/_secure-routes/csrf';
  const state = {
    document: { cookie: opts.cookie ?? '', baseURI: `${ORIGIN}/app/page` },
    location: { origin: ORIGIN, href: `${ORIGIN}/app/page` },
    /** Every request: method, url, headers (Headers), credentials, askedCredentials, cache,
     *  body (text). */
    requests: [],
    issued: [],
    accept: new Set(opts.accept ?? []),
  };
  state.tokenFetches = () => state.requests.filter((r) => new URL(r.url).pathname === tokenPath);
  state.routeRequests = () => state.requests.filter((r) => new URL(r.url).pathname !== tokenPath);

  state.fetch = async (input, init) => {
    // As a browser does, relative URLs resolve against the document's base.
    const target =
      typeof input === 'string' || input instanceof URL
        ? new URL(input, state.document.baseURI)
        : input;
    const req = new Request(target, init);
    const body = req.body === null ? '' : await req.text();
    const seen = {
      method: req.method,
      url: req.url,
      headers: req.headers,
      credentials: req.credentials,
      // What the client asked for, before fetch's own default (also same-origin) fills it in.
      askedCredentials:
        init?.credentials ?? (target instanceof Request ? target.credentials : undefined),
      cache: req.cache,
      body,
    };
    state.requests.push(seen);
    const url = new URL(req.url);
    if (url.origin === ORIGIN && url.pathname === tokenPath) {
      if (opts.tokenResponse) return opts.tokenResponse();
      const t = tokens[Math.min(state.issued.length, tokens.length - 1)];
      state.issued.push(t);
      state.accept.add(t);
      return new Response(JSON.stringify({ csrfToken: t }), {
        headers: { 'content-type': 'application/json', 'cache-control': 'no-store' },
      });
    }
    if (opts.route) {
      const res = opts.route(req, seen, state);
      if (res) return res;
    }
    if (['GET', 'HEAD', 'OPTIONS'].includes(req.method)) return new Response('ok');
    if (state.accept.has(req.headers.get('x-csrf-token'))) {
      return new Response(JSON.stringify({ success: true, received: body.length }), {
        headers: { 'content-type': 'application/json' },
      });
    }
    return csrfProblem();
  };
  return state;
}
