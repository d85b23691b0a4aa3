-- Some rows of a namespace, by key, as rc_snapshot has them: how an instance confirms
-- notifications it will not take on trust (unsigned, stale, or closing a key). Keys without a
-- row are absent from the answer (they are CLOSED). Runs with the caller's rights.
--
-- A join with the asked keys, not `resource_key = ANY (p_keys)`: right after a burst of new
-- rows, before autovacuum has analyzed the table, the planner takes the namespace for a few
-- rows, scans it and tests every row against every key (10,000 rows and 256 keys took
-- 0.4 to 1.3 s); a join is an index probe per key, or one hash join, whatever the statistics.
CREATE OR REPLACE FUNCTION public.rc_rows(p_ns text, p_keys text[])
RETURNS TABLE (o_key text, o_state text, o_version bigint, o_remaining_ms bigint)
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT b.resource_key, b.state, b.version, public.rc_remaining_ms(b.open_until)
    FROM (SELECT DISTINCT k FROM pg_catalog.unnest(p_keys) AS u (k)) AS asked
    JOIN public.rc_circuit_breakers b
      ON b.namespace = p_ns AND b.resource_key = asked.k
$$;
REVOKE ALL ON FUNCTION public.rc_rows(text, text[]) FROM PUBLIC;
