-- Every group of namespace p_ns (p_groups NULL), or those named in p_groups, with its state
-- (rc_group_view): how `status` lists groups and how an instance reads the groups it joined
-- again after a reload. For readers: counts and ratios only, no member's key.
CREATE OR REPLACE FUNCTION public.rc_group_states(p_ns text, p_groups text[])
RETURNS TABLE (o_group text, o_members integer, o_open integer, o_state text,
               o_version bigint, o_max_open text, o_open_at text)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF coalesce(array_length(p_groups, 1), 0) > 1000 THEN
        RAISE EXCEPTION 'at most 1000 groups a call, got %', array_length(p_groups, 1)
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    RETURN QUERY
    SELECT g.name::text, v.*
    FROM public.rc_groups g, LATERAL public.rc_group_view(g.namespace, g.name) v
    WHERE g.namespace = p_ns AND (p_groups IS NULL OR g.name = ANY (p_groups))
    ORDER BY g.name;
END
$$;
REVOKE ALL ON FUNCTION public.rc_group_states(text, text[]) FROM PUBLIC;
