-- 0004: rc_remaining_ms as VOLATILE. It calls clock_timestamp(), which is volatile; declared
-- STABLE it could not be inlined and ran as a separate function call per row, which made
-- loading a 10,000-row snapshot about ten times slower (and every NOTIFY a little slower).
CREATE OR REPLACE FUNCTION public.rc_remaining_ms(open_until timestamptz) RETURNS bigint
LANGUAGE sql VOLATILE AS $$
    SELECT CASE
        WHEN open_until IS NULL OR open_until = '-infinity'::timestamptz THEN 0
        WHEN open_until = 'infinity'::timestamptz THEN 9007199254740991
        ELSE LEAST(9007199254740991, GREATEST(0,
            ceil(extract(epoch FROM (open_until - clock_timestamp())) * 1000)))::bigint
    END
$$;
