-- Whether `p_key`'s entry into OPEN must be refused because its group (rc_group_members) has
-- as many members OPEN or HALF_OPEN as its cap allows: the cap in force (an operator's live
-- one, else the declared one) of its members, rounded down, but at least one. Called by rc_bump_version, as the owner, for a row
-- entering OPEN from CLOSED (or inserted OPEN) that no operator decreed; a key its live
-- configuration forces open is never refused.
--
-- The group's row is locked until the transaction ends, so that members entering OPEN at once
-- are counted one after another: each counts, in a statement that starts after the lock is
-- granted, the members the one before it opened. A refusal is recorded in the change log
-- (kind "group", the key's row as it stays: p_version, or the row's, or 0 without one) with the
-- group's counts.
CREATE OR REPLACE FUNCTION public.rc_group_full(p_ns text, p_key text, p_version bigint)
RETURNS boolean
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    g public.rc_groups%ROWTYPE;
    members bigint;
    open_now bigint;
    allowed bigint;
BEGIN
    SELECT r.* INTO g FROM public.rc_group_members m
        JOIN public.rc_groups r ON r.namespace = m.namespace AND r.name = m.group_name
        WHERE m.namespace = p_ns AND m.resource_key = p_key;
    -- Not a member (most trips: asked first, so that they skip the next question); or forced
    -- open by its live configuration, an operator's decision.
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    IF public.rc_forced_open(p_ns, p_key) THEN
        RETURN false;
    END IF;
    -- NO KEY UPDATE: trips of the group wait for each other, not for members joining (whose
    -- foreign key takes a KEY SHARE lock on this row).
    PERFORM 1 FROM public.rc_groups WHERE namespace = p_ns AND name = g.name
        FOR NO KEY UPDATE;
    SELECT count(*) INTO members FROM public.rc_group_members
        WHERE namespace = p_ns AND group_name = g.name;
    SELECT count(*) INTO open_now FROM public.rc_group_members m
        JOIN public.rc_circuit_breakers b
          ON b.namespace = m.namespace AND b.resource_key = m.resource_key
        WHERE m.namespace = p_ns AND m.group_name = g.name AND m.resource_key <> p_key
          AND b.state IN ('OPEN', 'HALF_OPEN');
    allowed := GREATEST(1, members * coalesce(g.live_max_open_num, g.max_open_num)
                           / coalesce(g.live_max_open_den, g.max_open_den));
    IF open_now < allowed THEN
        RETURN false;
    END IF;
    IF p_version IS NULL THEN
        SELECT version INTO p_version FROM public.rc_circuit_breakers
            WHERE namespace = p_ns AND resource_key = p_key;
    END IF;
    INSERT INTO public.rc_changes
        (txid, version, namespace, resource_key, from_state, state, open_until, reset, kind,
         actor, why)
    VALUES (pg_current_xact_id()::text::bigint, coalesce(p_version, 0), p_ns, p_key, 'CLOSED',
            'CLOSED', NULL, false, 'group', public.rc_actor(),
            jsonb_build_object('group', jsonb_build_object(
                'name', g.name, 'refused', 'OPEN', 'open', open_now, 'members', members,
                'max_open', allowed,
                'limit', coalesce(g.live_max_open_num, g.max_open_num) || '/'
                         || coalesce(g.live_max_open_den, g.max_open_den))));
    RETURN true;
END
$$;
REVOKE ALL ON FUNCTION public.rc_group_full(text, text, bigint) FROM PUBLIC;
