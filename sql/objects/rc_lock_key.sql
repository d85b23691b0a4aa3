-- Locks a key of the breaker table until the end of the transaction, whether or not its row
-- exists or is committed (rc_key_locks, migration 0015): what rc_bump_version
-- takes before it versions a row arriving under the key; it runs with that trigger's rights
-- (the owner's), and no other role may call it.
CREATE OR REPLACE FUNCTION public.rc_lock_key(p_namespace text, p_key text) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    -- Waits for a transaction that inserted the lock row and has not ended.
    INSERT INTO public.rc_key_locks (namespace, resource_key) VALUES (p_namespace, p_key)
        ON CONFLICT DO NOTHING;
    -- Waits for one that holds it.
    PERFORM 1 FROM public.rc_key_locks
        WHERE namespace = p_namespace AND resource_key = p_key FOR UPDATE;
END
$$;
REVOKE ALL ON FUNCTION public.rc_lock_key(text, text) FROM PUBLIC;
