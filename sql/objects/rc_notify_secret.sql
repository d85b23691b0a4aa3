-- The notification key and channel, for the roles granted it (instances): they LISTEN on the
-- channel and verify each payload's MAC with the key. Neither is readable otherwise, so a role
-- without this grant hears nothing and cannot forge.
CREATE OR REPLACE FUNCTION public.rc_notify_secret()
RETURNS TABLE (o_key bytea, o_channel text)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT key, channel FROM public.rc_notify_key
$$;
REVOKE ALL ON FUNCTION public.rc_notify_secret() FROM PUBLIC;
