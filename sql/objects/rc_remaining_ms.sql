-- Milliseconds of cooldown left by the database clock, 0 when over or unknown; the infinities a
-- hand-written row may hold are guarded (their interval arithmetic raises an error).
--
-- Inlined into the queries that call it (a 10,000-row snapshot is ten times slower as a
-- function call per row), which needs VOLATILE (for clock_timestamp()) and no SET clause. So
-- instead of a pinned search_path every operator, function and type is schema-qualified: the
-- body resolves nothing through the caller's path.
CREATE OR REPLACE FUNCTION public.rc_remaining_ms(open_until timestamptz) RETURNS bigint
LANGUAGE sql VOLATILE AS $$
    SELECT CASE
        WHEN open_until IS NULL
          OR open_until OPERATOR(pg_catalog.<=) '-infinity'::pg_catalog.timestamptz
            THEN 0::pg_catalog.int8
        WHEN open_until OPERATOR(pg_catalog.>=) 'infinity'::pg_catalog.timestamptz
            THEN 9007199254740991::pg_catalog.int8
        ELSE LEAST(9007199254740991::pg_catalog.float8, GREATEST(0::pg_catalog.float8,
                 pg_catalog.ceil(pg_catalog.date_part('epoch',
                     open_until OPERATOR(pg_catalog.-) pg_catalog.clock_timestamp())
                     OPERATOR(pg_catalog.*) 1000::pg_catalog.float8)))::pg_catalog.int8
    END
$$;
REVOKE ALL ON FUNCTION public.rc_remaining_ms(timestamptz) FROM PUBLIC;
