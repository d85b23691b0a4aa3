-- Who is writing, as the change log records it: the session as the server knows it, and the
-- instance name an instance sets in `resilient_circuit.instance` (cut to 255 characters; the
-- settings are the writer's own).
CREATE OR REPLACE FUNCTION public.rc_actor() RETURNS jsonb
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN jsonb_strip_nulls(jsonb_build_object(
        'application', NULLIF(current_setting('application_name'), ''),
        'user', session_user::text,
        'client', host(inet_client_addr()),
        'backend_pid', pg_backend_pid(),
        'instance', NULLIF(left(current_setting('resilient_circuit.instance', true), 255), '')));
END
$$;
REVOKE ALL ON FUNCTION public.rc_actor() FROM PUBLIC;
