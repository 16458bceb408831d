// The seed's Example 3. Method, authentication, CSRF, 5 per hour and the 100 KiB body limit are
// the gateway's (secure-routes.toml); a body over the limit never reaches this handler.
import { NextResponse } from 'next/server';
import { withGateway } from '@/lib/gateway';

export const dynamic = 'force-dynamic';

export const POST = withGateway(async (request, identity) => {
  const body = await request.arrayBuffer();
  return NextResponse.json({
    success: true,
    subject: identity.subject,
    roles: identity.roles,
    receivedBytes: body.byteLength,
  });
});
