// Types for csrf-fetch.js (secure-routes' browser CSRF helper).

/** The request header the server reads the token from. */
export declare const CSRF_HEADER: 'X-CSRF-Token';

/** The gateway's token endpoint, `/_secure-routes/csrf`. */
export declare const DEFAULT_TOKEN_URL: '/_secure-routes/csrf';

/** The problem `type` of every CSRF refusal. */
export declare const CSRF_PROBLEM_TYPE: 'urn:secure-routes:problem:csrf';

/** The token endpoint failed (unreachable, not 2xx, or no `csrfToken`); nothing was sent. */
export declare class CsrfTokenError extends Error {
  constructor(message: string, status: number | undefined);
  readonly name: 'CsrfTokenError';
  /** The endpoint's HTTP status, if it answered. */
  readonly status: number | undefined;
}

/** Options of {@link createCsrfFetch}; each is read when a request is made. */
export interface CsrfFetchOptions {
  /** The token endpoint answering `{"csrfToken": "..."}` (default `/_secure-routes/csrf`). */
  tokenUrl?: string | URL;
  /** The fetch to call (default `globalThis.fetch`). */
  fetch?: typeof globalThis.fetch;
  /** Where the cookie is read and relative URLs resolve (default `globalThis.document`). */
  document?: { cookie?: string; baseURI?: string };
  /** The page's origin; requests elsewhere never get the token (default `globalThis.location`). */
  location?: { origin: string; href?: string };
}

/**
 * `fetch` that sends `X-CSRF-Token` on unsafe methods to the page's origin, credentials
 * `same-origin` unless set, and retries once after a CSRF 403 with a fresh token. Rejects with
 * {@link CsrfTokenError} when a token is needed and the endpoint cannot give one.
 */
export type CsrfFetch = (input: RequestInfo | URL, init?: RequestInit) => Promise<Response>;

/** A {@link CsrfFetch} with its own token endpoint, fetch, document and location. */
export declare function createCsrfFetch(options?: CsrfFetchOptions): CsrfFetch;

/** A {@link CsrfFetch} bound to `/_secure-routes/csrf` and `globalThis.fetch`. */
export declare const csrfFetch: CsrfFetch;

export default csrfFetch;
