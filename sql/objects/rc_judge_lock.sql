-- Locks `p_key`'s judgement (a vote, a rate report) until the transaction ends: its row of
-- rc_judgements, made if needed. The breaker row cannot serve, since a key without one must be
-- locked too, and an advisory lock could be taken by any session that can compute its id.
-- PL/pgSQL so that its plan is kept for the session (see rc_view.sql).
CREATE OR REPLACE FUNCTION public.rc_judge_lock(p_ns text, p_key text) RETURNS void
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    INSERT INTO public.rc_judgements AS j (namespace, resource_key, touched_at)
    VALUES (p_ns, p_key, clock_timestamp())
    ON CONFLICT (namespace, resource_key) DO UPDATE SET touched_at = EXCLUDED.touched_at;
END
$$;
REVOKE ALL ON FUNCTION public.rc_judge_lock(text, text) FROM PUBLIC;
