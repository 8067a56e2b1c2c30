-- roomcast schema v4: retention (issue 14).
--
-- Events live as long as the retention says: a closed room's events for
-- ROOMCAST_RETAIN_CLOSED after it closed, any event at most
-- ROOMCAST_RETAIN_MAX_AGE, optionally at most ROOMCAST_RETAIN_MAX_EVENTS per
-- room. A pruner inside the server (one instance at a time) deletes expired
-- events in small batches.
--
-- `room_retention` holds, per room that has had events, the lowest seq still
-- stored (`first`; head + 1 when none is) and that event's ts. It is a table
-- of its own so that the pruner never touches a room's row: publishes lock
-- the room row, the pruner never does, so no publish waits on the pruner.
-- Publishes touch `room_retention` only when they create a room.
--
-- A room whose events are all gone keeps its row (a tombstone: head, status,
-- state, times) so that it never answers a lower head than before. Tombstones
-- idle for ROOMCAST_RETAIN_TOMBSTONES are compacted: the row goes and the
-- org's floor (`org_floors`) rises to its head. A room with no row answers
-- head = its org's floor (0 until a tombstone was compacted) and its first
-- event gets seq floor + 1: a reused room id never answers a head lower than
-- one it answered before, and the rooms table does not grow without bound.

ALTER TABLE rooms ADD COLUMN closed_at timestamptz;
UPDATE rooms SET closed_at = updated_at WHERE status <> 'in_progress';

CREATE TABLE room_retention (
    org      text        NOT NULL,
    room     text        NOT NULL,
    first    bigint      NOT NULL,
    -- ts of event `first`; NULL while not known (a new or emptied room: the
    -- pruner fills it).
    first_ts timestamptz,
    PRIMARY KEY (org, room)
);

INSERT INTO room_retention (org, room, first, first_ts)
SELECT r.org, r.room, coalesce(min(e.seq), r.head + 1), min(e.ts)
  FROM rooms r LEFT JOIN events e ON e.org = r.org AND e.room = r.room
 GROUP BY r.org, r.room, r.head;

CREATE INDEX room_retention_age ON room_retention (first_ts) WHERE first_ts IS NOT NULL;
CREATE INDEX room_retention_unknown ON room_retention (org, room) WHERE first_ts IS NULL;
CREATE INDEX rooms_closed ON rooms (closed_at) WHERE closed_at IS NOT NULL;

CREATE TABLE org_floors (
    org   text   PRIMARY KEY,
    floor bigint NOT NULL
);

-- Which instance pruned when (operators, and the test that two instances
-- never prune at once).
CREATE TABLE roomcast_prune_runs (
    instance text        NOT NULL,
    started  timestamptz NOT NULL,
    finished timestamptz NOT NULL,
    pruned   bigint      NOT NULL
);

-- The room row of `p_org`/`p_room`, locked; created (at its org's floor)
-- when missing.
CREATE FUNCTION roomcast_lock_room(p_org text, p_room text) RETURNS rooms
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
    INSERT INTO room_retention (org, room, first) VALUES (p_org, p_room, f + 1)
        ON CONFLICT DO NOTHING;
    SELECT * INTO r FROM rooms WHERE org = p_org AND room = p_room FOR UPDATE;
    RETURN r;
END
$$;

CREATE OR REPLACE FUNCTION roomcast_publish_ex(
    p_org text, p_room text, p_type text, p_data jsonb,
    p_idem_key text, p_state jsonb, p_status text, p_notify boolean
) RETURNS TABLE (o_seq bigint, o_duplicate boolean, o_ts text)
LANGUAGE plpgsql AS $$
DECLARE
    r rooms%ROWTYPE;
    old_seq bigint;
    old_ts timestamptz;
    new_ts timestamptz;
BEGIN
    IF p_org IS NULL OR p_org = '' THEN
        RAISE EXCEPTION 'org must not be empty' USING ERRCODE = '22023';
    END IF;
    IF p_room IS NULL OR p_room !~ '^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$' THEN
        RAISE EXCEPTION 'invalid room id' USING ERRCODE = '22023';
    END IF;
    IF p_type IS NULL OR p_type !~ '^[a-z][a-z0-9_.-]{0,63}$' THEN
        RAISE EXCEPTION 'invalid event type' USING ERRCODE = '22023';
    END IF;
    IF roomcast_json_size(p_data) > 65536 THEN
        RAISE EXCEPTION 'data is % bytes serialized; the limit is 65536', roomcast_json_size(p_data)
            USING ERRCODE = '22023';
    END IF;
    IF p_status IS NOT NULL AND p_status NOT IN ('in_progress', 'completed', 'failed') THEN
        RAISE EXCEPTION 'invalid status' USING ERRCODE = '22023';
    END IF;
    IF p_state IS NOT NULL AND jsonb_typeof(p_state) <> 'object' THEN
        RAISE EXCEPTION 'state must be a JSON object' USING ERRCODE = '22023';
    END IF;

    r := roomcast_lock_room(p_org, p_room);
    -- Under the lock, and never before the room's last event.
    new_ts := greatest(date_trunc('milliseconds', clock_timestamp()), r.updated_at);

    IF p_idem_key IS NOT NULL THEN
        SELECT e.seq, e.ts INTO old_seq, old_ts
          FROM events e
         WHERE e.org = p_org AND e.room = p_room AND e.idem_key = p_idem_key;
        IF FOUND THEN
            RETURN QUERY SELECT old_seq, true, roomcast_ts(old_ts);
            RETURN;
        END IF;
    END IF;

    IF r.status <> 'in_progress' THEN
        RAISE EXCEPTION 'room % is %', p_room, r.status USING ERRCODE = 'RC409';
    END IF;

    INSERT INTO events (org, room, seq, type, data, ts, idem_key)
    VALUES (p_org, p_room, r.head + 1, p_type, coalesce(p_data, 'null'::jsonb), new_ts, p_idem_key);

    UPDATE rooms
       SET head = r.head + 1,
           state = CASE WHEN p_state IS NULL THEN state ELSE roomcast_merge_patch(state, p_state) END,
           status = coalesce(p_status, status),
           closed_at = CASE WHEN coalesce(p_status, status) <> 'in_progress' THEN new_ts END,
           updated_at = new_ts
     WHERE org = p_org AND room = p_room;

    IF p_notify THEN
        PERFORM pg_notify('roomcast', json_build_array(p_org, p_room, r.head + 1)::text);
    END IF;

    RETURN QUERY SELECT r.head + 1, false, roomcast_ts(new_ts);
END
$$;

CREATE OR REPLACE FUNCTION roomcast_publish_many(
    p_org text, p_room text, p_types text[], p_datas jsonb[],
    p_idem_keys text[], p_states jsonb[], p_statuses text[]
) RETURNS TABLE (o_seq bigint, o_duplicate boolean, o_ts text)
LANGUAGE plpgsql AS $$
DECLARE
    n int := coalesce(array_length(p_types, 1), 0);
    r rooms%ROWTYPE;
    v_head bigint;
    v_status text;
    v_state jsonb;
    new_ts timestamptz;
    seqs bigint[] := '{}';
    dups boolean[] := '{}';
    tss timestamptz[] := '{}';
    keep int[] := '{}';
    old_seq bigint;
    old_ts timestamptz;
    j int;
BEGIN
    IF p_org IS NULL OR p_org = '' THEN
        RAISE EXCEPTION 'org must not be empty' USING ERRCODE = '22023';
    END IF;
    IF p_room IS NULL OR p_room !~ '^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$' THEN
        RAISE EXCEPTION 'invalid room id' USING ERRCODE = '22023';
    END IF;
    IF coalesce(array_length(p_datas, 1), 0) <> n
       OR coalesce(array_length(p_idem_keys, 1), 0) <> n
       OR coalesce(array_length(p_states, 1), 0) <> n
       OR coalesce(array_length(p_statuses, 1), 0) <> n THEN
        RAISE EXCEPTION 'arrays of different lengths' USING ERRCODE = '22023';
    END IF;
    FOR i IN 1..n LOOP
        IF p_types[i] IS NULL OR p_types[i] !~ '^[a-z][a-z0-9_.-]{0,63}$' THEN
            RAISE EXCEPTION 'invalid event type' USING ERRCODE = '22023';
        END IF;
        IF p_statuses[i] IS NOT NULL AND p_statuses[i] NOT IN ('in_progress', 'completed', 'failed') THEN
            RAISE EXCEPTION 'invalid status' USING ERRCODE = '22023';
        END IF;
        IF p_states[i] IS NOT NULL AND jsonb_typeof(p_states[i]) <> 'object' THEN
            RAISE EXCEPTION 'state must be a JSON object' USING ERRCODE = '22023';
        END IF;
    END LOOP;

    r := roomcast_lock_room(p_org, p_room);
    -- Under the lock, and never before the room's last event.
    new_ts := greatest(date_trunc('milliseconds', clock_timestamp()), r.updated_at);
    v_head := r.head;
    v_status := r.status;
    v_state := r.state;

    FOR i IN 1..n LOOP
        IF p_idem_keys[i] IS NOT NULL THEN
            j := array_position(p_idem_keys[1:i-1], p_idem_keys[i]);
            IF j IS NOT NULL THEN
                seqs[i] := seqs[j];
                dups[i] := true;
                tss[i] := tss[j];
                CONTINUE;
            END IF;
            SELECT e.seq, e.ts INTO old_seq, old_ts
              FROM events e
             WHERE e.org = p_org AND e.room = p_room AND e.idem_key = p_idem_keys[i];
            IF FOUND THEN
                seqs[i] := old_seq;
                dups[i] := true;
                tss[i] := old_ts;
                CONTINUE;
            END IF;
        END IF;
        IF v_status <> 'in_progress' THEN
            RAISE EXCEPTION 'room % is %', p_room, v_status USING ERRCODE = 'RC409';
        END IF;
        v_head := v_head + 1;
        seqs[i] := v_head;
        dups[i] := false;
        tss[i] := new_ts;
        keep := keep || i;
        IF p_states[i] IS NOT NULL THEN
            v_state := roomcast_merge_patch(v_state, p_states[i]);
        END IF;
        v_status := coalesce(p_statuses[i], v_status);
    END LOOP;

    IF v_head > r.head THEN
        INSERT INTO events (org, room, seq, type, data, ts, idem_key)
        SELECT p_org, p_room, seqs[k], p_types[k], coalesce(p_datas[k], 'null'::jsonb), new_ts, p_idem_keys[k]
          FROM unnest(keep) AS k;
        UPDATE rooms
           SET head = v_head, state = v_state, status = v_status,
               closed_at = CASE WHEN v_status <> 'in_progress' THEN new_ts END,
               updated_at = new_ts
         WHERE org = p_org AND room = p_room;
    END IF;

    RETURN QUERY SELECT seqs[i], dups[i], roomcast_ts(tss[i]) FROM generate_series(1, n) AS i;
END
$$;
