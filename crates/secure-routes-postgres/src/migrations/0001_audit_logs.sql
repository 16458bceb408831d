-- secure-routes migration 1: the audit trail.
--
-- The original table's columns keep their names and meaning (id, action, user_id, metadata,
-- timestamp, created_at). `subject` holds the authenticated subject as text (it need not be a
-- UUID); `user_id` is filled when the subject is a UUID (Supabase `sub`). It has NO foreign
-- key: this crate does not know an `auth.users` table exists. A Supabase project adds it with
--   ALTER TABLE audit_logs ADD CONSTRAINT audit_logs_user_id_fkey
--     FOREIGN KEY (user_id) REFERENCES auth.users(id) ON DELETE SET NULL;
-- (ON DELETE SET NULL: deleting a user must not fail, nor delete the trail of their abuse.)
--
-- client_ip is text, not inet: it may be truncated or anonymised by configuration
-- ("192.0.2.0/24", "2001:db8::/64"), and it is stored exactly as the event carried it.
CREATE TABLE audit_logs (
    id          uuid        PRIMARY KEY,           -- UUIDv7: time-ordered
    action      text        NOT NULL,              -- rate_limit_exceeded, ...
    subject     text,                              -- the authenticated subject
    user_id     uuid,                              -- subject, when it is a UUID
    metadata    jsonb,                             -- NULL when empty
    "timestamp" timestamptz NOT NULL DEFAULT now(),
    created_at  timestamptz NOT NULL DEFAULT now(),
    outcome     text        NOT NULL,              -- denied, allowed, error
    client_ip   text,
    method      text        NOT NULL,
    route       text        NOT NULL,
    path        text        NOT NULL,
    status      integer     NOT NULL,
    reason      text        NOT NULL,
    request_id  text        NOT NULL,
    user_agent  text
);

-- The timestamp second in each index lets "newest first, filtered by action or subject" walk
-- one index backwards instead of sorting.
CREATE INDEX audit_logs_action_timestamp_idx ON audit_logs (action, "timestamp");
CREATE INDEX audit_logs_subject_timestamp_idx ON audit_logs (subject, "timestamp");
CREATE INDEX audit_logs_user_id_idx ON audit_logs (user_id) WHERE user_id IS NOT NULL;
CREATE INDEX audit_logs_timestamp_idx ON audit_logs ("timestamp");
