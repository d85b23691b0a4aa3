-- 0005: several trips or overrides in one statement, so that one commit covers many.
-- PostgreSQL serializes the commits of transactions that NOTIFY, so an instance publishing one
-- transition per transaction was bounded by commits, not by its own work. Keys are handled in
-- the order given; callers sort them, so two instances batching overlapping keys take the row
-- locks in the same order and cannot deadlock.

-- rc_trip for each key, in order.
CREATE OR REPLACE FUNCTION public.rc_trip_many(
    p_ns text, p_keys text[], p_cooldown_ms bigint[], p_failures integer[], p_logs jsonb[])
RETURNS TABLE (o_key text, o_state text, o_version bigint, o_remaining_ms bigint, o_lease_id bigint)
LANGUAGE plpgsql AS $$
BEGIN
    FOR i IN 1 .. coalesce(array_length(p_keys, 1), 0) LOOP
        RETURN QUERY SELECT p_keys[i], t.*
            FROM public.rc_trip(p_ns, p_keys[i], p_cooldown_ms[i], p_failures[i], p_logs[i]) AS t;
    END LOOP;
END
$$;

-- rc_force for each key, in order.
CREATE OR REPLACE FUNCTION public.rc_force_many(
    p_ns text, p_keys text[], p_states text[], p_cooldown_ms bigint[])
RETURNS TABLE (o_key text, o_state text, o_version bigint, o_remaining_ms bigint, o_lease_id bigint)
LANGUAGE plpgsql AS $$
BEGIN
    FOR i IN 1 .. coalesce(array_length(p_keys, 1), 0) LOOP
        RETURN QUERY SELECT p_keys[i], t.*
            FROM public.rc_force(p_ns, p_keys[i], p_states[i], p_cooldown_ms[i]) AS t;
    END LOOP;
END
$$;
