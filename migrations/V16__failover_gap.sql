-- roomcast schema v16: a failover never reuses a seq (issue 25).
--
-- A promoted standby that had not received the primary's last commits
-- (asynchronous replication, or a synchronous wait that was cancelled)
-- lacks events that were acknowledged and delivered: left alone, the next
-- publishes would take their seqs again, and a client that showed the lost
-- events would take the new ones for duplicates. So the first thing done on
-- a new timeline (before roomcast's first query on any new connection, and
-- in every SQL publish, whichever comes first) moves every room's head past
-- any seq an earlier primary may have answered: by `gap` (a million unless
-- an operator sets it). The seqs skipped are recorded per room as a lost
-- range (`room_retention.lost`, pairs `after, upto`): a cursor at `after`
-- goes on past it (nothing it lacks existed), one inside it may hold lost
-- events and is `reset` (docs/decisions.md, "Failover"). Rooms with no row
-- (never published to, or created only in the lost tail) start above the
-- raised `floor`, so no head is ever answered lower than before.

CREATE TABLE roomcast_timeline (
    one        boolean     PRIMARY KEY DEFAULT true CHECK (one),
    -- The timeline the heads were last moved for.
    tli        bigint      NOT NULL,
    -- How far heads move on a new timeline.
    gap        bigint      NOT NULL DEFAULT 1000000 CHECK (gap > 0),
    -- Where a room with no row starts (raised by `gap` on each new timeline).
    floor      bigint      NOT NULL DEFAULT 0,
    changed_at timestamptz
);
REVOKE ALL ON roomcast_timeline FROM PUBLIC;

ALTER TABLE room_retention ADD COLUMN lost bigint[] NOT NULL DEFAULT '{}';

-- The timeline this server writes on (it moves at a promotion, at once;
-- pg_control_checkpoint() only after the next checkpoint).
CREATE FUNCTION roomcast_current_tli() RETURNS bigint
LANGUAGE sql VOLATILE AS $$
    SELECT ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::bigint
$$;

INSERT INTO roomcast_timeline (tli) VALUES (roomcast_current_tli());

-- Moves every head past the previous timeline's seqs, once per timeline;
-- answers how many rooms moved (0: nothing to do). Concurrent callers wait
-- for the first and find it done.
CREATE FUNCTION roomcast_follow_timeline() RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    cur bigint := roomcast_current_tli();
    t roomcast_timeline%ROWTYPE;
    moved bigint;
BEGIN
    IF (SELECT tli FROM roomcast_timeline) >= cur THEN
        RETURN 0;
    END IF;
    SELECT * INTO t FROM roomcast_timeline FOR UPDATE;
    IF t.tli >= cur THEN
        RETURN 0;
    END IF;
    INSERT INTO room_retention (org, room, first, born)
    SELECT r.org, r.room, r.head + 1, 0 FROM rooms r
     WHERE NOT EXISTS (SELECT 1 FROM room_retention rr WHERE rr.org = r.org AND rr.room = r.room);
    -- The lost range, and `first` of a room that stores nothing.
    UPDATE room_retention rr
       SET lost = rr.lost || ARRAY[r.head, r.head + t.gap],
           first = CASE WHEN rr.first > r.head THEN r.head + t.gap + 1 ELSE rr.first END
      FROM rooms r
     WHERE r.org = rr.org AND r.room = rr.room;
    UPDATE rooms SET head = head + t.gap;
    GET DIAGNOSTICS moved = ROW_COUNT;
    UPDATE org_floors SET floor = floor + t.gap;
    UPDATE roomcast_timeline SET tli = cur, floor = floor + t.gap, changed_at = now();
    RAISE LOG 'roomcast: timeline % (was %): % rooms moved past % seqs', cur, t.tli, moved, t.gap;
    RETURN moved;
END
$$;

-- Every SQL publish path locks its room here: on a new timeline it first
-- moves the heads (a producer may write before any roomcast instance has
-- reconnected); a room created now starts above every floor.
CREATE OR REPLACE FUNCTION roomcast_lock_room(p_org text, p_room text) RETURNS rooms
LANGUAGE plpgsql AS $$
DECLARE
    r rooms%ROWTYPE;
    f bigint;
BEGIN
    -- Only a caller other than roomcast's own role can be limited (the
    -- server's publishes skip the lookup).
    IF session_user <> current_user AND NOT roomcast_may_publish(p_org) THEN
        RAISE EXCEPTION 'role % may not publish into org %', session_user, p_org
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF (SELECT tli FROM roomcast_timeline) < roomcast_current_tli() THEN
        PERFORM roomcast_follow_timeline();
    END IF;
    SELECT * INTO r FROM rooms WHERE org = p_org AND room = p_room FOR UPDATE;
    IF FOUND THEN
        RETURN r;
    END IF;
    SELECT floor INTO f FROM org_floors WHERE org = p_org;
    f := greatest(coalesce(f, 0), (SELECT floor FROM roomcast_timeline));
    INSERT INTO rooms (org, room, head) VALUES (p_org, p_room, f) ON CONFLICT DO NOTHING;
    INSERT INTO room_retention (org, room, first, born) VALUES (p_org, p_room, f + 1, f)
        ON CONFLICT DO NOTHING;
    SELECT * INTO r FROM rooms WHERE org = p_org AND room = p_room FOR UPDATE;
    RETURN r;
END
$$;

DO $$
DECLARE
    s text := quote_ident(current_schema());
BEGIN
    EXECUTE format('ALTER FUNCTION roomcast_follow_timeline() SECURITY DEFINER SET search_path = %s, pg_temp', s);
    REVOKE EXECUTE ON FUNCTION roomcast_follow_timeline(), roomcast_lock_room(text, text) FROM PUBLIC;
END
$$;
