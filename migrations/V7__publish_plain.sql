-- roomcast schema v7: a set-based publish for events that need no per-event
-- check (issue 16): no idempotency key, no state patch, no status. One
-- statement inserts the whole batch and one updates the room, with no
-- per-event loop (roomcast_publish_many walks each event to resolve keys,
-- merge patches and statuses in order). The server uses it for every
-- publish (or group-commit round) whose events are all plain.

CREATE FUNCTION roomcast_publish_plain(
    p_org text, p_room text, p_types text[], p_datas jsonb[]
) RETURNS TABLE (o_seq bigint, o_duplicate boolean, o_ts text)
LANGUAGE plpgsql AS $$
DECLARE
    n int := coalesce(array_length(p_types, 1), 0);
    r rooms%ROWTYPE;
    new_ts timestamptz;
    ts_text text;
BEGIN
    IF p_org IS NULL OR p_org = '' THEN
        RAISE EXCEPTION 'org must not be empty' USING ERRCODE = '22023';
    END IF;
    IF p_room IS NULL OR p_room !~ '^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$' THEN
        RAISE EXCEPTION 'invalid room id' USING ERRCODE = '22023';
    END IF;
    IF n = 0 OR coalesce(array_length(p_datas, 1), 0) <> n THEN
        RAISE EXCEPTION 'arrays of different lengths' USING ERRCODE = '22023';
    END IF;
    IF EXISTS (SELECT 1 FROM unnest(p_types) AS t WHERE t IS NULL OR t !~ '^[a-z][a-z0-9_.-]{0,63}$') THEN
        RAISE EXCEPTION 'invalid event type' USING ERRCODE = '22023';
    END IF;

    r := roomcast_lock_room(p_org, p_room);
    IF r.status <> 'in_progress' THEN
        RAISE EXCEPTION 'room % is %', p_room, r.status USING ERRCODE = 'RC409';
    END IF;
    -- Under the lock, and never before the room's last event.
    new_ts := greatest(date_trunc('milliseconds', clock_timestamp()), r.updated_at);
    ts_text := roomcast_ts(new_ts);

    INSERT INTO events (org, room, seq, type, data, ts)
    SELECT p_org, p_room, r.head + k, p_types[k], coalesce(p_datas[k], 'null'::jsonb), new_ts
      FROM generate_subscripts(p_types, 1) AS k;
    UPDATE rooms SET head = r.head + n, updated_at = new_ts
     WHERE org = p_org AND room = p_room;

    RETURN QUERY SELECT r.head + k, false, ts_text FROM generate_subscripts(p_types, 1) AS k;
END
$$;
