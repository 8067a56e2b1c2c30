-- roomcast schema v9: live room lists converge (issue 23).
--
-- Every write of a room row records the writing transaction's id (`xid`,
-- as a number). An instance with live room lists of an org reads, every
-- 5 s and after any reconnect, the org's rooms written by a transaction
-- at or after the oldest one still running at its previous read
-- (`pg_snapshot_xmin` of that read's snapshot): every change committed
-- since is among them, whether or not its announcement arrived. Exact,
-- whatever the time between a room's lock and its commit (a producer's
-- own transaction may hold it for long); a change read twice is sent once.

ALTER TABLE rooms ADD COLUMN xid bigint NOT NULL DEFAULT 0;

CREATE FUNCTION roomcast_rooms_xid() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.xid := pg_current_xact_id()::text::bigint;
    RETURN NEW;
END
$$;

CREATE TRIGGER rooms_xid BEFORE INSERT OR UPDATE ON rooms
    FOR EACH ROW EXECUTE FUNCTION roomcast_rooms_xid();

CREATE INDEX rooms_org_xid ON rooms (org, xid);
