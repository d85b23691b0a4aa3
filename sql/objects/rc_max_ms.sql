-- The longest cooldown, lease or override the functions accept, in milliseconds (ten years of
-- 365 days); the crate refuses longer ones when a breaker is built (`MAX_DURATION`).
CREATE OR REPLACE FUNCTION public.rc_max_ms() RETURNS bigint
LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN 315360000000::bigint;
END
$$;
REVOKE ALL ON FUNCTION public.rc_max_ms() FROM PUBLIC;
