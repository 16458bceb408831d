'use client';

import { useEffect, useState } from 'react';

// csrfFetch comes from the gateway (same origin as this page), not from this app's bundle:
// webpackIgnore leaves the import() to the browser.
async function loadCsrfFetch() {
  const { csrfFetch } = await import(/* webpackIgnore: true */ '/_secure-routes/csrf-fetch.js');
  return csrfFetch;
}

export default function Notes() {
  const [notes, setNotes] = useState([]);
  const [subject, setSubject] = useState(null);
  const [text, setText] = useState('');
  const [token, setToken] = useState('');
  const [status, setStatus] = useState('');

  async function refresh() {
    const res = await fetch('/api/user/notes', { credentials: 'same-origin' });
    const body = await res.json();
    if (res.ok) {
      setSubject(body.subject);
      setNotes(body.notes);
      setStatus('');
    } else {
      setSubject(null);
      setNotes([]);
      // 401: not signed in yet, which the line above the form says.
      setStatus(res.status === 401 ? '' : `${res.status}: ${body.error}`);
    }
  }

  useEffect(() => {
    refresh();
  }, []);

  function signIn(event) {
    event.preventDefault();
    // A real app sets its session cookie (HttpOnly) from its login route; this example keeps a
    // token pasted by hand so the gateway is all there is to run.
    document.cookie = `sr-session=${encodeURIComponent(token.trim())}; Path=/; SameSite=Strict`;
    setToken('');
    refresh();
  }

  async function add(event) {
    event.preventDefault();
    let res;
    let body;
    try {
      const csrfFetch = await loadCsrfFetch();
      res = await csrfFetch('/api/user/notes', {
        method: 'POST',
        headers: { 'Content-Type': 'application/json' },
        body: JSON.stringify({ text }),
      });
      body = await res.json();
    } catch (e) {
      // The script or the token endpoint could not be reached (CsrfTokenError): nothing was sent.
      setStatus(`not sent: ${e.message}`);
      return;
    }
    if (res.ok) {
      setNotes(body.notes);
      setText('');
      setStatus(`saved as ${body.subject}`);
    } else {
      setStatus(`${res.status}: ${body.error}`);
    }
  }

  return (
    <section>
      <p id="who">{subject ? `Signed in as ${subject}` : 'Not signed in'}</p>
      <form onSubmit={signIn}>
        <input
          aria-label="token"
          placeholder="paste a token"
          value={token}
          onChange={(e) => setToken(e.target.value)}
        />{' '}
        <button type="submit">Sign in</button>
      </form>
      <form onSubmit={add}>
        <input
          aria-label="note"
          placeholder="a note"
          value={text}
          onChange={(e) => setText(e.target.value)}
        />{' '}
        <button type="submit" disabled={!subject || !text}>
          Add note
        </button>
      </form>
      <p id="status" role="status">{status}</p>
      <ul id="notes">
        {notes.map((n) => (
          <li key={n.id}>{n.text}</li>
        ))}
      </ul>
    </section>
  );
}
