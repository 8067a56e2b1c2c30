-- roomcast schema v3: the edges of the one promise (issue 18).
--
-- 1. One size limit, measured one way. `data` is at most 64 KiB serialized
--    as compact JSON (no whitespace), which is how the server measures it at
--    the edge. `jsonb::text` adds a space after every `,` and `:`, so the old
--    check in PostgreSQL refused valid data (60,001 bytes of `[0,0,...]`
--    measured 90,000). `roomcast_json_size` gives the compact size of a
--    jsonb value: its text form less the separator spaces outside strings.
-- 2. `ts` never goes backwards within a room: taken under the room row's
--    lock (the SQL path took it before the lock), and never earlier than the
--    room's last event (a clock stepped back does not give a later seq an
--    earlier ts). Events of one commit share one millisecond, so `ts` is not
--    a cursor: `since_time` positions the first page, paging goes on by seq.
-- 3. The server's own batch path (`roomcast_publish_many`) no longer
--    re-measures `data`: the edge has, exactly; SQL producers' path
--    (`roomcast_publish`) measures with `roomcast_json_size`.

CREATE FUNCTION roomcast_json_size(v jsonb) RETURNS bigint
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    WITH t AS (SELECT coalesce(v, 'null'::jsonb)::text AS s),
         bare AS (SELECT s, regexp_replace(s, '"(\\.|[^"\\])*"', '', 'g') AS b FROM t)
    SELECT octet_length(s)::bigint
           - (length(b) - length(replace(replace(b, ', ', ','), ': ', ':')))
      FROM bare
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

    INSERT INTO rooms (org, room) VALUES (p_org, p_room) ON CONFLICT DO NOTHING;
    SELECT * INTO r FROM rooms WHERE org = p_org AND room = p_room FOR UPDATE;
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

    INSERT INTO rooms (org, room) VALUES (p_org, p_room) ON CONFLICT DO NOTHING;
    SELECT * INTO r FROM rooms WHERE org = p_org AND room = p_room FOR UPDATE;
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
           SET head = v_head, state = v_state, status = v_status, updated_at = new_ts
         WHERE org = p_org AND room = p_room;
    END IF;

    RETURN QUERY SELECT seqs[i], dups[i], roomcast_ts(tss[i]) FROM generate_series(1, n) AS i;
END
$$;
