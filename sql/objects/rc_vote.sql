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
