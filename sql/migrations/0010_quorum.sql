-- 0010: quorum trips, and a "why" that the transition functions can give the change log.
--
-- With TripPolicy::Quorum an instance whose own window trips stops its own calls and casts a
-- vote; the fleet opens when `quorum` distinct instances voted within `within`. One sick pod (its
-- own network, its own bad deploy) no longer opens the breaker for everyone. Votes live in
-- rc_votes, one per instance and key, and are counted only while younger than the period.
--
-- Why a change happened is recorded by rc_log_change (0009) at commit. The functions here tell it
-- more than the row can: rc_explain(key, detail) stores the detail in the transaction-local
-- setting `resilient_circuit.why`, as a JSON object by key, and rc_log_change merges the entry of
-- its key into the change's `why`.

CREATE TABLE IF NOT EXISTS public.rc_votes (
    namespace    varchar(255) NOT NULL,
    resource_key varchar(255) NOT NULL,
    -- The voter's instance id (host:pid:start, as in the change log's actor).
    instance     text         NOT NULL CHECK (instance <> ''),
    cast_at      timestamptz  NOT NULL,
    -- The voter's window when it tripped.
    failures     integer      NOT NULL CHECK (failures >= 0),
    calls        integer      NOT NULL CHECK (calls >= 0),
    PRIMARY KEY (namespace, resource_key, instance)
);
-- Only rc_vote (run as the owner) writes or reads it; a role that may read breakers reads the
-- votes through the change log of the trip they caused.
REVOKE ALL ON public.rc_votes FROM PUBLIC;

-- Adds `detail` to what the change log will say about `p_key` in this transaction. A value of
-- the setting that is not a JSON object (set by hand) is replaced, never an error: a write must
-- not fail for the sake of its explanation.
CREATE OR REPLACE FUNCTION public.rc_explain(p_key text, p_detail jsonb) RETURNS void
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    held text := pg_catalog.current_setting('resilient_circuit.why', true);
    why jsonb := '{}';
    said jsonb;
BEGIN
    IF held IS NOT NULL AND held <> '' THEN
        BEGIN
            why := held::jsonb;
        EXCEPTION WHEN others THEN
            why := '{}';
        END;
        IF pg_catalog.jsonb_typeof(why) IS DISTINCT FROM 'object' THEN
            why := '{}';
        END IF;
    END IF;
    said := why -> p_key;
    IF pg_catalog.jsonb_typeof(said) IS DISTINCT FROM 'object' THEN
        said := '{}';
    END IF;
    PERFORM pg_catalog.set_config('resilient_circuit.why',
        (why || pg_catalog.jsonb_build_object(p_key, said || p_detail))::text, true);
END
$$;

-- 0009's rc_log_change, now also merging what rc_explain said about the key. An empty window (a
-- trip decided by votes) and a failure count of 0 (an override, a round that reopened) are left
-- out rather than shown as if they were why.
CREATE OR REPLACE FUNCTION public.rc_log_change(
    p_ns text, p_key text, p_from text, p_state text, p_version bigint, p_open_until timestamptz,
    p_reset boolean)
RETURNS void
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    failures integer;
    window_log jsonb;
    held text := pg_catalog.current_setting('resilient_circuit.why', true);
    explained jsonb;
BEGIN
    IF p_state = 'OPEN' THEN
        SELECT failure_count, execution_log INTO failures, window_log
            FROM public.rc_circuit_breakers WHERE namespace = p_ns AND resource_key = p_key;
    END IF;
    IF held IS NOT NULL AND held <> '' THEN
        BEGIN
            explained := held::jsonb -> p_key;
        EXCEPTION WHEN others THEN
            explained := NULL; -- set by hand to something else: no explanation, still a log row
        END;
        IF pg_catalog.jsonb_typeof(explained) IS DISTINCT FROM 'object' THEN
            explained := NULL;
        END IF;
    END IF;
    INSERT INTO public.rc_changes
        (txid, version, namespace, resource_key, from_state, state, open_until, reset, actor, why)
    VALUES (pg_catalog.pg_current_xact_id()::text::bigint, p_version, p_ns, p_key, p_from,
            p_state, p_open_until, p_reset,
            pg_catalog.jsonb_strip_nulls(pg_catalog.jsonb_build_object(
                'application', NULLIF(pg_catalog.current_setting('application_name'), ''),
                'user', session_user::text,
                'client', pg_catalog.host(pg_catalog.inet_client_addr()),
                'backend_pid', pg_catalog.pg_backend_pid(),
                'instance', NULLIF(
                    pg_catalog.current_setting('resilient_circuit.instance', true), ''))),
            NULLIF(pg_catalog.jsonb_strip_nulls(pg_catalog.jsonb_build_object(
                'note', NULLIF(
                    pg_catalog.current_setting('resilient_circuit.note', true), ''),
                'failures', NULLIF(failures, 0),
                'window', NULLIF(window_log, '[]'::jsonb)))
                || coalesce(explained, '{}'::jsonb), '{}'::jsonb));
    IF p_version % 256 = 0 THEN
        DELETE FROM public.rc_changes
            WHERE at < pg_catalog.clock_timestamp()
                       - (SELECT retention FROM public.rc_change_log_settings);
    END IF;
END
$$;
REVOKE ALL ON FUNCTION public.rc_log_change(text, text, text, text, bigint, timestamptz, boolean)
    FROM PUBLIC;

-- Opens `p_key` for p_ms on the fleet's judgement (a quorum, a fleet rate: see 0012), with
-- p_failures as the row's failure count and no window of one instance, and tells the change log
-- why. Called by the judging functions, which run as the owner.
CREATE OR REPLACE FUNCTION public.rc_open_for_fleet(
    p_ns text, p_key text, p_failures bigint, p_ms bigint, p_why jsonb)
RETURNS void
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    PERFORM public.rc_explain(p_key, p_why);
    INSERT INTO public.rc_circuit_breakers AS b
        (resource_key, namespace, state, failure_count, open_until, execution_log)
    VALUES (p_key, p_ns, 'OPEN', LEAST(p_failures, 2147483647)::integer,
            pg_catalog.clock_timestamp() + p_ms * interval '1 millisecond', '[]')
    ON CONFLICT (resource_key, namespace) DO UPDATE
        SET state = 'OPEN', failure_count = EXCLUDED.failure_count,
            open_until = EXCLUDED.open_until, execution_log = EXCLUDED.execution_log;
END
$$;
REVOKE ALL ON FUNCTION public.rc_open_for_fleet(text, text, bigint, bigint, jsonb) FROM PUBLIC;

-- One instance's vote to open `p_key`: its window tripped with p_failures of p_calls. The vote
-- replaces the instance's earlier one; votes older than p_within_ms are dropped. When at least
-- p_quorum distinct instances have a live vote, the key opens for p_cooldown_ms (the votes are
-- spent: the next opening needs a new quorum) and the change log says who voted. A close spends
-- them too: votes cast before the row's last change do not count.
--
-- Not counted: a vote on a key already OPEN or HALF_OPEN (the fleet already stopped calling), and
-- a vote decided before a later change of the row (p_basis, as in rc_trip: an operator's close
-- made after the instance judged wins). The votes of a key are counted under a transaction-level
-- advisory lock on it, taken before anything else, so that two votes racing for a key without a
-- row still see each other: the third of three concurrent votes opens the key, exactly once.
--
-- Returns the row as afterwards, as the other transition functions do, and o_votes: the live
-- votes counted with this one (0 when it was not counted).
CREATE OR REPLACE FUNCTION public.rc_vote(
    p_ns text, p_key text, p_instance text, p_failures integer, p_calls integer,
    p_quorum integer, p_within_ms bigint, p_cooldown_ms bigint, p_basis bigint DEFAULT NULL)
RETURNS TABLE (o_state text, o_version bigint, o_remaining_ms bigint, o_lease_id bigint,
               o_retry_ms bigint, o_votes integer)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
    r public.rc_circuit_breakers%ROWTYPE;
    within bigint;
    ms bigint;
    live integer := 0;
    voters jsonb;
    spent_failures bigint;
BEGIN
    PERFORM public.rc_require_write();
    PERFORM public.rc_check_key(p_ns, p_key);
    ms := public.rc_check_ms(p_cooldown_ms, 'cooldown');
    within := public.rc_check_ms(p_within_ms, 'vote period');
    IF within < 1 THEN
        RAISE EXCEPTION 'vote period must be at least 1 ms, got %', within
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF p_quorum IS NULL OR p_quorum < 1 THEN
        RAISE EXCEPTION 'quorum must be at least 1 instance, got %', coalesce(p_quorum::text, 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF p_instance IS NULL OR p_instance = '' THEN
        RAISE EXCEPTION 'a vote needs the voting instance''s id'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF p_failures IS NULL OR p_failures < 0 OR p_calls IS NULL OR p_calls < p_failures THEN
        RAISE EXCEPTION 'a vote''s window must hold 0 <= failures <= calls, got % of %',
            coalesce(p_failures::text, 'NULL'), coalesce(p_calls::text, 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    PERFORM pg_advisory_xact_lock(hashtextextended('rc_votes|' || p_ns || '|' || p_key, 0));
    SELECT * INTO r FROM public.rc_circuit_breakers
        WHERE namespace = p_ns AND resource_key = p_key FOR UPDATE;
    IF FOUND AND (r.state IN ('OPEN', 'HALF_OPEN') OR (p_basis IS NOT NULL AND r.version > p_basis)) THEN
        RETURN QUERY SELECT v.*, 0 FROM public.rc_view(p_ns, p_key) v;
        RETURN;
    END IF;
    -- Expired votes go, and so do votes cast before the row's last change: the row is CLOSED
    -- here, so that change closed it (a round that closed, an operator), which ends the episode
    -- the votes were about.
    DELETE FROM public.rc_votes
        WHERE namespace = p_ns AND resource_key = p_key
          AND (cast_at <= clock_timestamp() - within * interval '1 millisecond'
               OR cast_at < r.updated_at);
    INSERT INTO public.rc_votes AS v (namespace, resource_key, instance, cast_at, failures, calls)
        VALUES (p_ns, p_key, p_instance, clock_timestamp(), p_failures, p_calls)
        ON CONFLICT (namespace, resource_key, instance) DO UPDATE
            SET cast_at = EXCLUDED.cast_at, failures = EXCLUDED.failures, calls = EXCLUDED.calls;
    SELECT count(*), sum(failures),
           jsonb_agg(jsonb_build_object('instance', instance, 'failures', failures,
                                        'calls', calls) ORDER BY cast_at)
        INTO live, spent_failures, voters
        FROM public.rc_votes WHERE namespace = p_ns AND resource_key = p_key;
    IF live >= p_quorum THEN
        PERFORM public.rc_open_for_fleet(p_ns, p_key, spent_failures, ms,
            jsonb_build_object('quorum', jsonb_build_object(
                'votes', live, 'needed', p_quorum, 'within_ms', within, 'voters', voters)));
        DELETE FROM public.rc_votes WHERE namespace = p_ns AND resource_key = p_key;
    END IF;
    RETURN QUERY SELECT v.*, live FROM public.rc_view(p_ns, p_key) v;
END
$$;
