-- 0002: what the fleet needs on top of the ancestor's table: a version that grows on every change
-- of a breaker's state or cooldown (whoever writes: this crate, a Python service, an operator in
-- psql), and a NOTIFY carrying that change to every listening instance.

-- One sequence for all rows, not a per-row counter: a row deleted and inserted again must still
-- get a version above any its key had, or instances would ignore it as stale.
CREATE SEQUENCE IF NOT EXISTS public.rc_circuit_breakers_version_seq;

ALTER TABLE public.rc_circuit_breakers
    ADD COLUMN IF NOT EXISTS version bigint NOT NULL
        DEFAULT nextval('public.rc_circuit_breakers_version_seq'),
    ADD COLUMN IF NOT EXISTS probe_successes integer NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS probe_failures integer NOT NULL DEFAULT 0;

-- Milliseconds of cooldown left by the database clock, 0 when over or unknown. Guards the
-- infinities a hand-written row may hold (their interval arithmetic raises an error).
CREATE OR REPLACE FUNCTION public.rc_remaining_ms(open_until timestamptz) RETURNS bigint
LANGUAGE sql STABLE AS $$
    SELECT CASE
        WHEN open_until IS NULL OR open_until = '-infinity'::timestamptz THEN 0
        WHEN open_until = 'infinity'::timestamptz THEN 9007199254740991
        ELSE LEAST(9007199254740991, GREATEST(0,
            ceil(extract(epoch FROM (open_until - clock_timestamp())) * 1000)))::bigint
    END
$$;

-- Bumps the version when the state or the cooldown changes, and only then: the ancestor rewrites
-- failure_count and execution_log on every call, which must not wake the whole fleet.
CREATE OR REPLACE FUNCTION public.rc_bump_version() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        NEW.version := nextval('public.rc_circuit_breakers_version_seq');
    ELSIF NEW.state IS DISTINCT FROM OLD.state OR NEW.open_until IS DISTINCT FROM OLD.open_until THEN
        NEW.version := nextval('public.rc_circuit_breakers_version_seq');
    ELSE
        NEW.version := OLD.version;
    END IF;
    RETURN NEW;
END
$$;

DROP TRIGGER IF EXISTS rc_bump_version ON public.rc_circuit_breakers;
CREATE TRIGGER rc_bump_version
    BEFORE INSERT OR UPDATE ON public.rc_circuit_breakers
    FOR EACH ROW EXECUTE FUNCTION public.rc_bump_version();

-- Sends {"v":1,"ns","key","state","version","remaining_ms"} on channel rc_circuit_breakers.
-- A deleted row is announced as CLOSED with a fresh version. Keys are at most 255 characters, so
-- the payload stays far below NOTIFY's 8000-byte limit.
CREATE OR REPLACE FUNCTION public.rc_notify_change() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    payload text;
BEGIN
    IF TG_OP = 'DELETE' THEN
        payload := json_build_object(
            'v', 1, 'ns', OLD.namespace, 'key', OLD.resource_key, 'state', 'CLOSED',
            'version', nextval('public.rc_circuit_breakers_version_seq'), 'remaining_ms', 0)::text;
    ELSE
        payload := json_build_object(
            'v', 1, 'ns', NEW.namespace, 'key', NEW.resource_key, 'state', NEW.state,
            'version', NEW.version, 'remaining_ms', public.rc_remaining_ms(NEW.open_until))::text;
    END IF;
    PERFORM pg_notify('rc_circuit_breakers', payload);
    RETURN NULL;
END
$$;

DROP TRIGGER IF EXISTS rc_notify_insert ON public.rc_circuit_breakers;
CREATE TRIGGER rc_notify_insert
    AFTER INSERT ON public.rc_circuit_breakers
    FOR EACH ROW EXECUTE FUNCTION public.rc_notify_change();

DROP TRIGGER IF EXISTS rc_notify_update ON public.rc_circuit_breakers;
CREATE TRIGGER rc_notify_update
    AFTER UPDATE ON public.rc_circuit_breakers
    FOR EACH ROW WHEN (OLD.version IS DISTINCT FROM NEW.version)
    EXECUTE FUNCTION public.rc_notify_change();

DROP TRIGGER IF EXISTS rc_notify_delete ON public.rc_circuit_breakers;
CREATE TRIGGER rc_notify_delete
    AFTER DELETE ON public.rc_circuit_breakers
    FOR EACH ROW EXECUTE FUNCTION public.rc_notify_change();
