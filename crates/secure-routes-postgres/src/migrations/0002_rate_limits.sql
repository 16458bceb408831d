-- secure-routes migration 2: rate-limit state, bounded (one row per key and algorithm) and
-- self-cleaning. The original table stored a row per request; this one stores, per key,
-- only what the algorithm needs (see the crate docs and DESIGN.md "Postgres store settings").
--
-- All times are nanoseconds since the Unix epoch (bigint: good until 2262), the unit the
-- core's pure algorithms use, so the decisions here are exactly theirs.
--
-- UNLOGGED: no WAL for the hottest table (every check is a write). The price: after a crash
-- (or a failover to a standby, which never sees unlogged data) the table is empty, so every
-- client gets a fresh quota once. For state that lives at most one window, that is accepted;
-- `ALTER TABLE rate_limits SET LOGGED` reverts it.
--
-- fillfactor 50: room on each page for the new version of a row, so updates stay HOT (no
-- index write; the only index is the primary key, whose columns never change).
-- autovacuum: dead versions pile up at the rate of checks, so vacuum this small table often
-- and without throttling.
CREATE UNLOGGED TABLE rate_limits (
    key         bytea    NOT NULL,            -- 16-byte keyed hash (never a raw IP or user id)
    algorithm   smallint NOT NULL,            -- 0 = sliding window, 1 = GCRA
    stamps      bigint[],                     -- sliding window: admission times, oldest first (<= limit)
    seen        bigint   NOT NULL DEFAULT 0,  -- sliding window: the log's own time (never goes back)
    tat         bigint,                       -- GCRA: theoretical arrival time
    expires_at  bigint   NOT NULL,            -- from then on the row equals a fresh key: sweepable
    PRIMARY KEY (key, algorithm)
) WITH (
    fillfactor = 50,
    autovacuum_vacuum_scale_factor = 0.01,
    autovacuum_vacuum_threshold = 1000,
    autovacuum_vacuum_cost_delay = 0,
    autovacuum_analyze_scale_factor = 0.05
);
-- No index on expires_at, deliberately: it changes on every admission, so indexing it would
-- make every update non-HOT (a new index entry per check). The sweeper scans the table once
-- per interval instead; the table holds one row per active key, so that scan is small.

-- The exact sliding window (core: secure_routes::rate_limit::sliding_window::acquire), as one
-- atomic call: the row lock serialises concurrent checks on one key.
CREATE FUNCTION secure_routes_sliding_window(
    p_key bytea, p_now bigint, p_window bigint, p_limit bigint, p_cost bigint,
    OUT allowed boolean, OUT remaining bigint, OUT reset_ns bigint, OUT retry_ns bigint)
LANGUAGE plpgsql AS $$
DECLARE
    v_found   boolean;
    v_stamps  bigint[];
    v_seen    bigint;
    v_reading bigint;
    v_now     bigint;
    v_first   bigint;
    v_held    bigint;
    v_must    bigint;
    v_expires bigint;
    v_old_len bigint;
    v_old_seen bigint;
BEGIN
    LOOP
        SELECT r.stamps, r.seen INTO v_stamps, v_seen
          FROM rate_limits r WHERE r.key = p_key AND r.algorithm = 0 FOR UPDATE;
        v_found := FOUND;
        IF NOT v_found THEN
            v_stamps := '{}';
            v_seen := 0;
        END IF;
        v_stamps := coalesce(v_stamps, '{}');
        v_old_len := cardinality(v_stamps);
        v_old_seen := v_seen;
        -- Time is read after the row lock is held, so it is as fresh as possible.
        v_reading := coalesce(p_now,
            (extract(epoch FROM clock_timestamp()) * 1000000)::bigint * 1000);
        -- The log's time never runs backwards (see the core module docs).
        v_now := greatest(v_reading, v_seen);
        IF v_old_len > 0 THEN
            v_seen := v_now;
        END IF;
        -- Prune stamps that have left the window: stamp + window <= now. The log is sorted,
        -- so walk from the oldest (usually zero or a few steps: a plain loop is cheaper here
        -- than a set-returning subquery).
        v_first := 1;
        WHILE v_first <= v_old_len AND v_stamps[v_first] <= v_now - p_window LOOP
            v_first := v_first + 1;
        END LOOP;
        IF v_first > v_old_len THEN
            v_stamps := '{}';
        ELSIF v_first > 1 THEN
            v_stamps := v_stamps[v_first:];
        END IF;
        allowed := p_cost <= p_limit AND cardinality(v_stamps) + p_cost <= p_limit;
        IF allowed AND p_cost > 0 THEN
            v_stamps := v_stamps || array_fill(v_now, ARRAY[p_cost::int]);
            v_seen := v_now;
        END IF;
        v_held := cardinality(v_stamps);
        remaining := greatest(p_limit - v_held, 0);
        IF v_held > 0 THEN
            v_expires := v_stamps[v_held] + p_window;
        ELSE
            v_expires := 0;
        END IF;
        reset_ns := greatest(v_expires - v_reading, 0);
        retry_ns := NULL;
        IF NOT allowed THEN
            IF p_cost > p_limit THEN
                retry_ns := p_window;
            ELSE
                -- `cost` fits once the oldest `held + cost - limit` stamps have expired.
                v_must := greatest(v_held + p_cost - p_limit, 1);
                IF v_stamps[v_must] IS NULL THEN
                    retry_ns := p_window;
                ELSE
                    retry_ns := greatest(v_stamps[v_must] + p_window - v_reading, 0);
                END IF;
            END IF;
        END IF;

        IF v_found THEN
            IF cardinality(v_stamps) <> v_old_len OR v_seen <> v_old_seen THEN
                UPDATE rate_limits SET stamps = v_stamps, seen = v_seen, expires_at = v_expires
                 WHERE key = p_key AND algorithm = 0;
            END IF;
            RETURN;
        END IF;
        -- A fresh key that recorded nothing (a refusal, a zero cost) stores nothing.
        IF v_held = 0 THEN
            RETURN;
        END IF;
        INSERT INTO rate_limits (key, algorithm, stamps, seen, expires_at)
        VALUES (p_key, 0, v_stamps, v_seen, v_expires)
        ON CONFLICT (key, algorithm) DO NOTHING;
        IF FOUND THEN
            RETURN;
        END IF;
        -- Another check inserted the key first: decide again on its row.
    END LOOP;
END
$$;

-- GCRA (core: secure_routes::rate_limit::gcra::acquire), as one atomic call.
CREATE FUNCTION secure_routes_gcra(
    p_key bytea, p_now bigint, p_window bigint, p_limit bigint, p_cost bigint,
    OUT allowed boolean, OUT remaining bigint, OUT reset_ns bigint, OUT retry_ns bigint)
LANGUAGE plpgsql AS $$
DECLARE
    v_found    boolean;
    v_tat      bigint;
    v_old_tat  bigint;
    v_now      bigint;
    v_t        bigint;
    v_capacity bigint;
    v_base     bigint;
    v_debt     bigint;
BEGIN
    -- Emission interval T = ceil(W / N), at least 1 ns; capacity N·T.
    v_t := greatest((p_window + greatest(p_limit, 1) - 1) / greatest(p_limit, 1), 1);
    v_capacity := v_t * p_limit;
    LOOP
        SELECT r.tat INTO v_tat
          FROM rate_limits r WHERE r.key = p_key AND r.algorithm = 1 FOR UPDATE;
        v_found := FOUND;
        v_tat := coalesce(v_tat, 0);
        v_old_tat := v_tat;
        v_now := coalesce(p_now,
            (extract(epoch FROM clock_timestamp()) * 1000000)::bigint * 1000);
        v_base := greatest(v_tat, v_now);
        -- IF, not AND: SQL does not promise short-circuit, and T * cost overflows for a
        -- cost far above the limit.
        IF p_cost > p_limit THEN
            allowed := false;
        ELSE
            allowed := v_base + v_t * p_cost <= v_now + v_capacity;
        END IF;
        IF allowed AND p_cost > 0 THEN
            v_tat := v_base + v_t * p_cost;
        END IF;
        v_debt := greatest(v_tat - v_now, 0);
        remaining := least(greatest(v_capacity - v_debt, 0) / v_t, p_limit);
        reset_ns := v_debt;
        retry_ns := NULL;
        IF NOT allowed THEN
            IF p_cost > p_limit THEN
                retry_ns := p_window;
            ELSE
                retry_ns := greatest(v_tat + v_t * p_cost - v_capacity - v_now, 0);
            END IF;
        END IF;

        IF v_found THEN
            IF v_tat <> v_old_tat THEN
                UPDATE rate_limits SET tat = v_tat, expires_at = v_tat
                 WHERE key = p_key AND algorithm = 1;
            END IF;
            RETURN;
        END IF;
        IF v_tat <= v_now THEN
            RETURN;
        END IF;
        INSERT INTO rate_limits (key, algorithm, tat, expires_at)
        VALUES (p_key, 1, v_tat, v_tat)
        ON CONFLICT (key, algorithm) DO NOTHING;
        IF FOUND THEN
            RETURN;
        END IF;
    END LOOP;
END
$$;
