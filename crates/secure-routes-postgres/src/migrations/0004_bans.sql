-- secure-routes migration 4: escalating bans (secure_routes::bans).
--
-- One row per key with points, history or a ban in force; times are milliseconds since the
-- Unix epoch (the caller's clock). Keys are readable (`ip:203.0.113.7`, `sub:alice`):
-- operators list and lift bans by name. Logged, unlike rate_limits: a crash must not unban
-- every attacker, and rows change only on refusals, so the WAL is small. Each operation locks
-- its row (see bans.rs), so instances never interleave on a key.
CREATE TABLE bans (
    key         text    PRIMARY KEY,
    log         text    NOT NULL DEFAULT '',  -- strikes in the window: 'ms:weight,...'
    level       integer NOT NULL DEFAULT 0,   -- bans in a row (the escalation)
    last_ban    bigint  NOT NULL DEFAULT 0,   -- when the last ban was issued
    until       bigint  NOT NULL DEFAULT 0,   -- when the current ban ends
    reason      text    NOT NULL DEFAULT '',
    expires_at  bigint  NOT NULL DEFAULT 0    -- from then on the row equals a fresh key
);
CREATE INDEX bans_until ON bans (until);
