-- secure-routes migration 5: the request fingerprint, and an index for the dashboard.
--
-- `fingerprint` is the JA4H-style HTTP fingerprint of the request (NULL for events with no
-- request, such as a lifted ban, and for rows written before this migration).
--
-- The dashboard filters the trail by client address and ranks addresses (top offenders);
-- (client_ip, timestamp) serves "this address, newest first / in this time range" like the
-- action and subject indexes do. No index on fingerprint: one fingerprint is shared by every
-- client running the same software, so it selects too little to repay an index update on
-- every audit insert; the dashboard combines it with a time range, which has its index.
ALTER TABLE audit_logs ADD COLUMN fingerprint text;
CREATE INDEX audit_logs_client_ip_timestamp_idx ON audit_logs (client_ip, "timestamp");
