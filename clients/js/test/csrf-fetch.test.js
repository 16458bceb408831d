import { test } from 'node:test';
import assert from 'node:assert/strict';

import { createCsrfFetch, CsrfTokenError, CSRF_HEADER } from '../csrf-fetch.js';
import { fakeServer, token, problem, csrfProblem, ORIGIN } from '../support/fake-server.js';

const COOKIE_TOKEN = token('cookie');

function client(server, options = {}) {
  return createCsrfFetch({
    fetch: server.fetch,
    document: server.document,
    location: server.location,
    ...options,
  });
}

test('the header goes on POST, PUT, PATCH, DELETE and extension methods', async () => {
  const s = fakeServer({ cookie: `csrf-token=${COOKIE_TOKEN}`, accept: [COOKIE_TOKEN] });
  const f = client(s);
  for (const method of ['POST', 'PUT', 'PATCH', 'DELETE', 'post', 'patch', 'PROPFIND']) {
    const res = await f('/api/notes', { method, body: method === 'PROPFIND' ? null : 'x' });
    assert.equal(res.status, 200, method);
  }
  const routes = s.routeRequests();
  assert.equal(routes.length, 7);
  for (const r of routes) assert.equal(r.headers.get(CSRF_HEADER), COOKIE_TOKEN, r.method);
  assert.equal(s.tokenFetches().length, 0);
});

test('safe methods get no header and fetch no token', async () => {
  const s = fakeServer({ cookie: `csrf-token=${COOKIE_TOKEN}` });
  const f = client(s);
  for (const method of ['GET', 'HEAD', 'OPTIONS', 'get', undefined]) {
    const res = await f('/api/public-data', method === undefined ? undefined : { method });
    assert.equal(res.status, 200);
  }
  await f(new Request(`${ORIGIN}/api/public-data`));
  assert.equal(s.requests.length, 6);
  for (const r of s.requests) assert.equal(r.headers.get(CSRF_HEADER), null, r.method);
  assert.equal(s.tokenFetches().length, 0);
});

test('the token comes from the cookie without a fetch; __Host- wins', async () => {
  const hostToken = token('host');
  const s = fakeServer({
    cookie: `theme=dark; csrf-token=${COOKIE_TOKEN}; __Host-csrf-token=${hostToken}; x=1`,
    accept: [hostToken],
  });
  const res = await client(s)('/api/notes', { method: 'POST', body: '{}' });
  assert.equal(res.status, 200);
  assert.equal(s.requests.length, 1);
  assert.equal(s.requests[0].headers.get(CSRF_HEADER), hostToken);
});

test('a cookie value that is not token-shaped is never copied into the header', async () => {
  const s = fakeServer({ cookie: 'csrf-token=abc\r\nX-Evil: 1; other=1' });
  const res = await client(s)('/api/notes', { method: 'POST', body: '{}' });
  assert.equal(res.status, 200);
  assert.equal(s.tokenFetches().length, 1, 'fell back to the endpoint');
  assert.equal(s.routeRequests()[0].headers.get(CSRF_HEADER), s.issued[0]);
});

test('without a cookie the token is fetched once, same-origin, uncached', async () => {
  const s = fakeServer();
  const f = client(s);
  assert.equal((await f('/api/notes', { method: 'POST', body: 'a' })).status, 200);
  assert.equal((await f('/api/notes', { method: 'DELETE' })).status, 200);
  // Concurrent first requests share one endpoint call.
  const s2 = fakeServer();
  const f2 = client(s2);
  const all = await Promise.all([1, 2, 3].map(() => f2('/api/notes', { method: 'PUT' })));
  assert.deepEqual(all.map((r) => r.status), [200, 200, 200]);
  assert.equal(s2.tokenFetches().length, 1);

  const [t] = s.tokenFetches();
  assert.equal(s.tokenFetches().length, 1);
  assert.equal(t.url, `${ORIGIN}/_secure-routes/csrf`);
  assert.equal(t.method, 'GET');
  assert.equal(t.credentials, 'same-origin');
  assert.equal(t.cache, 'no-store');
  for (const r of s.routeRequests()) assert.equal(r.headers.get(CSRF_HEADER), s.issued[0]);
});

test('tokenUrl is an option (the demo serves /api/csrf)', async () => {
  const s = fakeServer({ tokenPath: '/api/csrf' });
  const res = await client(s, { tokenUrl: '/api/csrf' })('/api/notes', { method: 'POST' });
  assert.equal(res.status, 200);
  assert.equal(s.tokenFetches()[0].url, `${ORIGIN}/api/csrf`);
});

test('a CSRF 403 is retried once with a fresh token from the endpoint', async () => {
  // The cookie holds a token of an earlier session: refused, then replaced.
  const s = fakeServer({ cookie: `csrf-token=${COOKIE_TOKEN}` });
  const res = await client(s)('/api/notes', { method: 'POST', body: '{"text":"hi"}' });
  assert.equal(res.status, 200);
  const [first, retry] = s.routeRequests();
  assert.equal(s.routeRequests().length, 2);
  assert.equal(first.headers.get(CSRF_HEADER), COOKIE_TOKEN);
  assert.equal(retry.headers.get(CSRF_HEADER), s.issued[0]);
  assert.equal(retry.body, '{"text":"hi"}');
  assert.equal(s.tokenFetches().length, 1);
});

test('a CSRF 403 is retried once, not twice', async () => {
  const s = fakeServer({ cookie: `csrf-token=${COOKIE_TOKEN}`, route: () => csrfProblem() });
  const res = await client(s)('/api/notes', { method: 'POST', body: 'x' });
  assert.equal(res.status, 403);
  assert.equal(s.routeRequests().length, 2);
  assert.equal(s.tokenFetches().length, 1);
  // The caller gets the refusal with its body unread.
  assert.equal((await res.json()).type, 'urn:secure-routes:problem:csrf');
});

test('a 403 that is not a CSRF refusal is not retried', async () => {
  const answers = {
    authz: () => problem(403, 'urn:secure-routes:problem:forbidden', 'Forbidden'),
    'plain text': () => new Response('csrf', { status: 403 }),
    'json, not problem': () =>
      new Response(JSON.stringify({ type: 'urn:secure-routes:problem:csrf' }), {
        status: 403,
        headers: { 'content-type': 'application/json' },
      }),
    'bad json': () =>
      new Response('{', { status: 403, headers: { 'content-type': 'application/problem+json' } }),
    'csrf type, but over 64 KiB and streamed (not read whole to find out)': () => {
      const big = JSON.stringify({
        type: 'urn:secure-routes:problem:csrf',
        pad: 'x'.repeat(100_000),
      });
      const bytes = new TextEncoder().encode(big);
      const stream = new ReadableStream({
        start(c) {
          for (let i = 0; i < bytes.length; i += 8192) c.enqueue(bytes.slice(i, i + 8192));
          c.close();
        },
      });
      return new Response(stream, {
        status: 403,
        headers: { 'content-type': 'application/problem+json' },
      });
    },
    'csrf type, another status': () => {
      const r = csrfProblem();
      return new Response(r.body, { status: 400, headers: r.headers });
    },
  };
  for (const [name, answer] of Object.entries(answers)) {
    const s = fakeServer({ cookie: `csrf-token=${COOKIE_TOKEN}`, route: answer });
    const res = await client(s)('/api/notes', { method: 'POST', body: 'x' });
    assert.equal(s.routeRequests().length, 1, name);
    assert.equal(s.tokenFetches().length, 0, name);
    assert.ok(!res.bodyUsed, name);
    assert.ok((await res.text()).length > 0, name);
  }
});

test('a request to another origin gets no token, and no token is fetched for it', async () => {
  const s = fakeServer({ cookie: `csrf-token=${COOKIE_TOKEN}`, route: () => new Response('x') });
  const f = client(s);
  const elsewhere = [
    'https://evil.example/collect',
    '//evil.example/collect',
    'http://app.example/api/notes', // another scheme is another origin
    'https://app.example:8443/api/notes', // and another port
    new URL('https://evil.example/u'),
    new Request('https://evil.example/r', { method: 'POST', body: 'x' }),
  ];
  for (const input of elsewhere) {
    const init = input instanceof Request ? undefined : { method: 'POST', body: 'x' };
    await f(input, init);
  }
  assert.equal(s.requests.length, elsewhere.length);
  for (const r of s.requests) assert.equal(r.headers.get(CSRF_HEADER), null, r.url);
  // The same origin spelled absolutely does get it.
  await f(`${ORIGIN}/api/notes`, { method: 'POST' });
  assert.equal(s.requests.at(-1).headers.get(CSRF_HEADER), COOKIE_TOKEN);
});

test('with no known page origin nothing gets the token', async () => {
  for (const location of [{}, { origin: 'null', href: 'file:///x' }]) {
    const s = fakeServer({ cookie: `csrf-token=${COOKIE_TOKEN}`, route: () => new Response('x') });
    await client(s, { location, document: { cookie: s.document.cookie } })(`${ORIGIN}/api/n`, {
      method: 'POST',
    });
    assert.equal(s.requests[0].headers.get(CSRF_HEADER), null);
  }
});

test('relative URLs resolve against the document base', async () => {
  const s = fakeServer({ cookie: `csrf-token=${COOKIE_TOKEN}`, accept: [COOKIE_TOKEN] });
  await client(s)('notes', { method: 'POST' });
  assert.equal(s.requests[0].url, `${ORIGIN}/app/notes`);
  assert.equal(s.requests[0].headers.get(CSRF_HEADER), COOKIE_TOKEN);
});

test('credentials are same-origin unless the caller set them', async () => {
  const s = fakeServer({ cookie: `csrf-token=${COOKIE_TOKEN}`, accept: [COOKIE_TOKEN] });
  const f = client(s);
  await f('/api/notes', { method: 'POST' });
  await f('/api/public-data');
  await f('/api/notes', { method: 'POST', credentials: 'include' });
  await f('/api/public-data', { credentials: 'omit' });
  await f(new Request(`${ORIGIN}/api/notes`, { method: 'POST', credentials: 'include' }));
  assert.deepEqual(
    s.requests.map((r) => r.credentials),
    ['same-origin', 'same-origin', 'include', 'omit', 'include'],
  );
  // Asked for explicitly, not left to the fetch's default (a polyfill's may be `omit`).
  assert.deepEqual(
    s.requests.map((r) => r.askedCredentials),
    ['same-origin', 'same-origin', 'include', 'omit', 'include'],
  );
});

test('the caller\'s other headers are kept', async () => {
  const s = fakeServer({ cookie: `csrf-token=${COOKIE_TOKEN}`, accept: [COOKIE_TOKEN] });
  await client(s)('/api/notes', {
    method: 'POST',
    headers: { 'Content-Type': 'application/json', 'X-Trace': 't' },
    body: '{}',
  });
  const [r] = s.requests;
  assert.equal(r.headers.get('content-type'), 'application/json');
  assert.equal(r.headers.get('x-trace'), 't');
});

test('a Request with a body is retried with the same body, method and headers', async () => {
  const s = fakeServer({ cookie: `csrf-token=${COOKIE_TOKEN}` });
  const body = JSON.stringify({ text: 'from a Request' });
  const req = new Request(`${ORIGIN}/api/notes`, {
    method: 'PUT',
    headers: { 'content-type': 'application/json' },
    body,
  });
  const res = await client(s)(req);
  assert.equal(res.status, 200);
  const [first, retry] = s.routeRequests();
  assert.equal(s.routeRequests().length, 2);
  for (const r of [first, retry]) {
    assert.equal(r.method, 'PUT');
    assert.equal(r.body, body);
    assert.equal(r.headers.get('content-type'), 'application/json');
  }
  assert.equal(retry.headers.get(CSRF_HEADER), s.issued[0]);
});

test('a streamed body is retried whole', async () => {
  const s = fakeServer({ cookie: `csrf-token=${COOKIE_TOKEN}` });
  const chunks = ['one,', 'two,', 'three'];
  const stream = new ReadableStream({
    pull(controller) {
      const c = chunks.shift();
      if (c === undefined) controller.close();
      else controller.enqueue(new TextEncoder().encode(c));
    },
  });
  const res = await client(s)('/api/notes', { method: 'POST', body: stream, duplex: 'half' });
  assert.equal(res.status, 200);
  assert.deepEqual(s.routeRequests().map((r) => r.body), ['one,two,three', 'one,two,three']);
});

test('init overrides the method of a Request', async () => {
  const s = fakeServer({ cookie: `csrf-token=${COOKIE_TOKEN}`, accept: [COOKIE_TOKEN] });
  await client(s)(new Request(`${ORIGIN}/api/notes`), { method: 'DELETE' });
  assert.equal(s.requests[0].method, 'DELETE');
  assert.equal(s.requests[0].headers.get(CSRF_HEADER), COOKIE_TOKEN);
});

test('a failing token endpoint rejects with CsrfTokenError and sends nothing', async () => {
  const cases = {
    500: () => new Response('no', { status: 500 }),
    'not json': () => new Response('<html>'),
    'no token': () => Response.json({ other: 1 }),
    'bad token': () => Response.json({ csrfToken: 'a b' }),
  };
  for (const [name, tokenResponse] of Object.entries(cases)) {
    const s = fakeServer({ tokenResponse });
    await assert.rejects(client(s)('/api/notes', { method: 'POST' }), (err) => {
      assert.ok(err instanceof CsrfTokenError, name);
      assert.equal(err.name, 'CsrfTokenError');
      if (name === '500') assert.equal(err.status, 500);
      return true;
    });
    assert.equal(s.routeRequests().length, 0, name);
  }
  const down = createCsrfFetch({
    fetch: async () => {
      throw new TypeError('connection refused');
    },
    document: { cookie: '' },
    location: { origin: ORIGIN, href: `${ORIGIN}/` },
  });
  await assert.rejects(down('/api/notes', { method: 'POST' }), CsrfTokenError);
});
