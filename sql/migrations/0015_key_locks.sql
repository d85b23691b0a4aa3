-- One row per key ever inserted, locked by the trigger that versions a breaker row before it
-- takes an inserted row's version (sql/objects/rc_bump_version.sql). An INSERT that waits out
-- another transaction's uncommitted INSERT of the same key (which that transaction may still
-- delete) then takes its version after that transaction ends, so the versions of a key follow
-- commit order; the row of the breaker table cannot serve, since an uncommitted row is
-- invisible to the waiting writer's trigger. Only the owner's triggers touch it: no role can
-- read or lock it.
CREATE TABLE IF NOT EXISTS public.rc_key_locks (
    namespace    varchar(255) NOT NULL,
    resource_key varchar(255) NOT NULL,
    PRIMARY KEY (namespace, resource_key)
);
REVOKE ALL ON public.rc_key_locks FROM PUBLIC;
