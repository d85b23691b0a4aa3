-- Refuses a session whose login role may not write the breaker table. The transition functions
-- below run as the owner, so they check this themselves.
CREATE OR REPLACE FUNCTION public.rc_require_write() RETURNS void
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, public AS $$
BEGIN
    IF NOT has_table_privilege(session_user, 'public.rc_circuit_breakers', 'UPDATE') THEN
        RAISE EXCEPTION 'role % may not change circuit breakers: it needs UPDATE on public.rc_circuit_breakers', session_user
            USING ERRCODE = 'insufficient_privilege',
                  HINT = 'grant it with: resilient-circuit setup --grant-to ROLE';
    END IF;
END
$$;
