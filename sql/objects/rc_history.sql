-- A key's recorded changes for `resilient-circuit history`, oldest first (by time: state
-- changes and configuration changes take their versions from different sequences): when (database
-- clock), from, to, the version, who and why (see rc_announce). p_since_ms: only changes this
-- recent (NULL: all the log keeps). Runs with the caller's rights (the log shows its rows to
-- the roles that may read breakers).
CREATE OR REPLACE FUNCTION public.rc_history(p_ns text, p_key text, p_since_ms bigint)
RETURNS TABLE (o_at timestamptz, o_from text, o_to text, o_version bigint, o_actor jsonb,
               o_why jsonb)
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT at, from_state, state, version, actor, why
    FROM public.rc_changes
    WHERE namespace = p_ns AND resource_key = p_key AND NOT reset
      AND (p_since_ms IS NULL OR at >= clock_timestamp() - p_since_ms * interval '1 millisecond')
    ORDER BY at, version
$$;
REVOKE ALL ON FUNCTION public.rc_history(text, text, bigint) FROM PUBLIC;
