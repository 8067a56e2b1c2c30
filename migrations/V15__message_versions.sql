-- roomcast schema v15: message versions (PROTOCOL.md, "Additions (third
-- round)", "Message versions"). An event may change an earlier event of its
-- room (`updates`, `appends`, `deletes`): it is an ordinary event with its
-- own seq (the live log stays a plain ordered log) that also names its
-- target. Each changed message's latest version is kept materialized in
-- `message_latest`, written under the room's lock in the publish's own
-- transaction, so a late joiner reads the room as it stands in one query
-- (`view=latest`) instead of replaying every change. A message never
-- changed has no row there: plain publishes cost nothing more.

ALTER TABLE events
    ADD COLUMN change text CHECK (change IN ('updates', 'appends', 'deletes')),
    ADD COLUMN target bigint,
    -- Set on a message's first change: view=latest reads the messages
    -- never changed from the log (this flag false) and the others from
    -- message_latest, with no anti-join whose plan depends on statistics.
    ADD COLUMN changed boolean;

CREATE TABLE message_latest (
    org     text        NOT NULL,
    room    text        NOT NULL,
    -- The message: its original seq, type and commit time.
    seq     bigint      NOT NULL,
    type    text        NOT NULL,
    ts      timestamptz NOT NULL,
    -- Its data as it stands (NULL once deleted).
    data    jsonb,
    -- The seq of the last change applied.
    version bigint      NOT NULL,
    deleted boolean     NOT NULL DEFAULT false,
    PRIMARY KEY (org, room, seq)
);

-- view=latest reads the changed messages of a room by version.
CREATE INDEX message_latest_version ON message_latest (org, room, version);

-- One change, applied under the room's lock by roomcast_publish_batch:
-- event p_seq (being inserted) changes event p_target of the same room.
CREATE FUNCTION roomcast_apply_change(
    p_org text, p_room text, p_seq bigint, p_change text, p_target bigint, p_data jsonb
) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    t events%ROWTYPE;
    m message_latest%ROWTYPE;
    changed boolean;
    cur jsonb;
BEGIN
    IF p_target IS NULL OR p_target < 1 OR p_target >= p_seq THEN
        RAISE EXCEPTION '% names seq %, which is not an earlier event of room %', p_change, p_target, p_room
            USING ERRCODE = 'RC410';
    END IF;
    SELECT * INTO t FROM events WHERE org = p_org AND room = p_room AND seq = p_target;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'room % has no event % (never published, or pruned by the retention)', p_room, p_target
            USING ERRCODE = 'RC410';
    END IF;
    IF t.change IS NOT NULL THEN
        RAISE EXCEPTION 'event % is itself a change (% %): change the message it targets', p_target, t.change, t.target
            USING ERRCODE = 'RC410';
    END IF;
    SELECT * INTO m FROM message_latest WHERE org = p_org AND room = p_room AND seq = p_target;
    changed := FOUND;
    IF changed AND m.deleted THEN
        RAISE EXCEPTION 'event % was deleted (by %)', p_target, m.version USING ERRCODE = 'RC410';
    END IF;
    cur := CASE WHEN changed THEN m.data ELSE t.data END;
    IF NOT changed THEN
        UPDATE events SET changed = true WHERE org = p_org AND room = p_room AND seq = p_target;
    END IF;
    IF p_change = 'appends' THEN
        IF jsonb_typeof(p_data -> 'text') IS DISTINCT FROM 'string' THEN
            RAISE EXCEPTION 'an appends event needs data.text, a string' USING ERRCODE = '22023';
        END IF;
        IF jsonb_typeof(cur -> 'text') IS DISTINCT FROM 'string' THEN
            RAISE EXCEPTION 'event %''s data.text is not a string: nothing to append to', p_target
                USING ERRCODE = 'RC410';
        END IF;
        cur := jsonb_set(cur, '{text}', to_jsonb((cur ->> 'text') || (p_data ->> 'text')));
    ELSIF p_change = 'updates' THEN
        cur := p_data;
    ELSIF p_change = 'deletes' THEN
        cur := NULL;
    ELSE
        RAISE EXCEPTION 'unknown change %', p_change USING ERRCODE = '22023';
    END IF;
    INSERT INTO message_latest (org, room, seq, type, ts, data, version, deleted)
    VALUES (p_org, p_room, p_target, t.type, t.ts, cur, p_seq, p_change = 'deletes')
    ON CONFLICT (org, room, seq) DO UPDATE
        SET data = EXCLUDED.data, version = EXCLUDED.version, deleted = EXCLUDED.deleted;
END
$$;

-- roomcast_publish_many with changes: each event is inserted in turn (a
-- change may target an earlier event of the same batch) and its change
-- applied. The server uses it for a batch holding a change; the others
-- keep roomcast_publish_many and the set-based paths.
CREATE FUNCTION roomcast_publish_batch(
    p_org text, p_room text, p_types text[], p_datas jsonb[],
    p_idem_keys text[], p_states jsonb[], p_statuses text[],
    p_changes text[], p_targets bigint[]
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
    old_seq bigint;
    old_ts timestamptz;
    j int;
    k int;
    e record;
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
       OR coalesce(array_length(p_statuses, 1), 0) <> n
       OR coalesce(array_length(p_changes, 1), 0) <> n
       OR coalesce(array_length(p_targets, 1), 0) <> n THEN
        RAISE EXCEPTION 'arrays of different lengths' USING ERRCODE = '22023';
    END IF;
    -- The arrays are walked once (a subscript of an array parameter walks
    -- it from its start: p_datas[i] for every i is quadratic).
    IF EXISTS (SELECT 1 FROM unnest(p_types, p_statuses, p_states, p_changes, p_datas) AS u(ty, st, sp, ch, d)
                WHERE ty IS NULL OR ty !~ '^[a-z][a-z0-9_.-]{0,63}$') THEN
        RAISE EXCEPTION 'invalid event type' USING ERRCODE = '22023';
    END IF;
    IF EXISTS (SELECT 1 FROM unnest(p_statuses) AS st WHERE st IS NOT NULL AND st NOT IN ('in_progress', 'completed', 'failed')) THEN
        RAISE EXCEPTION 'invalid status' USING ERRCODE = '22023';
    END IF;
    IF EXISTS (SELECT 1 FROM unnest(p_states) AS sp WHERE sp IS NOT NULL AND jsonb_typeof(sp) <> 'object') THEN
        RAISE EXCEPTION 'state must be a JSON object' USING ERRCODE = '22023';
    END IF;
    IF EXISTS (SELECT 1 FROM unnest(p_changes) AS ch WHERE ch IS NOT NULL AND ch NOT IN ('updates', 'appends', 'deletes')) THEN
        RAISE EXCEPTION 'invalid change' USING ERRCODE = '22023';
    END IF;
    IF EXISTS (SELECT 1 FROM unnest(p_datas) AS d WHERE roomcast_json_size(d) > 65536) THEN
        RAISE EXCEPTION 'data is over 65536 bytes serialized' USING ERRCODE = '22023';
    END IF;

    r := roomcast_lock_room(p_org, p_room);
    -- Under the lock, and never before the room's last event.
    new_ts := greatest(date_trunc('milliseconds', clock_timestamp()), r.updated_at);
    v_head := r.head;
    v_status := r.status;
    v_state := r.state;

    FOR e IN SELECT * FROM unnest(p_types, p_datas, p_idem_keys, p_states, p_statuses, p_changes, p_targets)
                 WITH ORDINALITY AS u(ty, data, idem_key, state, status, change, target, i)
    LOOP
        k := e.i;
        IF e.idem_key IS NOT NULL THEN
            j := array_position(p_idem_keys[1:k - 1], e.idem_key);
            IF j IS NOT NULL THEN
                seqs[k] := seqs[j];
                dups[k] := true;
                tss[k] := tss[j];
                CONTINUE;
            END IF;
            SELECT x.seq, x.ts INTO old_seq, old_ts
              FROM events x
             WHERE x.org = p_org AND x.room = p_room AND x.idem_key = e.idem_key;
            IF FOUND THEN
                seqs[k] := old_seq;
                dups[k] := true;
                tss[k] := old_ts;
                CONTINUE;
            END IF;
        END IF;
        IF v_status <> 'in_progress' THEN
            RAISE EXCEPTION 'room % is %', p_room, v_status USING ERRCODE = 'RC409';
        END IF;
        v_head := v_head + 1;
        seqs[k] := v_head;
        dups[k] := false;
        tss[k] := new_ts;
        INSERT INTO events (org, room, seq, type, data, ts, idem_key, state, status, change, target)
        VALUES (p_org, p_room, v_head, e.ty, coalesce(e.data, 'null'::jsonb), new_ts, e.idem_key,
                e.state, e.status, e.change, CASE WHEN e.change IS NOT NULL THEN e.target END);
        IF e.change IS NOT NULL THEN
            PERFORM roomcast_apply_change(p_org, p_room, v_head, e.change, e.target,
                                          coalesce(e.data, 'null'::jsonb));
        END IF;
        IF e.state IS NOT NULL THEN
            v_state := roomcast_merge_patch(v_state, e.state);
        END IF;
        v_status := coalesce(e.status, v_status);
    END LOOP;

    IF v_head > r.head THEN
        UPDATE rooms
           SET head = v_head, state = v_state, status = v_status,
               closed_at = CASE WHEN v_status <> 'in_progress' THEN new_ts END,
               updated_at = new_ts
         WHERE org = p_org AND room = p_room;
    END IF;

    RETURN QUERY SELECT seqs[i], dups[i], roomcast_ts(tss[i]) FROM generate_series(1, n) AS i;
END
$$;

-- SQL producers: roomcast_publish gains updates, appends, deletes (named
-- arguments: roomcast_publish('acme', 'm-1', 'transcript.segment',
-- '{"text": " more"}', appends => 7)). Calls with the first four to seven
-- arguments read as before.
DROP FUNCTION roomcast_publish(text, text, text, jsonb, text, jsonb, text);

CREATE FUNCTION roomcast_publish(
    org text, room text, type text, data jsonb,
    idem_key text DEFAULT NULL, state jsonb DEFAULT NULL, status text DEFAULT NULL,
    updates bigint DEFAULT NULL, appends bigint DEFAULT NULL, deletes bigint DEFAULT NULL
) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    v_change text;
    v_target bigint;
    v_seq bigint;
BEGIN
    IF (updates IS NOT NULL)::int + (appends IS NOT NULL)::int + (deletes IS NOT NULL)::int > 1 THEN
        RAISE EXCEPTION 'an event changes at most one earlier event: one of updates, appends, deletes'
            USING ERRCODE = '22023';
    END IF;
    v_change := CASE WHEN updates IS NOT NULL THEN 'updates' WHEN appends IS NOT NULL THEN 'appends'
                     WHEN deletes IS NOT NULL THEN 'deletes' END;
    v_target := coalesce(updates, appends, deletes);
    IF v_change IS NULL THEN
        SELECT o_seq INTO v_seq FROM roomcast_publish_ex(org, room, type, data, idem_key, state, status, true);
        RETURN v_seq;
    END IF;
    SELECT o_seq INTO v_seq
      FROM roomcast_publish_batch(org, room, ARRAY[type], ARRAY[data], ARRAY[idem_key], ARRAY[state],
                                  ARRAY[status], ARRAY[v_change], ARRAY[v_target]);
    PERFORM pg_notify('roomcast', json_build_array(org, room, v_seq)::text);
    RETURN v_seq;
END
$$;

DO $$
DECLARE
    s text := quote_ident(current_schema());
BEGIN
    EXECUTE format('ALTER FUNCTION roomcast_publish(text, text, text, jsonb, text, jsonb, text, bigint, bigint, bigint) SECURITY DEFINER SET search_path = %s, pg_temp', s);
    REVOKE EXECUTE ON FUNCTION
        roomcast_publish(text, text, text, jsonb, text, jsonb, text, bigint, bigint, bigint),
        roomcast_publish_batch(text, text, text[], jsonb[], text[], jsonb[], text[], text[], bigint[]),
        roomcast_apply_change(text, text, bigint, text, bigint, jsonb)
    FROM PUBLIC;
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'roomcast_producer') THEN
        GRANT EXECUTE ON FUNCTION
            roomcast_publish(text, text, text, jsonb, text, jsonb, text, bigint, bigint, bigint)
        TO roomcast_producer;
    END IF;
END
$$;
