-- Asks for one probe permit of a fleet-wide half-open round. OPEN with its cooldown over
-- (database clock) becomes HALF_OPEN and a new round starts; a round begun by a plain write
-- (the Python package, an operator) is sized by the first to ask. Results in plus live leases
-- of the round never exceed its size, whatever later callers ask for.
--
-- The round's size: the key's live configuration's success limit when it has one (k of n: n
-- probes, close on k), else the caller's p_probes and p_close_at, which are bounded as the
-- builder bounds them (1 to 8192 probes, 1 to p_probes to close).
-- p_holder (who holds the lease, for the operator's eye) is 1 to 255 characters; NULL: the
-- session's login.
CREATE OR REPLACE FUNCTION public.rc_acquire_probe(
    p_ns text, p_key text, p_holder text, p_lease_ms bigint, p_probes integer,
    p_close_at integer DEFAULT NULL)
RETURNS TABLE (o_state text, o_version bigint, o_remaining_ms bigint, o_lease_id bigint,
               o_retry_ms bigint)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    r public.rc_circuit_breakers%ROWTYPE;
    live integer;
    granted bigint;
    retry bigint;
    ms bigint;
    who text;
    probes integer := p_probes;
    close_at integer;
BEGIN
    PERFORM public.rc_check_key(p_ns, p_key);
    ms := public.rc_check_ms(p_lease_ms, 'lease time');
    who := public.rc_check_text(coalesce(p_holder, session_user::text), 'a probe holder', 255);
    SELECT c.success_den, c.success_num INTO probes, close_at FROM public.rc_breaker_config c
        WHERE c.namespace = p_ns AND c.resource_key = p_key AND c.success_num IS NOT NULL;
    IF NOT FOUND THEN
        IF p_probes IS NULL OR p_probes < 1 OR p_probes > 8192 THEN
            RAISE EXCEPTION 'probe count must be 1 to 8192, got %', coalesce(p_probes::text, 'NULL')
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
        probes := p_probes;
        close_at := LEAST(GREATEST(coalesce(p_close_at, p_probes), 1), p_probes);
    END IF;
    SELECT * INTO r FROM public.rc_circuit_breakers
        WHERE namespace = p_ns AND resource_key = p_key FOR UPDATE;
    IF NOT FOUND THEN
        RETURN QUERY SELECT * FROM public.rc_view(p_ns, p_key);
        RETURN;
    END IF;
    IF r.state = 'OPEN' AND (r.open_until IS NULL OR r.open_until <= clock_timestamp()) THEN
        -- The round starts as the Python package starts one: failure_count 0, open_until NULL
        -- and an empty execution_log, so its processes probe from an empty window too.
        UPDATE public.rc_circuit_breakers
            SET state = 'HALF_OPEN', round_probes = probes, round_close_at = close_at,
                failure_count = 0, open_until = NULL, execution_log = '[]'
            WHERE namespace = p_ns AND resource_key = p_key
            RETURNING * INTO r;
    ELSIF r.state = 'HALF_OPEN' AND r.round_probes IS NULL THEN
        UPDATE public.rc_circuit_breakers
            SET round_probes = probes, round_close_at = close_at,
                round_id = coalesce(round_id, version)
            WHERE namespace = p_ns AND resource_key = p_key
            RETURNING * INTO r;
    END IF;
    IF r.state = 'HALF_OPEN' THEN
        DELETE FROM public.rc_probe_leases
            WHERE namespace = p_ns AND resource_key = p_key
              AND (expires_at <= clock_timestamp() OR round_id IS DISTINCT FROM r.round_id);
        SELECT count(*) INTO live FROM public.rc_probe_leases
            WHERE namespace = p_ns AND resource_key = p_key;
        IF live + r.probe_successes + r.probe_failures < r.round_probes THEN
            INSERT INTO public.rc_probe_leases (namespace, resource_key, holder, expires_at, round_id)
                VALUES (p_ns, p_key, who, clock_timestamp() + ms * interval '1 millisecond',
                        r.round_id)
                RETURNING lease_id INTO granted;
        ELSE
            SELECT GREATEST(1, ceil(extract(epoch FROM (min(expires_at) - clock_timestamp())) * 1000))::bigint
                INTO retry
                FROM public.rc_probe_leases WHERE namespace = p_ns AND resource_key = p_key;
        END IF;
    END IF;
    RETURN QUERY SELECT * FROM public.rc_view(p_ns, p_key, granted, retry);
END
$$;
REVOKE ALL ON FUNCTION public.rc_acquire_probe(text, text, text, bigint, integer, integer)
    FROM PUBLIC;
