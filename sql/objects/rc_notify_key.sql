-- The notification key, for a session allowed to write the table.
CREATE OR REPLACE FUNCTION public.rc_notify_key() RETURNS bytea
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, public AS $$
BEGIN
    PERFORM public.rc_require_write();
    RETURN (SELECT key FROM public.rc_notify_key);
END
$$;
