// The seed's Example 2: notes per user. The gateway authenticated the caller (authenticated
// preset: bearer token or session cookie, CSRF for cookie sessions) and names them in
// X-Secure-Routes-Subject; withGateway has checked that header against the signed assertion.
import { NextResponse } from 'next/server';
import { subjectHeader, withGateway } from '@/lib/gateway';

export const dynamic = 'force-dynamic';

// In memory, per server process: enough for an example.
const notes = (globalThis.__secureRoutesNotes ??= new Map());

function unauthorized() {
  return NextResponse.json({ error: 'Authentication required' }, { status: 401 });
}

export const GET = withGateway(async (request, identity) => {
  const subject = subjectHeader(request);
  if (!subject) return unauthorized(); // the gateway's route lets no anonymous caller here
  return NextResponse.json({
    subject,
    verifiedSubject: identity.subject,
    notes: notes.get(subject) ?? [],
  });
});

export const POST = withGateway(async (request, identity) => {
  const subject = subjectHeader(request);
  if (!subject) return unauthorized();
  let text;
  try {
    ({ text } = await request.json());
  } catch {
    text = undefined;
  }
  if (typeof text !== 'string' || text.length === 0 || text.length > 1000) {
    return NextResponse.json(
      { error: 'Invalid input', detail: 'Send {"text": "..."} (1 to 1000 characters).' },
      { status: 400 },
    );
  }
  const mine = notes.get(subject) ?? [];
  const note = { id: mine.length + 1, text };
  notes.set(subject, [...mine, note]);
  return NextResponse.json(
    { subject, verifiedSubject: identity.subject, note, notes: notes.get(subject) },
    { status: 201 },
  );
});
