-- Makes `p_keys` members of group `p_group` of namespace `p_ns`, created if needed, and sets
-- the group's declared cap on open members to p_num / p_den and its threshold, past which the
-- group as a whole is OPEN, to p_open_num / p_open_den (NULLs: none); the latest caller's
-- declaration wins (instances of one service declare the same), an operator's live
-- configuration wins over both (rc_group_configure). A member's key is named under its group,
-- `group/member`, so that a role that may join groups can cap only keys named as members,
-- never another service's; a key belongs to one group (joining a nested one moves it). At most
-- 1000 keys a call; names and keys are 1 to 255 characters, the cap and the threshold ratios
-- k/n with 1 <= k <= n <= 8192. Returns the group's state as counted after the join
-- (rc_group_tally).
CREATE OR REPLACE FUNCTION public.rc_group_join(
    p_ns text, p_group text, p_keys text[], p_num integer, p_den integer,
    p_open_num integer, p_open_den integer)
RETURNS TABLE (o_members integer, o_open integer, o_state text, o_version bigint,
               o_max_open text, o_open_at text)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    moved_from text[];
BEGIN
    PERFORM public.rc_check_key(p_ns, p_group);
    IF coalesce(array_length(p_keys, 1), 0) > 1000 THEN
        RAISE EXCEPTION 'at most 1000 members a call, got %', array_length(p_keys, 1)
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF p_num IS NULL OR p_den IS NULL OR p_num < 1 OR p_den < p_num OR p_den > 8192 THEN
        RAISE EXCEPTION 'a group''s cap must be a ratio k/n with 1 <= k <= n <= 8192, got %/%',
            coalesce(p_num::text, 'NULL'), coalesce(p_den::text, 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF (p_open_num IS NULL) <> (p_open_den IS NULL)
       OR p_open_num < 1 OR p_open_den < p_open_num OR p_open_den > 8192 THEN
        RAISE EXCEPTION 'a group''s threshold must be a ratio k/n with 1 <= k <= n <= 8192, got %/%',
            coalesce(p_open_num::text, 'NULL'), coalesce(p_open_den::text, 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    FOR i IN 1 .. coalesce(array_length(p_keys, 1), 0) LOOP
        PERFORM public.rc_check_key(p_ns, p_keys[i]);
        IF left(p_keys[i], char_length(p_group) + 1) <> p_group || '/'
           OR char_length(p_keys[i]) <= char_length(p_group) + 1 THEN
            RAISE EXCEPTION 'a member of group % must be named %/MEMBER, got %',
                p_group, p_group, p_keys[i]
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
    END LOOP;
    INSERT INTO public.rc_groups AS g
        (namespace, name, max_open_num, max_open_den, open_at_num, open_at_den)
        VALUES (p_ns, p_group, p_num, p_den, p_open_num, p_open_den)
        ON CONFLICT (namespace, name) DO UPDATE
            SET max_open_num = EXCLUDED.max_open_num, max_open_den = EXCLUDED.max_open_den,
                open_at_num = EXCLUDED.open_at_num, open_at_den = EXCLUDED.open_at_den,
                updated_at = clock_timestamp()
            WHERE (g.max_open_num, g.max_open_den, g.open_at_num, g.open_at_den)
                  IS DISTINCT FROM (EXCLUDED.max_open_num, EXCLUDED.max_open_den,
                                    EXCLUDED.open_at_num, EXCLUDED.open_at_den);
    -- The groups members move out of are counted again too (after this one, in name order;
    -- a count's lock waits for no group's row, so the order cannot close a circle).
    moved_from := ARRAY(SELECT DISTINCT m.group_name::text FROM public.rc_group_members m
                        WHERE m.namespace = p_ns AND m.resource_key = ANY (p_keys)
                          AND m.group_name <> p_group ORDER BY 1);
    INSERT INTO public.rc_group_members AS m (namespace, resource_key, group_name)
        SELECT DISTINCT p_ns, k, p_group FROM unnest(p_keys) AS k
        ON CONFLICT (namespace, resource_key) DO UPDATE SET group_name = EXCLUDED.group_name
            WHERE m.group_name <> EXCLUDED.group_name;
    PERFORM public.rc_group_tally(p_ns, p_group);
    PERFORM public.rc_group_tally(p_ns, g) FROM unnest(moved_from) AS g;
    RETURN QUERY SELECT * FROM public.rc_group_view(p_ns, p_group);
END
$$;
REVOKE ALL ON FUNCTION public.rc_group_join(text, text, text[], integer, integer, integer, integer)
    FROM PUBLIC;
