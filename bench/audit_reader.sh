#!/usr/bin/env bash
# Speed sanity for the audit readers (issue 12 part 4): counts per action per minute and the
# top 10 addresses over 100 000 audit rows, in SQLite and Postgres, with the SQL the readers
# send (SqliteAuditReader / PgAuditReader: GROUP BY, SUM(count)) on the schema their
# migrations create (SQLite schema 5, Postgres migrations 1-5). Prints each statement's time.
#
#   bench/audit_reader.sh            # SQLite only
#   DATABASE_URL=postgres://postgres@127.0.0.1:5432/test bench/audit_reader.sh
#
# Rows: 100 000 over one day, 5 actions, 2 000 addresses, 500 subjects, counts 1-5.
set -euo pipefail
cd "$(dirname "$0")/.."
ROWS=${ROWS:-100000}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

echo "== SQLite ($ROWS rows)"
db="$tmp/audit.db"
sqlite3 "$db" <<SQL
CREATE TABLE audit_logs (id TEXT PRIMARY KEY NOT NULL, action TEXT NOT NULL, user_id TEXT,
  metadata TEXT, timestamp TEXT NOT NULL, created_at TEXT NOT NULL DEFAULT 'x',
  outcome TEXT NOT NULL, client_ip TEXT, method TEXT NOT NULL, route TEXT NOT NULL,
  path TEXT NOT NULL, status INTEGER NOT NULL, reason TEXT NOT NULL, request_id TEXT NOT NULL,
  user_agent TEXT, count INTEGER NOT NULL DEFAULT 1, fingerprint TEXT);
CREATE INDEX idx_audit_logs_action ON audit_logs(action, timestamp);
CREATE INDEX idx_audit_logs_user_id ON audit_logs(user_id, timestamp);
CREATE INDEX idx_audit_logs_timestamp ON audit_logs(timestamp);
CREATE INDEX idx_audit_logs_client_ip ON audit_logs(client_ip, timestamp);
WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i + 1 < $ROWS)
INSERT INTO audit_logs (id, action, user_id, timestamp, outcome, client_ip, method, route, path,
  status, reason, request_id, count, fingerprint)
SELECT printf('%08x-0000-7000-8000-%012x', i, i),
  CASE i % 5 WHEN 0 THEN 'unauthorized_access' WHEN 1 THEN 'rate_limit_exceeded'
    WHEN 2 THEN 'csrf_validation_failed' WHEN 3 THEN 'authz_fail' ELSE 'invalid_input' END,
  'user-' || (i % 500),
  strftime('%Y-%m-%dT%H:%M:%S', 1893456000 + i * 86400 / $ROWS, 'unixepoch') || '.000000000Z',
  'denied', '203.0.' || (i % 2000 / 256) || '.' || (i % 256), 'GET', '/api/a', '/api/a', 401,
  'bench', 'r' || i, 1 + i % 5, 'fp' || (i % 7)
FROM n;
ANALYZE;
SQL
sqlite3 "$db" <<'SQL'
.timer on
SELECT count(*), sum(count) FROM audit_logs;
-- counts per action per minute, the whole day
SELECT count(*) FROM (SELECT b - ((b % 60) + 60) % 60 AS bucket, action, SUM(count)
  FROM (SELECT unixepoch(timestamp) AS b, action, count AS count FROM audit_logs)
  GROUP BY bucket, action ORDER BY bucket, action);
-- the same for one action within the last hour
SELECT count(*) FROM (SELECT b - ((b % 60) + 60) % 60 AS bucket, action, SUM(count)
  FROM (SELECT unixepoch(timestamp) AS b, action, count AS count FROM audit_logs
        WHERE action = 'authz_fail' AND timestamp >= '2030-01-01T23:00:00.000000000Z')
  GROUP BY bucket, action ORDER BY bucket, action);
-- top 10 addresses, top 10 subjects
SELECT client_ip, SUM(count) AS n FROM audit_logs WHERE client_ip IS NOT NULL
  GROUP BY client_ip ORDER BY n DESC, client_ip LIMIT 10;
SELECT user_id, SUM(count) AS n FROM audit_logs WHERE user_id IS NOT NULL
  GROUP BY user_id ORDER BY n DESC, user_id LIMIT 10;
-- a page of one address's events, newest first
SELECT count(*) FROM (SELECT id FROM audit_logs WHERE client_ip = '203.0.1.7'
  ORDER BY timestamp DESC, id DESC LIMIT 50);
SQL

if [ -z "${DATABASE_URL:-}" ]; then
  echo "DATABASE_URL unset: Postgres skipped"
  exit 0
fi
echo "== Postgres ($ROWS rows)"
schema="sr_bench_$RANDOM$RANDOM"
psql -q -v ON_ERROR_STOP=1 "$DATABASE_URL" -c "CREATE SCHEMA $schema"
trap 'psql -q "$DATABASE_URL" -c "DROP SCHEMA $schema CASCADE"; rm -rf "$tmp"' EXIT
export PGOPTIONS="-c search_path=$schema"
for f in crates/secure-routes-postgres/src/migrations/*.sql; do
  psql -q -v ON_ERROR_STOP=1 "$DATABASE_URL" -f "$f"
done
psql -q -v ON_ERROR_STOP=1 "$DATABASE_URL" <<SQL
INSERT INTO audit_logs (id, action, subject, "timestamp", outcome, client_ip, method, route, path,
  status, reason, request_id, count, fingerprint)
SELECT (lpad(to_hex(i), 8, '0') || '-0000-7000-8000-' || lpad(to_hex(i), 12, '0'))::uuid,
  (ARRAY['unauthorized_access','rate_limit_exceeded','csrf_validation_failed','authz_fail','invalid_input'])[i % 5 + 1],
  'user-' || (i % 500), to_timestamp(1893456000 + i * 86400.0 / $ROWS), 'denied',
  '203.0.' || (i % 2000 / 256) || '.' || (i % 256), 'GET', '/api/a', '/api/a', 401, 'bench',
  'r' || i, 1 + i % 5, 'fp' || (i % 7)
FROM generate_series(0, $ROWS - 1) AS i;
ANALYZE audit_logs;
SQL
psql -q -v ON_ERROR_STOP=1 "$DATABASE_URL" <<'SQL'
\timing on
SELECT count(*), sum(count) FROM audit_logs;
SELECT count(*) FROM (SELECT (floor(extract(epoch FROM "timestamp") / 60::int8) * 60::int8)::int8 AS bucket,
  action, sum(count)::int8 FROM audit_logs GROUP BY bucket, action ORDER BY bucket, action COLLATE "C") t;
SELECT count(*) FROM (SELECT (floor(extract(epoch FROM "timestamp") / 60::int8) * 60::int8)::int8 AS bucket,
  action, sum(count)::int8 FROM audit_logs WHERE action = 'authz_fail' AND "timestamp" >= '2030-01-01T23:00:00Z'
  GROUP BY bucket, action ORDER BY bucket, action COLLATE "C") t;
SELECT client_ip, sum(count)::int8 AS n FROM audit_logs WHERE client_ip IS NOT NULL
  GROUP BY client_ip ORDER BY n DESC, client_ip COLLATE "C" LIMIT 10;
SELECT subject, sum(count)::int8 AS n FROM audit_logs WHERE subject IS NOT NULL
  GROUP BY subject ORDER BY n DESC, subject COLLATE "C" LIMIT 10;
SELECT count(*) FROM (SELECT id FROM audit_logs WHERE client_ip = '203.0.1.7'
  ORDER BY "timestamp" DESC, id DESC LIMIT 50) t;
SQL
