-- CLOSED -> OPEN, decided by an instance's own window. Left alone: a key already OPEN or
-- HALF_OPEN (someone tripped first, or a round is on), and a row changed after the decision:
-- p_basis is the newest version the instance had seen when it decided, and a row with a newer
-- version (an operator's close, say) is a later decision that wins. NULL p_basis: no such check.
CREATE OR REPLACE FUNCTION public.rc_trip(
    p_ns text, p_key text, p_cooldown_ms bigint, p_failures integer, p_log jsonb,
    p_basis bigint DEFAULT NULL)
RETURNS TABLE (o_state text, o_version bigint, o_remaining_ms bigint, o_lease_id bigint,
               o_retry_ms bigint)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
    ms bigint;
BEGIN
    PERFORM public.rc_require_write();
    PERFORM public.rc_check_key(p_ns, p_key);
    ms := public.rc_check_ms(p_cooldown_ms, 'cooldown');
    INSERT INTO public.rc_circuit_breakers AS b
        (resource_key, namespace, state, failure_count, open_until, execution_log)
    VALUES (p_key, p_ns, 'OPEN', coalesce(p_failures, 0),
            clock_timestamp() + ms * interval '1 millisecond', p_log)
    ON CONFLICT (resource_key, namespace) DO UPDATE
        SET state = 'OPEN', failure_count = EXCLUDED.failure_count,
            open_until = EXCLUDED.open_until, execution_log = EXCLUDED.execution_log
        WHERE b.state NOT IN ('OPEN', 'HALF_OPEN')
          AND (p_basis IS NULL OR b.version <= p_basis);
    RETURN QUERY SELECT * FROM public.rc_view(p_ns, p_key);
END
$$;
