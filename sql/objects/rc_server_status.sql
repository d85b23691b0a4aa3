-- The database's clock (microseconds since the Unix epoch, as notifications' at_us) and how
-- full the notification queue is (0 to 1). Instances read it at every (re)connect, to measure
-- lag and check a notification's age by the database's clock, and as their heartbeat; `check`
-- and `status` show the queue. A full queue makes every commit that notifies fail.
CREATE OR REPLACE FUNCTION public.rc_server_status()
RETURNS TABLE (o_now_us bigint, o_queue_usage double precision)
LANGUAGE sql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
    SELECT floor(date_part('epoch', clock_timestamp()) * 1000000)::bigint,
           pg_notification_queue_usage()
$$;
REVOKE ALL ON FUNCTION public.rc_server_status() FROM PUBLIC;
