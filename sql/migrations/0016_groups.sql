-- Breaker groups: keys judged together, e.g. one breaker per host of a service
-- (docs::groups). A group's cap bounds how many of its members may be OPEN or HALF_OPEN at once,
-- fleet-wide: a member's entry into OPEN past the cap is refused by the trigger that versions
-- breaker rows (rc_group_full), whoever writes it, and recorded in the change log (kind
-- "group"). Members join through rc_group_join; only the owner's functions touch these tables.
CREATE TABLE IF NOT EXISTS public.rc_groups (
    namespace    varchar(255) NOT NULL,
    name         varchar(255) NOT NULL,
    -- At most max_open_num / max_open_den of the members open at once (at least one).
    max_open_num integer      NOT NULL CHECK (max_open_num >= 1),
    max_open_den integer      NOT NULL CHECK (max_open_den >= max_open_num
                                              AND max_open_den <= 8192),
    updated_at   timestamptz  NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (namespace, name)
);
CREATE TABLE IF NOT EXISTS public.rc_group_members (
    namespace    varchar(255) NOT NULL,
    resource_key varchar(255) NOT NULL,
    group_name   varchar(255) NOT NULL,
    joined_at    timestamptz  NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (namespace, resource_key),
    FOREIGN KEY (namespace, group_name) REFERENCES public.rc_groups (namespace, name)
        ON DELETE CASCADE
);
CREATE INDEX IF NOT EXISTS rc_group_members_group
    ON public.rc_group_members (namespace, group_name);
REVOKE ALL ON public.rc_groups, public.rc_group_members FROM PUBLIC;

-- The change log records a refused entry into OPEN as kind "group".
ALTER TABLE public.rc_changes DROP CONSTRAINT IF EXISTS rc_changes_kind_check;
ALTER TABLE public.rc_changes ADD CONSTRAINT rc_changes_kind_check
    CHECK (kind IN ('row', 'reset', 'config', 'judge', 'group'));
