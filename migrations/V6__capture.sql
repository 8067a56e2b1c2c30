-- roomcast schema v6: tables that publish themselves (issue 17).
--
--   CREATE TRIGGER calls_events AFTER INSERT OR UPDATE ON calls
--     FOR EACH ROW EXECUTE FUNCTION roomcast_capture('org_id', 'id', 'call', 'status',
--       '{"active": "in_progress", "ended": "completed", "failed": "failed"}');
--
-- Arguments: the column naming the org, the column naming the room, the
-- event type's prefix, optionally a column mapped to the room's status, and
-- optionally a JSON object mapping that column's values to roomcast statuses
-- (without it, values named `in_progress`, `completed` or `failed` are used
-- as they are, and other values set no status).
--
-- Each inserted, updated (or deleted) row publishes, inside the producer's
-- own transaction (a rolled back change publishes nothing), an event
-- `<prefix>.inserted` / `<prefix>.updated` / `<prefix>.deleted` into the
-- room named by the row, with data `{"op", "row", "changed"}` (`changed`:
-- the columns an update changed) and the row as the room's state (a merge
-- patch). An update that changes nothing publishes nothing. A row whose org
-- or room column is NULL or not a valid id, a closed room, or a row too large
-- for an event publish nothing and never fail the producer's statement (a
-- WARNING says why): the application's write always goes through.

CREATE FUNCTION roomcast_capture() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    org_col    text := TG_ARGV[0];
    room_col   text := TG_ARGV[1];
    prefix     text := coalesce(TG_ARGV[2], TG_TABLE_NAME);
    status_col text := TG_ARGV[3];
    status_map jsonb := CASE WHEN TG_NARGS > 4 THEN TG_ARGV[4]::jsonb END;
    rec        jsonb;
    old_rec    jsonb;
    p_org      text;
    p_room     text;
    p_status   text;
    raw_status text;
    changed    jsonb := '[]'::jsonb;
    op         text := lower(TG_OP);
    data       jsonb;
BEGIN
    IF TG_NARGS < 2 THEN
        RAISE EXCEPTION 'roomcast_capture(org_column, room_column [, type_prefix [, status_column [, status_map]]])';
    END IF;
    IF TG_OP = 'DELETE' THEN
        rec := to_jsonb(OLD);
    ELSE
        rec := to_jsonb(NEW);
    END IF;
    IF TG_OP = 'UPDATE' THEN
        old_rec := to_jsonb(OLD);
        SELECT coalesce(jsonb_agg(k ORDER BY k), '[]'::jsonb) INTO changed
          FROM jsonb_object_keys(rec) AS k
         WHERE rec -> k IS DISTINCT FROM old_rec -> k;
        IF jsonb_array_length(changed) = 0 THEN
            RETURN NULL;
        END IF;
    END IF;
    p_org := rec ->> org_col;
    p_room := rec ->> room_col;
    IF p_org IS NULL OR p_org = '' OR p_room IS NULL
       OR p_room !~ '^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$' THEN
        RAISE WARNING 'roomcast_capture on %: no valid org (%) or room (%) in the row; nothing published',
            TG_TABLE_NAME, org_col, room_col;
        RETURN NULL;
    END IF;
    IF status_col IS NOT NULL AND TG_OP <> 'DELETE' THEN
        raw_status := rec ->> status_col;
        IF status_map IS NOT NULL THEN
            p_status := status_map ->> raw_status;
        ELSIF raw_status IN ('in_progress', 'completed', 'failed') THEN
            p_status := raw_status;
        END IF;
        IF TG_OP = 'UPDATE' AND NOT changed ? status_col THEN
            p_status := NULL;
        END IF;
    END IF;
    data := jsonb_build_object('op', op, 'row', rec, 'changed', changed);
    BEGIN
        PERFORM roomcast_publish_ex(p_org, p_room,
                                    prefix || '.' || CASE TG_OP WHEN 'INSERT' THEN 'inserted'
                                                                WHEN 'UPDATE' THEN 'updated'
                                                                ELSE 'deleted' END,
                                    data,
                                    NULL, CASE WHEN TG_OP = 'DELETE' THEN NULL ELSE rec END,
                                    p_status, true);
    EXCEPTION
        WHEN SQLSTATE 'RC409' THEN
            RAISE WARNING 'roomcast_capture on %: room % is closed; nothing published', TG_TABLE_NAME, p_room;
        WHEN SQLSTATE '22023' THEN
            RAISE WARNING 'roomcast_capture on %: %; nothing published', TG_TABLE_NAME, SQLERRM;
    END;
    RETURN NULL;
END
$$;
