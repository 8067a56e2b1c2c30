-- roomcast schema v11: captured tables never make their writers wait
-- (issue 23, item 6; docs/decisions.md, "Capture goes through an outbox").
--
-- `roomcast_capture` used to publish inside the writer's transaction: it
-- took the room's row lock and held it until the writer committed, so two
-- writers touching rows of two rooms in opposite orders deadlocked, and a
-- REST publish to the room waited for the writer's whole transaction. Now
-- the trigger only appends the event to `roomcast_outbox` (no lock on
-- anything another writer or a publish takes) and NOTIFYs
-- `roomcast_outbox` at commit. Each roomcast instance moves committed
-- outbox rows into their rooms' logs, one room per transaction, holding
-- only that room's lock, in outbox order (the order the writers appended
-- them: two writers of one application row are ordered by that row's
-- lock), deleting them in the same transaction: exactly once. A rolled
-- back write leaves no outbox row.

CREATE TABLE roomcast_outbox (
    id      bigserial   PRIMARY KEY,
    org     text        NOT NULL,
    room    text        NOT NULL,
    type    text        NOT NULL,
    data    jsonb       NOT NULL,
    state   jsonb,
    status  text,
    at      timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX roomcast_outbox_room ON roomcast_outbox (org, room, id);

CREATE OR REPLACE FUNCTION roomcast_capture() RETURNS trigger
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
    p_type     text;
    raw_status text;
    changed    jsonb := '[]'::jsonb;
    op         text := lower(TG_OP);
    data       jsonb;
    closed     boolean;
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
    IF p_status IS NOT NULL AND p_status NOT IN ('in_progress', 'completed', 'failed') THEN
        RAISE WARNING 'roomcast_capture on %: % is not a room status; nothing published', TG_TABLE_NAME, p_status;
        RETURN NULL;
    END IF;
    p_type := prefix || '.' || CASE TG_OP WHEN 'INSERT' THEN 'inserted'
                                          WHEN 'UPDATE' THEN 'updated'
                                          ELSE 'deleted' END;
    IF p_type !~ '^[a-z][a-z0-9_.-]{0,63}$' THEN
        RAISE WARNING 'roomcast_capture on %: % is not an event type; nothing published', TG_TABLE_NAME, p_type;
        RETURN NULL;
    END IF;
    data := jsonb_build_object('op', op, 'row', rec, 'changed', changed);
    IF roomcast_json_size(data) > 65536 THEN
        RAISE WARNING 'roomcast_capture on %: the event is % bytes serialized; the limit is 65536; nothing published',
            TG_TABLE_NAME, roomcast_json_size(data);
        RETURN NULL;
    END IF;
    -- A read, no lock: a room closed by a change still in the outbox is
    -- found closed when the change is moved (and this one dropped then).
    SELECT status <> 'in_progress' INTO closed FROM rooms WHERE org = p_org AND room = p_room;
    IF closed THEN
        RAISE WARNING 'roomcast_capture on %: room % is closed; nothing published', TG_TABLE_NAME, p_room;
        RETURN NULL;
    END IF;
    INSERT INTO roomcast_outbox (org, room, type, data, state, status)
    VALUES (p_org, p_room, p_type, data, CASE WHEN TG_OP = 'DELETE' THEN NULL ELSE rec END, p_status);
    PERFORM pg_notify('roomcast_outbox', '');
    RETURN NULL;
END
$$;

-- Moves one room's committed outbox rows into its log (in outbox order),
-- in the caller's transaction; answers how many were published, or -1 when
-- another instance is moving that room now. A row the room can no longer
-- take (it was closed meanwhile) is dropped with a WARNING.
CREATE FUNCTION roomcast_move_outbox(p_org text, p_room text) RETURNS int
LANGUAGE plpgsql AS $$
DECLARE
    rows roomcast_outbox[];
    o    roomcast_outbox;
    n    int := 0;
BEGIN
    IF NOT pg_try_advisory_xact_lock(1380144470, hashtext(p_org || '/' || p_room)) THEN
        RETURN -1;
    END IF;
    WITH d AS (DELETE FROM roomcast_outbox WHERE org = p_org AND room = p_room RETURNING *)
    SELECT array_agg(d ORDER BY d.id) INTO rows FROM d;
    IF rows IS NULL THEN
        RETURN 0;
    END IF;
    FOREACH o IN ARRAY rows LOOP
        BEGIN
            PERFORM roomcast_publish_ex(o.org, o.room, o.type, o.data, NULL, o.state, o.status, true);
            n := n + 1;
        EXCEPTION
            WHEN SQLSTATE 'RC409' THEN
                RAISE WARNING 'roomcast_capture: room % of org % is closed; a captured change was dropped', o.room, o.org;
            WHEN SQLSTATE '22023' THEN
                RAISE WARNING 'roomcast_capture: %; a captured change was dropped', SQLERRM;
        END;
    END LOOP;
    RETURN n;
END
$$;
