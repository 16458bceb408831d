import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';

import * as mod from '../csrf-fetch.js';
import csrfFetchDefault, { csrfFetch, DEFAULT_TOKEN_URL } from '../csrf-fetch.js';
import { fakeServer, ORIGIN } from '../support/fake-server.js';

const read = (name) => readFile(new URL(`../${name}`, import.meta.url), 'utf8');

test('the .d.ts declares exactly the values the module exports', async () => {
  const dts = await read('csrf-fetch.d.ts');
  const declared = [...dts.matchAll(/^export declare (?:const|function|class) (\w+)/gm)].map(
    (m) => m[1],
  );
  if (/^export default \w+;/m.test(dts)) declared.push('default');
  assert.deepEqual(Object.keys(mod).sort(), declared.sort());
  // The types the declarations refer to are there too.
  for (const name of ['CsrfFetchOptions', 'CsrfFetch']) {
    assert.match(dts, new RegExp(`^export (?:interface|type) ${name}\\b`, 'm'), name);
  }
  assert.equal(typeof mod.createCsrfFetch, 'function');
  assert.equal(typeof mod.CsrfTokenError, 'function');
  assert.equal(mod.CSRF_HEADER, 'X-CSRF-Token');
  assert.equal(mod.CSRF_PROBLEM_TYPE, 'urn:secure-routes:problem:csrf');
  assert.equal(DEFAULT_TOKEN_URL, '/_secure-routes/csrf');
  // The literal types in the .d.ts match the values.
  for (const name of ['CSRF_HEADER', 'DEFAULT_TOKEN_URL', 'CSRF_PROBLEM_TYPE']) {
    assert.match(dts, new RegExp(`export declare const ${name}: '${mod[name]}';`), name);
  }
});

test('the module is one self-contained file (the gateway embeds it)', async () => {
  const src = await read('csrf-fetch.js');
  assert.doesNotMatch(src, /^\s*import\b/m);
  assert.doesNotMatch(src, /\bimport\s*\(/);
  assert.doesNotMatch(src, /\brequire\s*\(/);
});

test('the default export is csrfFetch, bound to /_secure-routes/csrf and globals', async () => {
  assert.equal(csrfFetchDefault, csrfFetch);
  const s = fakeServer();
  const saved = {};
  for (const [k, v] of Object.entries({
    fetch: s.fetch,
    document: s.document,
    location: s.location,
  })) {
    saved[k] = Object.getOwnPropertyDescriptor(globalThis, k);
    Object.defineProperty(globalThis, k, { value: v, configurable: true, writable: true });
  }
  try {
    const res = await csrfFetch('/api/notes', { method: 'POST', body: 'x' });
    assert.equal(res.status, 200);
  } finally {
    for (const [k, d] of Object.entries(saved)) {
      if (d === undefined) delete globalThis[k];
      else Object.defineProperty(globalThis, k, d);
    }
  }
  assert.deepEqual(
    s.requests.map((r) => [r.method, r.url]),
    [
      ['GET', `${ORIGIN}/_secure-routes/csrf`],
      ['POST', `${ORIGIN}/api/notes`],
    ],
  );
  assert.equal(s.requests[1].headers.get('x-csrf-token'), s.issued[0]);
});
