-- An operator's override: OPEN for p_cooldown_ms, or CLOSED with an empty window; ends any
-- half-open round. Even a row already in that state gets a new version, so that every instance
-- hears the decree and ends whatever it held against the row (a vote, a trip of its own).
-- Refused for a key whose live configuration forces it open (a close, or an OPEN that would end
-- the hold): the configuration would say one thing and the fleet do another; change the mode
-- instead. The row is locked before the mode is read, so an override racing `config --mode
-- forced-open` is refused or comes first, never after it (rc_bump_version refuses what would
-- still slip through).
CREATE OR REPLACE FUNCTION public.rc_force(p_ns text, p_key text, p_state text, p_cooldown_ms bigint)
RETURNS TABLE (o_state text, o_version bigint, o_remaining_ms bigint, o_lease_id bigint,
               o_retry_ms bigint)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    until timestamptz;
BEGIN
    PERFORM public.rc_check_key(p_ns, p_key);
    IF p_state IS NULL OR p_state NOT IN ('OPEN', 'CLOSED') THEN
        RAISE EXCEPTION 'rc_force: state must be OPEN or CLOSED, not %', coalesce(p_state, 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF p_state = 'OPEN' THEN
        until := clock_timestamp()
            + public.rc_check_ms(p_cooldown_ms, 'cooldown') * interval '1 millisecond';
    END IF;
    PERFORM 1 FROM public.rc_circuit_breakers
        WHERE namespace = p_ns AND resource_key = p_key FOR UPDATE;
    IF public.rc_forced_open(p_ns, p_key) THEN
        PERFORM public.rc_refuse_forced(p_key);
    END IF;
    PERFORM set_config('resilient_circuit.decree', 'on', true);
    INSERT INTO public.rc_circuit_breakers AS b
        (resource_key, namespace, state, failure_count, open_until, execution_log)
    VALUES (p_key, p_ns, p_state, 0, until, '[]')
    ON CONFLICT (resource_key, namespace) DO UPDATE
        SET state = EXCLUDED.state, failure_count = 0, open_until = EXCLUDED.open_until,
            execution_log = '[]';
    PERFORM set_config('resilient_circuit.decree', '', true);
    -- Forcing the state a row already has changes no version: still end its round's leases.
    DELETE FROM public.rc_probe_leases WHERE namespace = p_ns AND resource_key = p_key;
    RETURN QUERY SELECT * FROM public.rc_view(p_ns, p_key);
END
$$;
REVOKE ALL ON FUNCTION public.rc_force(text, text, text, bigint) FROM PUBLIC;
