-- roomcast schema v10: a room knows where its current life began (issue 23).
--
-- A room created after its org's floor rose (a tombstone of the org was
-- compacted) starts at the floor: its first event is floor + 1. Seqs at or
-- below the floor never existed in this room's life, so a cursor below them
-- (`since=0`, or "from now" taken while the room had no row) is not a
-- pruned one: it gets every stored event, and `reset` stays for events that
-- existed and are gone. `born` is the head the room was created at; rooms
-- created before this migration keep 0 (the old rule).

ALTER TABLE room_retention ADD COLUMN born bigint NOT NULL DEFAULT 0;

CREATE OR REPLACE FUNCTION roomcast_lock_room(p_org text, p_room text) RETURNS rooms
LANGUAGE plpgsql AS $$
DECLARE
    r rooms%ROWTYPE;
    f bigint;
BEGIN
    SELECT * INTO r FROM rooms WHERE org = p_org AND room = p_room FOR UPDATE;
    IF FOUND THEN
        RETURN r;
    END IF;
    SELECT floor INTO f FROM org_floors WHERE org = p_org;
    f := coalesce(f, 0);
    INSERT INTO rooms (org, room, head) VALUES (p_org, p_room, f) ON CONFLICT DO NOTHING;
    INSERT INTO room_retention (org, room, first, born) VALUES (p_org, p_room, f + 1, f)
        ON CONFLICT DO NOTHING;
    SELECT * INTO r FROM rooms WHERE org = p_org AND room = p_room FOR UPDATE;
    RETURN r;
END
$$;
