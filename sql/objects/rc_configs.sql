-- The live configurations of a namespace, all (p_keys NULL) or those of some keys: what an
-- instance applies at every load and when a notification says a key's changed, and what
-- `resilient-circuit config` shows. Runs with the caller's rights (the table shows its rows to
-- the roles that may read breakers).
CREATE OR REPLACE FUNCTION public.rc_configs(p_ns text, p_keys text[])
RETURNS TABLE (o_key text, o_mode text, o_cooldown_ms bigint, o_failure_num integer,
               o_failure_den integer, o_success_num integer, o_success_den integer,
               o_trip_policy text, o_quorum_instances integer, o_quorum_within_ms bigint,
               o_rate_num integer, o_rate_den integer, o_rate_min_calls integer,
               o_rate_period_ms bigint, o_version bigint, o_updated_at timestamptz,
               o_updated_by text, o_note text)
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT resource_key, mode, cooldown_ms, failure_num, failure_den, success_num, success_den,
           trip_policy, quorum_instances, quorum_within_ms, rate_num, rate_den, rate_min_calls,
           rate_period_ms, version, updated_at, updated_by, note
    FROM public.rc_breaker_config
    WHERE namespace = p_ns AND (p_keys IS NULL OR resource_key = ANY (p_keys))
    ORDER BY resource_key
$$;
REVOKE ALL ON FUNCTION public.rc_configs(text, text[]) FROM PUBLIC;
