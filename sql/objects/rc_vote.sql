-- One instance's vote to open `p_key` (TripPolicy::Quorum): its window tripped with p_failures
-- of p_calls. When at least the quorum of distinct voters have a live vote, the key opens for
-- the cooldown and the change log names the voters; the state change spends the votes
-- (rc_bump_version), as does any other change of the key's state: the next opening needs a
-- new quorum.
--
-- * p_voter is the voting instance's stable name (PostgresOptions::instance_name: the pod's,
--   kept across restarts), so a crash-looping pod is one voter, however often it restarts. A
--   voter's new vote replaces its old one. 1 to 255 characters.
-- * The quorum, its period and the cooldown are the key's live configuration's when it has a
--   quorum policy; the caller's (p_quorum, 1 to 10000; p_within_ms; p_cooldown_ms) otherwise.
--   A live configuration with another policy, or a mode that never trips, counts no vote.
-- * Not counted either: a vote on a key already OPEN or HALF_OPEN (the fleet already stopped
--   calling), and a vote decided before a later change of the row (p_basis, as in rc_trip).
-- * Counted under the key's judgement lock (rc_judge_lock), taken first, so that the third of
--   three concurrent votes on a key without a row opens it, exactly once.
--
-- Returns the row as afterwards, as the other transition functions do, and o_votes: the live
-- votes counted with this one (0 when it was not counted).
CREATE OR REPLACE FUNCTION public.rc_vote(
    p_ns text, p_key text, p_voter text, p_failures integer, p_calls integer,
    p_quorum integer, p_within_ms bigint, p_cooldown_ms bigint, p_basis bigint DEFAULT NULL)
RETURNS TABLE (o_state text, o_version bigint, o_remaining_ms bigint, o_lease_id bigint,
               o_retry_ms bigint, o_votes integer)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    r public.rc_circuit_breakers%ROWTYPE;
    cfg public.rc_breaker_config%ROWTYPE;
    who text;
    quorum integer := p_quorum;
    within bigint;
    ms bigint;
    live integer := 0;
    voters jsonb;
    spent_failures bigint;
BEGIN
    PERFORM public.rc_check_key(p_ns, p_key);
    who := public.rc_check_text(p_voter, 'a voter''s name', 255);
    ms := public.rc_check_ms(p_cooldown_ms, 'cooldown');
    within := public.rc_check_ms(p_within_ms, 'vote period');
    IF p_quorum IS NULL OR p_quorum < 1 OR p_quorum > 10000 THEN
        RAISE EXCEPTION 'quorum must be 1 to 10000 instances, got %', coalesce(p_quorum::text, 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF p_failures IS NULL OR p_failures < 0 OR p_calls IS NULL OR p_calls < p_failures THEN
        RAISE EXCEPTION 'a vote''s window must hold 0 <= failures <= calls, got % of %',
            coalesce(p_failures::text, 'NULL'), coalesce(p_calls::text, 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    PERFORM public.rc_judge_lock(p_ns, p_key);
    SELECT * INTO cfg FROM public.rc_breaker_config
        WHERE namespace = p_ns AND resource_key = p_key;
    IF FOUND THEN
        IF cfg.mode <> 'normal' OR cfg.trip_policy IN ('any_instance', 'fleet_rate') THEN
            RETURN QUERY SELECT v.*, 0 FROM public.rc_view(p_ns, p_key) v;
            RETURN;
        END IF;
        IF cfg.trip_policy = 'quorum' THEN
            quorum := cfg.quorum_instances;
            within := cfg.quorum_within_ms;
        END IF;
        ms := coalesce(cfg.cooldown_ms, ms);
    END IF;
    IF within < 1 THEN
        RAISE EXCEPTION 'vote period must be at least 1 ms, got %', within
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT * INTO r FROM public.rc_circuit_breakers
        WHERE namespace = p_ns AND resource_key = p_key FOR UPDATE;
    IF FOUND AND (r.state IN ('OPEN', 'HALF_OPEN') OR (p_basis IS NOT NULL AND r.version > p_basis)) THEN
        RETURN QUERY SELECT v.*, 0 FROM public.rc_view(p_ns, p_key) v;
        RETURN;
    END IF;
    DELETE FROM public.rc_votes
        WHERE namespace = p_ns AND resource_key = p_key AND expires_at <= clock_timestamp();
    INSERT INTO public.rc_votes AS v
        (namespace, resource_key, voter, role, cast_at, expires_at, failures, calls)
        VALUES (p_ns, p_key, who, session_user, clock_timestamp(),
                clock_timestamp() + within * interval '1 millisecond', p_failures, p_calls)
        ON CONFLICT (namespace, resource_key, voter) DO UPDATE
            SET role = EXCLUDED.role, cast_at = EXCLUDED.cast_at,
                expires_at = EXCLUDED.expires_at, failures = EXCLUDED.failures,
                calls = EXCLUDED.calls;
    SELECT count(*), sum(q.failures),
           jsonb_agg(jsonb_build_object('instance', q.voter, 'user', q.role,
                                        'failures', q.failures, 'calls', q.calls)
                     ORDER BY q.cast_at)
        INTO live, spent_failures, voters
        FROM public.rc_votes q WHERE q.namespace = p_ns AND q.resource_key = p_key;
    IF live >= quorum THEN
        PERFORM public.rc_open_for_fleet(p_ns, p_key, spent_failures, ms,
            jsonb_build_object('quorum', jsonb_build_object(
                'votes', live, 'needed', quorum, 'within_ms', within, 'voters', voters)));
    END IF;
    PERFORM public.rc_prune();
    RETURN QUERY SELECT v.*, live FROM public.rc_view(p_ns, p_key) v;
END
$$;
REVOKE ALL ON FUNCTION public.rc_vote(text, text, text, integer, integer, integer, bigint, bigint,
                                      bigint) FROM PUBLIC;
