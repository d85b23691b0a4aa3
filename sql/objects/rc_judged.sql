-- The keys of a namespace under a fleet-rate judgement now, with how long it lasts: read by an
-- instance at every full load, so that one that starts (or reconnects) during a judgement
-- reports its rate like the others.
CREATE OR REPLACE FUNCTION public.rc_judged(p_ns text)
RETURNS TABLE (o_key text, o_remaining_ms bigint)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT resource_key, public.rc_remaining_ms(judged_until)
    FROM public.rc_judgements
    WHERE namespace = p_ns AND judged_until > clock_timestamp()
$$;
REVOKE ALL ON FUNCTION public.rc_judged(text) FROM PUBLIC;
