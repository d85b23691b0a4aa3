-- Opens `p_key` for p_ms on the fleet's judgement (a quorum, a fleet rate), with p_failures as
-- the row's failure count and no one instance's window, and tells the change log why. Called by
-- the judging functions, which run as the owner and hold the key's judgement lock.
CREATE OR REPLACE FUNCTION public.rc_open_for_fleet(
    p_ns text, p_key text, p_failures bigint, p_ms bigint, p_why jsonb)
RETURNS void
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM public.rc_explain(p_key, p_why);
    INSERT INTO public.rc_circuit_breakers AS b
        (resource_key, namespace, state, failure_count, open_until, execution_log)
    VALUES (p_key, p_ns, 'OPEN', LEAST(p_failures, 2147483647)::integer,
            clock_timestamp() + p_ms * interval '1 millisecond', '[]')
    ON CONFLICT (resource_key, namespace) DO UPDATE
        SET state = 'OPEN', failure_count = EXCLUDED.failure_count,
            open_until = EXCLUDED.open_until, execution_log = EXCLUDED.execution_log;
END
$$;
REVOKE ALL ON FUNCTION public.rc_open_for_fleet(text, text, bigint, bigint, jsonb) FROM PUBLIC;
