-- The changes of namespace p_ns (and resets) that were not visible to the snapshot p_after, with
-- the snapshot of this poll in every row (one row with NULL change columns when there is none):
-- how an instance follows the table without LISTEN (`poll.rs`). o_kind says what changed: a
-- row, a reset (reload everything), a live configuration (read it again), a fleet-rate
-- judgement (report the key's rate for o_remaining_ms). p_after NULL: no changes, only
-- the snapshot (a follower takes it before its first full load). One statement with no session
-- state: it works through pgbouncer in transaction mode and on a hot standby.
--
-- STABLE, so the log is read in the very snapshot it returns. PL/pgSQL, so that its query is
-- planned once per session (followers send it as an unnamed statement, which would have an
-- inlined SQL function planned on every poll). Polls are what a large polling fleet sends all
-- day, so it runs with the caller's rights and no SET clause (measured with pgbench -M extended
-- on PostgreSQL 15, 2 cores, loaded: 1.3-1.4 ms a call; SECURITY DEFINER with a pinned
-- search_path 1.9 ms): every name in it is schema-qualified instead, operators included, so it
-- resolves nothing through the caller's search_path.
CREATE OR REPLACE FUNCTION public.rc_changes_since(p_ns text, p_after text)
RETURNS TABLE (o_snapshot text, o_key text, o_state text, o_version bigint,
               o_remaining_ms bigint, o_reset boolean, o_at_us bigint, o_kind text)
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN QUERY
    WITH s AS (SELECT pg_catalog.pg_current_snapshot()::pg_catalog.text AS now_snap,
                      p_after::pg_catalog.pg_snapshot AS prev)
    SELECT s.now_snap, c.resource_key::pg_catalog.text, c.state::pg_catalog.text, c.version,
           public.rc_remaining_ms(c.open_until), c.reset,
           pg_catalog.floor(pg_catalog.date_part('epoch', c.at)
                            OPERATOR(pg_catalog.*) 1000000::pg_catalog.float8)::pg_catalog.int8,
           c.kind
    FROM s LEFT JOIN public.rc_changes c
      ON s.prev IS NOT NULL
     AND (c.txid OPERATOR(pg_catalog.>=)
              pg_catalog.pg_snapshot_xmax(s.prev)::pg_catalog.text::pg_catalog.int8
          OR c.txid OPERATOR(pg_catalog.=) ANY (ARRAY(
              SELECT x::pg_catalog.text::pg_catalog.int8
              FROM pg_catalog.pg_snapshot_xip(s.prev) AS x)))
     AND (c.namespace::pg_catalog.text OPERATOR(pg_catalog.=) p_ns OR c.reset)
    ORDER BY c.version;
END
$$;
REVOKE ALL ON FUNCTION public.rc_changes_since(text, text) FROM PUBLIC;
