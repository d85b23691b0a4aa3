-- After a live configuration is written, whoever writes it: a key entering forced_open has its
-- breaker row held OPEN (for rc_max_ms(), so no half-open round starts, and the Python package
-- obeys too); a key leaving it (another mode, or its configuration deleted) is closed. The
-- change log says so (why.config). rc_bump_version refuses every other write that would end
-- the hold.
CREATE OR REPLACE FUNCTION public.rc_config_mode() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    was text := CASE WHEN TG_OP = 'INSERT' THEN 'normal' ELSE OLD.mode END;
    now_mode text := CASE WHEN TG_OP = 'DELETE' THEN 'normal' ELSE NEW.mode END;
    ns text := coalesce(NEW.namespace, OLD.namespace);
    key text := coalesce(NEW.resource_key, OLD.resource_key);
    note text := CASE WHEN TG_OP = 'DELETE' THEN NULL ELSE NEW.note END;
BEGIN
    IF (now_mode = 'forced_open') = (was = 'forced_open') THEN
        RETURN NULL;
    END IF;
    PERFORM public.rc_explain(key, jsonb_build_object('config', jsonb_strip_nulls(
        jsonb_build_object('mode', now_mode, 'note', note))));
    IF now_mode = 'forced_open' THEN
        INSERT INTO public.rc_circuit_breakers AS b
            (resource_key, namespace, state, failure_count, open_until, execution_log)
        VALUES (key, ns, 'OPEN', 0,
                clock_timestamp() + public.rc_max_ms() * interval '1 millisecond', '[]')
        ON CONFLICT (resource_key, namespace) DO UPDATE
            SET state = 'OPEN', failure_count = 0, open_until = EXCLUDED.open_until,
                execution_log = '[]';
    ELSE
        UPDATE public.rc_circuit_breakers
            SET state = 'CLOSED', failure_count = 0, open_until = NULL, execution_log = '[]'
            WHERE namespace = ns AND resource_key = key;
    END IF;
    RETURN NULL;
END
$$;
REVOKE ALL ON FUNCTION public.rc_config_mode() FROM PUBLIC;

DROP TRIGGER IF EXISTS rc_config_mode ON public.rc_breaker_config;
CREATE TRIGGER rc_config_mode AFTER INSERT OR UPDATE OR DELETE ON public.rc_breaker_config
    FOR EACH ROW EXECUTE FUNCTION public.rc_config_mode();
