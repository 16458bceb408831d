-- secure-routes migration 3: how many identical refusals a row stands for.
--
-- The audit writer folds a flood of identical refusals (same action, outcome, status, method,
-- route, reason, client and subject) within a window into one more row whose `count` is the
-- number folded, so sum(count) over rows is the number of decisions. Rows written before this
-- migration stand for one each. bigint, not integer: a count is never clamped, so sums stay
-- exact whatever the flood.
ALTER TABLE audit_logs ADD COLUMN count bigint NOT NULL DEFAULT 1;
