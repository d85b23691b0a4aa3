-- Largest cooldown or lease the functions accept, in milliseconds (ten years of 365 days); the
-- crate refuses longer ones at build time with the same bound.
CREATE OR REPLACE FUNCTION public.rc_max_ms() RETURNS bigint
LANGUAGE sql IMMUTABLE AS $$ SELECT 315360000000::bigint $$;
