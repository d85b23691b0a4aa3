-- CLOSED -> OPEN, decided by one instance's own window (rc_trip_many's loop body). Left alone:
-- * a key already OPEN or HALF_OPEN (someone tripped first, or a round is on);
-- * a row changed after the decision: p_basis is the newest version the instance had seen when
--   it decided, and a row with a newer version (an operator's close, say) is a later decision
--   that wins (NULL p_basis: no such check);
-- * a key whose live configuration says no instance opens it alone: a mode that never trips
--   (disabled, metrics_only), or a trip policy that is the fleet's (quorum, fleet_rate). The
--   instance follows the row it gets back.
-- p_log is the window that tripped, oldest first (the Python package's execution_log): a JSON
-- array of at most 8192 outcomes, else left out.
CREATE OR REPLACE FUNCTION public.rc_trip(
    p_ns text, p_key text, p_cooldown_ms bigint, p_failures integer, p_log jsonb,
    p_basis bigint DEFAULT NULL)
RETURNS TABLE (o_state text, o_version bigint, o_remaining_ms bigint, o_lease_id bigint,
               o_retry_ms bigint)
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    ms bigint := public.rc_check_ms(p_cooldown_ms, 'cooldown');
    st text;
    ver bigint;
    until timestamptz;
    window_log jsonb := CASE WHEN jsonb_typeof(p_log) = 'array'
                              AND jsonb_array_length(p_log) <= 8192 THEN p_log END;
BEGIN
    PERFORM public.rc_check_key(p_ns, p_key);
    IF EXISTS (SELECT 1 FROM public.rc_breaker_config
               WHERE namespace = p_ns AND resource_key = p_key
                 AND (mode IN ('disabled', 'metrics_only')
                      OR trip_policy IN ('quorum', 'fleet_rate'))) THEN
        RETURN QUERY SELECT * FROM public.rc_view(p_ns, p_key);
        RETURN;
    END IF;
    -- A key with a row (most trips) is updated in place: an upsert would first run the
    -- table's BEFORE INSERT trigger for the row it might insert (a row lock, a version, the
    -- key's votes and reports deleted) and then the UPDATE's, twice the work on the path
    -- every trip's propagation waits for.
    UPDATE public.rc_circuit_breakers AS b
        SET state = 'OPEN', failure_count = GREATEST(coalesce(p_failures, 0), 0),
            open_until = clock_timestamp() + ms * interval '1 millisecond',
            execution_log = window_log
        WHERE b.namespace = p_ns AND b.resource_key = p_key
          AND b.state NOT IN ('OPEN', 'HALF_OPEN')
          AND (p_basis IS NULL OR b.version <= p_basis)
        RETURNING b.state, b.version, b.open_until INTO st, ver, until;
    -- Tripped: the row as the update left it (its triggers' version included) is the answer.
    IF FOUND THEN
        RETURN QUERY SELECT st, ver, coalesce(public.rc_remaining_ms(until), 0), NULL::bigint,
                            NULL::bigint;
        RETURN;
    END IF;
    -- No row to update: none (insert it), one the guard leaves alone (as the upsert's guard
    -- does), or one deleted or inserted meanwhile (the upsert decides, under the key's locks).
    IF NOT EXISTS (SELECT 1 FROM public.rc_circuit_breakers
                   WHERE namespace = p_ns AND resource_key = p_key) THEN
        INSERT INTO public.rc_circuit_breakers AS b
            (resource_key, namespace, state, failure_count, open_until, execution_log)
        VALUES (p_key, p_ns, 'OPEN', GREATEST(coalesce(p_failures, 0), 0),
                clock_timestamp() + ms * interval '1 millisecond', window_log)
        ON CONFLICT (resource_key, namespace) DO UPDATE
            SET state = 'OPEN', failure_count = EXCLUDED.failure_count,
                open_until = EXCLUDED.open_until, execution_log = EXCLUDED.execution_log
            WHERE b.state NOT IN ('OPEN', 'HALF_OPEN')
              AND (p_basis IS NULL OR b.version <= p_basis);
    END IF;
    RETURN QUERY SELECT * FROM public.rc_view(p_ns, p_key);
END
$$;
REVOKE ALL ON FUNCTION public.rc_trip(text, text, bigint, integer, jsonb, bigint) FROM PUBLIC;
