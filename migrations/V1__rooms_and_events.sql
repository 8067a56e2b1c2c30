-- roomcast schema v1: rooms with a per-room head, and the event log.
--
-- Sequence numbers are allocated under the room row's lock (SELECT ... FOR
-- UPDATE in roomcast_publish_ex), held until commit: a later seq can never
-- commit before an earlier one, so a reader that has seen seq N never finds a
-- newly committed event with a smaller seq (commit order is seq order).

CREATE TABLE rooms (
    org        text        NOT NULL,
    room       text        NOT NULL,
    head       bigint      NOT NULL DEFAULT 0,
    status     text        NOT NULL DEFAULT 'in_progress'
                           CHECK (status IN ('in_progress', 'completed', 'failed')),
    state      jsonb       NOT NULL DEFAULT '{}'::jsonb,
    created_at timestamptz NOT NULL DEFAULT date_trunc('milliseconds', clock_timestamp()),
    updated_at timestamptz NOT NULL DEFAULT date_trunc('milliseconds', clock_timestamp()),
    PRIMARY KEY (org, room)
);

CREATE INDEX rooms_org_activity ON rooms (org, updated_at DESC);

CREATE TABLE events (
    org      text        NOT NULL,
    room     text        NOT NULL,
    seq      bigint      NOT NULL,
    type     text        NOT NULL,
    data     jsonb       NOT NULL,
    ts       timestamptz NOT NULL,
    idem_key text,
    PRIMARY KEY (org, room, seq)
);

CREATE UNIQUE INDEX events_idem_key ON events (org, room, idem_key) WHERE idem_key IS NOT NULL;

-- RFC 3339 UTC with exactly three decimals, as the contract writes `ts`.
CREATE FUNCTION roomcast_ts(t timestamptz) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT to_char(t AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"')
$$;

-- JSON merge patch (RFC 7396).
CREATE FUNCTION roomcast_merge_patch(target jsonb, patch jsonb) RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    k text;
    v jsonb;
    result jsonb;
BEGIN
    IF patch IS NULL THEN
        RETURN target;
    END IF;
    IF jsonb_typeof(patch) <> 'object' THEN
        RETURN patch;
    END IF;
    IF target IS NULL OR jsonb_typeof(target) <> 'object' THEN
        result := '{}'::jsonb;
    ELSE
        result := target;
    END IF;
    FOR k, v IN SELECT * FROM jsonb_each(patch) LOOP
        IF jsonb_typeof(v) = 'null' THEN
            result := result - k;
        ELSE
            result := jsonb_set(result, ARRAY[k], roomcast_merge_patch(result -> k, v));
        END IF;
    END LOOP;
    RETURN result;
END
$$;

-- The one publish path, used by the server and by SQL producers alike.
-- Errors: 22023 invalid input, RC409 room closed (terminal status).
-- p_notify: send the (org, room, seq) hint on channel `roomcast`; the server
-- sets it only on the last event of a batch.
CREATE FUNCTION roomcast_publish_ex(
    p_org text, p_room text, p_type text, p_data jsonb,
    p_idem_key text, p_state jsonb, p_status text, p_notify boolean
) RETURNS TABLE (o_seq bigint, o_duplicate boolean, o_ts text)
LANGUAGE plpgsql AS $$
DECLARE
    r rooms%ROWTYPE;
    old_seq bigint;
    old_ts timestamptz;
    new_ts timestamptz := date_trunc('milliseconds', clock_timestamp());
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
    IF octet_length(coalesce(p_data, 'null'::jsonb)::text) > 65536 THEN
        RAISE EXCEPTION 'data larger than 64 KiB' USING ERRCODE = '22023';
    END IF;
    IF p_status IS NOT NULL AND p_status NOT IN ('in_progress', 'completed', 'failed') THEN
        RAISE EXCEPTION 'invalid status' USING ERRCODE = '22023';
    END IF;
    IF p_state IS NOT NULL AND jsonb_typeof(p_state) <> 'object' THEN
        RAISE EXCEPTION 'state must be a JSON object' USING ERRCODE = '22023';
    END IF;

    INSERT INTO rooms (org, room) VALUES (p_org, p_room) ON CONFLICT DO NOTHING;
    SELECT * INTO r FROM rooms WHERE org = p_org AND room = p_room FOR UPDATE;

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

-- Publishing from SQL, inside the producer's own transaction. Returns the seq.
CREATE FUNCTION roomcast_publish(
    org text, room text, type text, data jsonb,
    idem_key text DEFAULT NULL, state jsonb DEFAULT NULL, status text DEFAULT NULL
) RETURNS bigint
LANGUAGE sql AS $$
    SELECT o_seq FROM roomcast_publish_ex(org, room, type, data, idem_key, state, status, true)
$$;
