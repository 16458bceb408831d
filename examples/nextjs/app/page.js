import Notes from './notes';

export default function Home() {
  return (
    <main>
      <h1>Notes behind secure-routes</h1>
      <p>
        Open this page through the gateway. Sign in with a token from{' '}
        <code>secure-routes token --sub alice</code>: it is kept as the <code>sr-session</code>{' '}
        cookie, an ambient credential, so every note you post needs the CSRF token, which{' '}
        <code>csrfFetch</code> (served by the gateway) adds.
      </p>
      <Notes />
    </main>
  );
}
