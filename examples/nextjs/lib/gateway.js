// Every API route of this app runs behind the secure-routes gateway, which authenticates the
// caller and then signs a short-lived assertion (X-Secure-Routes-Assertion: an ES256 JWT, 60 s,
// iss "secure-routes", aud = this app's origin as the gateway's `upstream` names it) with a key
// it publishes at /_secure-routes/jwks.json. Verifying it here means a request that reaches the
// app around the gateway (a port left open, a misrouted load balancer) is refused, and that the
// X-Secure-Routes-* headers cannot be forged by a client: the gateway strips incoming ones, and
// only the gateway's key can sign the claims they are checked against.
//
// Configuration (read at request time, so one build runs anywhere):
//   SECURE_ROUTES_GATEWAY_URL  where the gateway listens, e.g. http://127.0.0.1:8080
//   APP_ORIGIN                 this app's origin, the `upstream` in secure-routes.toml,
//                              e.g. http://127.0.0.1:3000 (the assertion's audience)
import { NextResponse } from 'next/server';
import { createRemoteJWKSet, errors, jwtVerify } from 'jose';

const ISSUER = 'secure-routes';

let keys = null;

/** The gateway's public keys, fetched on first use and cached by jose (refetched for an unknown kid). */
function gatewayKeys() {
  if (keys === null) {
    const gateway = process.env.SECURE_ROUTES_GATEWAY_URL;
    if (!gateway) throw new Error('SECURE_ROUTES_GATEWAY_URL is not set');
    keys = createRemoteJWKSet(new URL('/_secure-routes/jwks.json', gateway));
  }
  return keys;
}

function audience() {
  const origin = process.env.APP_ORIGIN;
  if (!origin) throw new Error('APP_ORIGIN is not set');
  return origin;
}

/**
 * `X-Secure-Routes-Subject`, decoded: the gateway percent-encodes what a header cannot carry
 * (control characters, space, `%`, `,`), so ordinary subjects (UUIDs, e-mail addresses) arrive
 * as they are. Null when absent (an anonymous caller) or not validly encoded.
 */
export function subjectHeader(request) {
  const header = request.headers.get('x-secure-routes-subject');
  if (header === null) return null;
  try {
    return decodeURIComponent(header);
  } catch {
    return null;
  }
}

/**
 * Verifies the gateway's assertion on `request` and returns who the gateway says the caller
 * is: `{ subject, roles, requestId }` (`subject` is null for an anonymous caller). Throws a
 * jose error when the assertion is missing, expired, for another audience or not signed by
 * the gateway.
 */
export async function verifyGateway(request) {
  const token = request.headers.get('x-secure-routes-assertion');
  if (!token) throw new errors.JWTInvalid('no X-Secure-Routes-Assertion header');
  const { payload } = await jwtVerify(token, gatewayKeys(), {
    issuer: ISSUER,
    audience: audience(),
    algorithms: ['ES256'], // never what the token's header asks for
    requiredClaims: ['exp', 'iat'],
  });
  // The plain headers are a convenience; the signed claims are what counts. A subject header
  // that disagrees with them means something rewrote the request on its way from the gateway.
  if ((subjectHeader(request) ?? undefined) !== payload.sub) {
    throw new errors.JWTClaimValidationFailed('X-Secure-Routes-Subject does not match the assertion', payload, 'sub', 'check_failed');
  }
  return {
    subject: payload.sub ?? null,
    roles: Array.isArray(payload.roles) ? payload.roles : [],
    requestId: typeof payload.rid === 'string' ? payload.rid : null,
  };
}

function problem(status, title, error, detail) {
  return NextResponse.json(
    { type: `urn:secure-routes-example:problem:${status}`, title, status, error, detail },
    { status, headers: { 'content-type': 'application/problem+json' } },
  );
}

/**
 * Wraps a route handler: `handler(request, identity, context)` runs only for a request with a
 * valid gateway assertion; anything else is a 401 (503 when the gateway's keys cannot be
 * fetched). The reason is logged, never the token.
 */
export function withGateway(handler) {
  return async function gatewayChecked(request, context) {
    let identity;
    try {
      identity = await verifyGateway(request);
    } catch (e) {
      if (e instanceof errors.JOSEError && !(e instanceof errors.JWKSTimeout)) {
        console.warn(`refused ${request.method} ${new URL(request.url).pathname}: ${e.code}`);
        return problem(401, 'Unauthorized', 'Gateway assertion required',
          'This app only answers requests forwarded by the secure-routes gateway.');
      }
      console.error('cannot verify the gateway assertion:', e.message);
      return problem(503, 'Service Unavailable', 'Service temporarily unavailable',
        'The gateway keys could not be fetched.');
    }
    return handler(request, identity, context);
  };
}
