-- For instances of the crate's previous release during an upgrade: they ask for the key here,
-- and on "insufficient privilege" fall back to confirming every notification from the table.
-- They hear none on the old channel any more, so they follow the table by their reconcile
-- timer (30 s by default) until they are replaced. Granted to no one.
CREATE OR REPLACE FUNCTION public.rc_notify_key() RETURNS bytea
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RAISE EXCEPTION 'notifications are read through rc_notify_secret() since migration 0014'
        USING ERRCODE = 'insufficient_privilege';
END
$$;
REVOKE ALL ON FUNCTION public.rc_notify_key() FROM PUBLIC;
