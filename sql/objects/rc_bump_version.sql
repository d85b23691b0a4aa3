-- Before every write of a row: the version, the round, and the leases of a round that ended.
CREATE OR REPLACE FUNCTION public.rc_bump_version() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        DELETE FROM public.rc_probe_leases
            WHERE namespace = OLD.namespace AND resource_key = OLD.resource_key;
        RETURN OLD;
    END IF;
    IF TG_OP = 'INSERT' THEN
        -- Wait for a transaction deleting this key (if any) to end, so that our version is
        -- taken after its and the two commit in version order. Locks nothing if no row exists.
        PERFORM 1 FROM public.rc_circuit_breakers
            WHERE namespace = NEW.namespace AND resource_key = NEW.resource_key FOR KEY SHARE;
        NEW.version := nextval('public.rc_circuit_breakers_version_seq');
        NEW.probe_successes := 0;
        NEW.probe_failures := 0;
        IF NEW.state = 'HALF_OPEN' THEN
            NEW.round_id := NEW.version;
        ELSE
            NEW.round_id := NULL;
            NEW.round_probes := NULL;
            NEW.round_close_at := NULL;
        END IF;
        RETURN NEW;
    END IF;
    IF NEW.state IS DISTINCT FROM OLD.state
       OR NEW.open_until IS DISTINCT FROM OLD.open_until
       OR NEW.resource_key IS DISTINCT FROM OLD.resource_key
       OR NEW.namespace IS DISTINCT FROM OLD.namespace THEN
        -- Under the row lock: versions of one key follow commit order.
        NEW.version := nextval('public.rc_circuit_breakers_version_seq');
    ELSE
        NEW.version := OLD.version;
    END IF;
    IF NEW.state IS DISTINCT FROM OLD.state
       OR NEW.resource_key IS DISTINCT FROM OLD.resource_key
       OR NEW.namespace IS DISTINCT FROM OLD.namespace THEN
        -- A new state, whoever wrote it, ends the half-open round and its leases.
        NEW.probe_successes := 0;
        NEW.probe_failures := 0;
        IF NEW.state = 'HALF_OPEN' THEN
            NEW.round_id := NEW.version;
            -- A size set in this same statement (rc_acquire_probe) is kept; else the first
            -- instance that asks for a probe sets it.
            IF NEW.round_probes IS NOT DISTINCT FROM OLD.round_probes THEN
                NEW.round_probes := NULL;
                NEW.round_close_at := NULL;
            END IF;
        ELSE
            NEW.round_id := NULL;
            NEW.round_probes := NULL;
            NEW.round_close_at := NULL;
        END IF;
        DELETE FROM public.rc_probe_leases
            WHERE namespace = OLD.namespace AND resource_key = OLD.resource_key;
    END IF;
    RETURN NEW;
END
$$;

DROP TRIGGER IF EXISTS rc_bump_version ON public.rc_circuit_breakers;
CREATE TRIGGER rc_bump_version
    BEFORE INSERT OR UPDATE OR DELETE ON public.rc_circuit_breakers
    FOR EACH ROW EXECUTE FUNCTION public.rc_bump_version();
