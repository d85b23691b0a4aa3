-- 0003: every transition this crate makes goes through one of these functions. Each takes the
-- row lock (INSERT ... ON CONFLICT or SELECT ... FOR UPDATE), checks the state it expects and
-- changes the row at most once, so a hundred instances racing to trip one key make exactly one
-- transition. Each returns the row as it is afterwards (o_state, o_version, o_remaining_ms) so
-- the caller applies it at once without waiting for its own NOTIFY; o_lease_id is a granted
-- half-open probe lease, if any.

-- Probe permits of a fleet-wide half-open round. A lease that expires gives its slot back, so a
-- prober that crashed cannot wedge the breaker in HALF_OPEN.
CREATE TABLE IF NOT EXISTS public.rc_probe_leases (
    lease_id     bigserial    PRIMARY KEY,
    namespace    varchar(255) NOT NULL,
    resource_key varchar(255) NOT NULL,
    holder       text         NOT NULL,
    expires_at   timestamptz  NOT NULL
);
CREATE INDEX IF NOT EXISTS idx_rc_probe_leases_key ON public.rc_probe_leases (namespace, resource_key);

-- The current row of one key as the functions return it; a missing row is CLOSED at version 0.
CREATE OR REPLACE FUNCTION public.rc_view(p_ns text, p_key text, p_lease bigint DEFAULT NULL)
RETURNS TABLE (o_state text, o_version bigint, o_remaining_ms bigint, o_lease_id bigint)
LANGUAGE sql STABLE AS $$
    SELECT coalesce(b.state, 'CLOSED'), coalesce(b.version, 0),
           coalesce(public.rc_remaining_ms(b.open_until), 0), p_lease
    FROM (SELECT 1) AS one
    LEFT JOIN public.rc_circuit_breakers b ON b.namespace = p_ns AND b.resource_key = p_key
$$;

-- Every row of a namespace, for the snapshot an instance loads at connect and after reconnects.
CREATE OR REPLACE FUNCTION public.rc_snapshot(p_ns text)
RETURNS TABLE (o_key text, o_state text, o_version bigint, o_remaining_ms bigint)
LANGUAGE sql STABLE AS $$
    SELECT resource_key, state, version, public.rc_remaining_ms(open_until)
    FROM public.rc_circuit_breakers WHERE namespace = p_ns
$$;

-- CLOSED -> OPEN, decided by an instance's own window. A key already OPEN or HALF_OPEN is left
-- alone: someone else tripped first, or a half-open round is on. p_log is the window that
-- tripped (the ancestor's execution_log, oldest first).
CREATE OR REPLACE FUNCTION public.rc_trip(
    p_ns text, p_key text, p_cooldown_ms bigint, p_failures integer, p_log jsonb)
RETURNS TABLE (o_state text, o_version bigint, o_remaining_ms bigint, o_lease_id bigint)
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO public.rc_circuit_breakers AS b
        (resource_key, namespace, state, failure_count, open_until, execution_log)
    VALUES (p_key, p_ns, 'OPEN', p_failures,
            clock_timestamp() + p_cooldown_ms * interval '1 millisecond', p_log)
    ON CONFLICT (resource_key, namespace) DO UPDATE
        SET state = 'OPEN', failure_count = EXCLUDED.failure_count,
            open_until = EXCLUDED.open_until, execution_log = EXCLUDED.execution_log,
            probe_successes = 0, probe_failures = 0
        WHERE b.state NOT IN ('OPEN', 'HALF_OPEN');
    RETURN QUERY SELECT * FROM public.rc_view(p_ns, p_key);
END
$$;

-- Asks for one probe permit. OPEN with its cooldown over (database clock) becomes HALF_OPEN and a
-- new round starts; within a round, results already in plus live leases never exceed p_probes.
CREATE OR REPLACE FUNCTION public.rc_acquire_probe(
    p_ns text, p_key text, p_holder text, p_lease_ms bigint, p_probes integer)
RETURNS TABLE (o_state text, o_version bigint, o_remaining_ms bigint, o_lease_id bigint)
LANGUAGE plpgsql AS $$
DECLARE
    r public.rc_circuit_breakers%ROWTYPE;
    live integer;
    granted bigint;
BEGIN
    SELECT * INTO r FROM public.rc_circuit_breakers
        WHERE namespace = p_ns AND resource_key = p_key FOR UPDATE;
    IF NOT FOUND THEN
        RETURN QUERY SELECT * FROM public.rc_view(p_ns, p_key);
        RETURN;
    END IF;
    IF r.state = 'OPEN' AND (r.open_until IS NULL OR r.open_until <= clock_timestamp()) THEN
        UPDATE public.rc_circuit_breakers
            SET state = 'HALF_OPEN', probe_successes = 0, probe_failures = 0
            WHERE namespace = p_ns AND resource_key = p_key
            RETURNING * INTO r;
        DELETE FROM public.rc_probe_leases WHERE namespace = p_ns AND resource_key = p_key;
    END IF;
    IF r.state = 'HALF_OPEN' THEN
        DELETE FROM public.rc_probe_leases
            WHERE namespace = p_ns AND resource_key = p_key AND expires_at <= clock_timestamp();
        SELECT count(*) INTO live FROM public.rc_probe_leases
            WHERE namespace = p_ns AND resource_key = p_key;
        IF live + r.probe_successes + r.probe_failures < p_probes THEN
            INSERT INTO public.rc_probe_leases (namespace, resource_key, holder, expires_at)
                VALUES (p_ns, p_key, p_holder, clock_timestamp() + p_lease_ms * interval '1 millisecond')
                RETURNING lease_id INTO granted;
        END IF;
    END IF;
    RETURN QUERY SELECT * FROM public.rc_view(p_ns, p_key, granted);
END
$$;

-- A probe's result. Counts only with a live lease of the current round; once p_probes results
-- are in, closes when at least p_close_at succeeded, else opens again for p_cooldown_ms.
CREATE OR REPLACE FUNCTION public.rc_report_probe(
    p_ns text, p_key text, p_lease bigint, p_success boolean,
    p_probes integer, p_close_at integer, p_cooldown_ms bigint)
RETURNS TABLE (o_state text, o_version bigint, o_remaining_ms bigint, o_lease_id bigint)
LANGUAGE plpgsql AS $$
DECLARE
    r public.rc_circuit_breakers%ROWTYPE;
BEGIN
    SELECT * INTO r FROM public.rc_circuit_breakers
        WHERE namespace = p_ns AND resource_key = p_key FOR UPDATE;
    DELETE FROM public.rc_probe_leases
        WHERE lease_id = p_lease AND namespace = p_ns AND resource_key = p_key;
    IF NOT FOUND OR r.state IS DISTINCT FROM 'HALF_OPEN' THEN
        RETURN QUERY SELECT * FROM public.rc_view(p_ns, p_key);
        RETURN;
    END IF;
    IF p_success THEN
        r.probe_successes := r.probe_successes + 1;
    ELSE
        r.probe_failures := r.probe_failures + 1;
    END IF;
    IF r.probe_successes + r.probe_failures < p_probes THEN
        UPDATE public.rc_circuit_breakers
            SET probe_successes = r.probe_successes, probe_failures = r.probe_failures
            WHERE namespace = p_ns AND resource_key = p_key;
    ELSIF r.probe_successes >= p_close_at THEN
        UPDATE public.rc_circuit_breakers
            SET state = 'CLOSED', failure_count = 0, open_until = NULL, execution_log = '[]',
                probe_successes = 0, probe_failures = 0
            WHERE namespace = p_ns AND resource_key = p_key;
        DELETE FROM public.rc_probe_leases WHERE namespace = p_ns AND resource_key = p_key;
    ELSE
        UPDATE public.rc_circuit_breakers
            SET state = 'OPEN', probe_successes = 0, probe_failures = 0,
                open_until = clock_timestamp() + p_cooldown_ms * interval '1 millisecond'
            WHERE namespace = p_ns AND resource_key = p_key;
        DELETE FROM public.rc_probe_leases WHERE namespace = p_ns AND resource_key = p_key;
    END IF;
    RETURN QUERY SELECT * FROM public.rc_view(p_ns, p_key);
END
$$;

-- A manual override: OPEN for p_cooldown_ms, or CLOSED with an empty window. Ends any round.
CREATE OR REPLACE FUNCTION public.rc_force(
    p_ns text, p_key text, p_state text, p_cooldown_ms bigint)
RETURNS TABLE (o_state text, o_version bigint, o_remaining_ms bigint, o_lease_id bigint)
LANGUAGE plpgsql AS $$
DECLARE
    until timestamptz := CASE WHEN p_state = 'OPEN'
        THEN clock_timestamp() + p_cooldown_ms * interval '1 millisecond' END;
BEGIN
    IF p_state NOT IN ('OPEN', 'CLOSED') THEN
        RAISE EXCEPTION 'rc_force: state must be OPEN or CLOSED, not %', p_state
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    INSERT INTO public.rc_circuit_breakers AS b
        (resource_key, namespace, state, failure_count, open_until, execution_log)
    VALUES (p_key, p_ns, p_state, 0, until, '[]')
    ON CONFLICT (resource_key, namespace) DO UPDATE
        SET state = EXCLUDED.state, failure_count = 0, open_until = EXCLUDED.open_until,
            execution_log = '[]', probe_successes = 0, probe_failures = 0;
    DELETE FROM public.rc_probe_leases WHERE namespace = p_ns AND resource_key = p_key;
    RETURN QUERY SELECT * FROM public.rc_view(p_ns, p_key);
END
$$;
