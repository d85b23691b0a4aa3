-- 0011: growing cooldowns. Each half-open round that fails before the breaker closes again
-- lengthens the next cooldown: the n-th reopen since the last close rests
-- min(max, cooldown * 2^n), shortened by a random fraction of at most 10% (so the cap is never
-- exceeded, and keys that reopened together spread their probes). A trip from CLOSED rests the
-- base cooldown. The crate mirrors the formula for its in-memory store (Policy::cooldown_after).
--
-- * The row counts its reopens (`reopens`), so the whole fleet grows one cooldown, by the
--   database's clock, whichever instance reports the failing probe.
-- * The count is reset by every write that leaves the row CLOSED, whoever makes it: a round that
--   closes, rc_force / rc_force_many CLOSED, an operator's or the Python ancestor's plain UPDATE.
--   A deleted row comes back with the column's default, 0.
-- * The column has a default, so writers that name their own columns (the ancestor's INSERTs and
--   UPDATEs) keep working unchanged.
-- * rc_report_probe gets an overload with the maximum (p_max_cooldown_ms). The previous
--   signature stays, for instances of the previous version during a rolling upgrade: it reports
--   with no maximum (a fixed cooldown, as before) but still counts reopens.

ALTER TABLE public.rc_circuit_breakers
    ADD COLUMN IF NOT EXISTS reopens integer NOT NULL DEFAULT 0;

-- Resets the reopen count of a row written CLOSED (see the top). A trigger rather than a line in
-- each function, because the ancestor and operators write rows directly. Its WHEN clause keeps
-- every other write from calling it at all. It only sets a field of NEW and reads nothing, so it
-- needs neither the owner's rights nor a pinned search_path (both would make it slower, see
-- rc_notify_payload in 0006).
CREATE OR REPLACE FUNCTION public.rc_reset_reopens() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.reopens := 0;
    RETURN NEW;
END
$$;

DROP TRIGGER IF EXISTS rc_reset_reopens ON public.rc_circuit_breakers;
CREATE TRIGGER rc_reset_reopens
    BEFORE INSERT OR UPDATE ON public.rc_circuit_breakers
    FOR EACH ROW WHEN (NEW.state = 'CLOSED' AND NEW.reopens <> 0)
    EXECUTE FUNCTION public.rc_reset_reopens();

-- The cooldown after the p_reopens-th failed round, in milliseconds: p_base_ms for a trip
-- (p_reopens 0) or without a maximum (NULL), else min(p_max_ms, p_base_ms * 2^p_reopens) minus
-- up to 10% of it at random. The exponent is capped at 64 (2^64 ms exceeds rc_max_ms() for any
-- base of at least 1 ms), so the product cannot overflow. Arguments are checked by the caller.
-- VOLATILE: random().
CREATE OR REPLACE FUNCTION public.rc_grown_cooldown_ms(
    p_base_ms bigint, p_max_ms bigint, p_reopens integer)
RETURNS bigint
LANGUAGE sql VOLATILE AS $$
    SELECT CASE
        WHEN p_max_ms IS NULL OR p_reopens IS NULL OR p_reopens <= 0 THEN p_base_ms
        ELSE g.ms - pg_catalog.floor(g.ms * 0.1 * pg_catalog.random())::bigint
    END
    FROM (SELECT LEAST(p_max_ms::float8,
                       p_base_ms * pg_catalog.power(2::float8, LEAST(p_reopens, 64)))::bigint
                 AS ms) AS g
$$;

-- A probe's result, as 0006's rc_report_probe, with growing cooldowns: a round that fails
-- opens the row again for rc_grown_cooldown_ms(p_cooldown_ms, p_max_cooldown_ms, reopens + 1)
-- and counts the reopen; a round that closes resets the count. p_max_cooldown_ms NULL: a fixed
-- cooldown (growth off). A maximum shorter than the cooldown is refused: the caller's settings
-- are wrong, and silently using either would hide it.
CREATE OR REPLACE FUNCTION public.rc_report_probe(
    p_ns text, p_key text, p_lease bigint, p_success boolean,
    p_probes integer, p_close_at integer, p_cooldown_ms bigint, p_max_cooldown_ms bigint)
RETURNS TABLE (o_state text, o_version bigint, o_remaining_ms bigint, o_lease_id bigint,
               o_retry_ms bigint)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
    r public.rc_circuit_breakers%ROWTYPE;
    counted boolean;
    probes integer;
    close_at integer;
    ms bigint;
    max_ms bigint;
    n integer;
    rest bigint;
    round jsonb;
BEGIN
    PERFORM public.rc_require_write();
    PERFORM public.rc_check_key(p_ns, p_key);
    ms := public.rc_check_ms(p_cooldown_ms, 'cooldown');
    IF p_max_cooldown_ms IS NOT NULL THEN
        IF p_max_cooldown_ms < ms THEN
            RAISE EXCEPTION 'max cooldown of % ms is shorter than the cooldown of % ms: a growing cooldown starts at the cooldown and grows up to the max, so the max must be at least as long (NULL: no growth)',
                p_max_cooldown_ms, ms
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
        max_ms := public.rc_check_ms(p_max_cooldown_ms, 'max cooldown');
    END IF;
    IF p_success IS NULL THEN
        RAISE EXCEPTION 'probe result must not be NULL' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    SELECT * INTO r FROM public.rc_circuit_breakers
        WHERE namespace = p_ns AND resource_key = p_key FOR UPDATE;
    IF NOT FOUND OR r.state IS DISTINCT FROM 'HALF_OPEN' THEN
        RETURN QUERY SELECT * FROM public.rc_view(p_ns, p_key);
        RETURN;
    END IF;
    DELETE FROM public.rc_probe_leases
        WHERE lease_id = p_lease AND namespace = p_ns AND resource_key = p_key
          AND round_id IS NOT DISTINCT FROM r.round_id;
    counted := FOUND;
    IF NOT counted THEN
        RETURN QUERY SELECT * FROM public.rc_view(p_ns, p_key);
        RETURN;
    END IF;
    probes := coalesce(r.round_probes, GREATEST(p_probes, 1));
    close_at := coalesce(r.round_close_at, LEAST(GREATEST(p_close_at, 1), probes));
    IF p_success THEN
        r.probe_successes := r.probe_successes + 1;
    ELSE
        r.probe_failures := r.probe_failures + 1;
    END IF;
    IF r.probe_successes + r.probe_failures < probes THEN
        UPDATE public.rc_circuit_breakers
            SET probe_successes = r.probe_successes, probe_failures = r.probe_failures
            WHERE namespace = p_ns AND resource_key = p_key;
        RETURN QUERY SELECT * FROM public.rc_view(p_ns, p_key);
        RETURN;
    END IF;
    -- The round is over: the change log says how it went (0010's rc_explain).
    round := jsonb_build_object('successes', r.probe_successes, 'failures', r.probe_failures,
                                'needed', close_at, 'probes', probes);
    IF r.probe_successes >= close_at THEN
        PERFORM public.rc_explain(p_key, jsonb_build_object('probes', round));
        -- reopens is reset by rc_reset_reopens; said here too for the reader.
        UPDATE public.rc_circuit_breakers
            SET state = 'CLOSED', failure_count = 0, open_until = NULL, execution_log = '[]',
                reopens = 0
            WHERE namespace = p_ns AND resource_key = p_key;
    ELSE
        -- A row written by hand may hold a negative count; the count stops short of overflow.
        n := LEAST(GREATEST(r.reopens, 0), 2147483646) + 1;
        rest := public.rc_grown_cooldown_ms(ms, max_ms, n);
        PERFORM public.rc_explain(p_key, jsonb_build_object(
            'probes', round, 'reopens', n, 'cooldown_ms', rest));
        UPDATE public.rc_circuit_breakers
            SET state = 'OPEN', reopens = n,
                open_until = clock_timestamp() + rest * interval '1 millisecond'
            WHERE namespace = p_ns AND resource_key = p_key;
    END IF;
    RETURN QUERY SELECT * FROM public.rc_view(p_ns, p_key);
END
$$;

-- 0006's signature, kept for instances of the previous version during a rolling upgrade: the
-- same report with no maximum, so their failed rounds rest the fixed cooldown they ask for while
-- the row's count stays right for the upgraded instances.
CREATE OR REPLACE FUNCTION public.rc_report_probe(
    p_ns text, p_key text, p_lease bigint, p_success boolean,
    p_probes integer, p_close_at integer, p_cooldown_ms bigint)
RETURNS TABLE (o_state text, o_version bigint, o_remaining_ms bigint, o_lease_id bigint,
               o_retry_ms bigint)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
BEGIN
    RETURN QUERY SELECT * FROM public.rc_report_probe(p_ns, p_key, p_lease, p_success, p_probes,
                                                      p_close_at, p_cooldown_ms, NULL::bigint);
END
$$;
