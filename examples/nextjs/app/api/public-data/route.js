// The seed's Example 1. The gateway applies the policy (public preset, a small rate limit in
// secure-routes.toml); the app only checks that the request came through it.
import { NextResponse } from 'next/server';
import { withGateway } from '@/lib/gateway';

export const dynamic = 'force-dynamic';

export const GET = withGateway(async (_request, identity) =>
  NextResponse.json({
    data: [
      { id: 1, name: 'alpha' },
      { id: 2, name: 'beta' },
      { id: 3, name: 'gamma' },
    ],
    requestId: identity.requestId,
  }),
);
