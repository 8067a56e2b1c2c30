-- roomcast schema v14: state travels with events (PROTOCOL.md, "Additions
-- (third round)", "State travels with events"). An event whose publish
-- applied a state merge patch or a status keeps them in its row, so every
-- read of the log (catch-up, poll, SSE) carries them as the live frame
-- does, and a client keeps a room's state by applying the patches in seq
-- order with no read per event. Plain events (no patch, no status) store
-- NULL in both: no cost to the fast path.

ALTER TABLE events ADD COLUMN state jsonb, ADD COLUMN status text;

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

    INSERT INTO events (org, room, seq, type, data, ts, idem_key, state, status)
    VALUES (p_org, p_room, r.head + 1, p_type, coalesce(p_data, 'null'::jsonb), new_ts, p_idem_key,
            p_state, p_status);

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
        INSERT INTO events (org, room, seq, type, data, ts, idem_key, state, status)
        SELECT p_org, p_room, seqs[k], p_types[k], coalesce(p_datas[k], 'null'::jsonb), new_ts, p_idem_keys[k],
               p_states[k], p_statuses[k]
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

DO $$
DECLARE
    s text := quote_ident(current_schema());
BEGIN
    -- CREATE OR REPLACE resets what V13 set: producers' entry point runs as
    -- roomcast's role, in this schema only.
    EXECUTE format('ALTER FUNCTION roomcast_publish_many(text, text, text[], jsonb[], text[], jsonb[], text[]) SECURITY DEFINER SET search_path = %s, pg_temp', s);
END
$$;
