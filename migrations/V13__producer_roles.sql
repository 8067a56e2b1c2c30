-- roomcast schema v13: least-privilege producers (issue 24, item 9).
--
-- A producer role no longer needs any privilege on roomcast's tables: the
-- functions producers call run as their owner (SECURITY DEFINER, with
-- search_path pinned to this schema), and a producer role is given only
-- EXECUTE on them, through the group role `roomcast_producer`:
--
--   CREATE ROLE pipeline LOGIN;            -- or any existing role
--   GRANT roomcast_producer TO pipeline;   -- roomcast_publish, roomcast_publish_many, roomcast_capture
--   INSERT INTO roomcast_producer_orgs VALUES ('pipeline', 'acme');  -- optional: only org acme
--
-- `roomcast_producer` is created here when roomcast's role may create roles
-- (else the GRANTs are left to the operator: see the README). The other
-- functions (the server's own publish paths, the outbox mover) lose
-- PUBLIC's EXECUTE. A login role listed in `roomcast_producer_orgs`
-- publishes only into the orgs listed for it (an error from the publish
-- functions; a WARNING and nothing published from a captured table); a
-- role not listed is not limited. Callers are known by `session_user` (the
-- login role), since inside these functions `current_user` is the owner.
--
-- `roomcast_capture` takes a sixth argument: a JSON array of the columns to
-- publish (the event's `row`, `changed` and the room's state); the others,
-- sensitive ones included, never leave the table. An update that changes
-- only columns not listed publishes nothing.

CREATE TABLE roomcast_producer_orgs (
    role name NOT NULL,
    org  text NOT NULL,
    PRIMARY KEY (role, org)
);
REVOKE ALL ON roomcast_producer_orgs FROM PUBLIC;

CREATE FUNCTION roomcast_may_publish(p_org text) RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT NOT EXISTS (SELECT 1 FROM roomcast_producer_orgs WHERE role = session_user)
        OR EXISTS (SELECT 1 FROM roomcast_producer_orgs WHERE role = session_user AND org = p_org)
$$;

CREATE FUNCTION roomcast_columns(rec jsonb, columns jsonb) RETURNS jsonb
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN columns IS NULL THEN rec
                ELSE coalesce((SELECT jsonb_object_agg(k, rec -> k)
                                 FROM jsonb_array_elements_text(columns) AS k
                                WHERE rec ? k), '{}'::jsonb)
           END
$$;

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

CREATE OR REPLACE FUNCTION roomcast_capture() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER AS $$
DECLARE
    org_col    text := TG_ARGV[0];
    room_col   text := TG_ARGV[1];
    prefix     text := coalesce(TG_ARGV[2], TG_TABLE_NAME);
    status_col text := TG_ARGV[3];
    status_map jsonb := CASE WHEN TG_NARGS > 4 AND TG_ARGV[4] <> '' THEN TG_ARGV[4]::jsonb END;
    columns    jsonb := CASE WHEN TG_NARGS > 5 THEN TG_ARGV[5]::jsonb END;
    full_rec   jsonb;
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
        RAISE EXCEPTION 'roomcast_capture(org_column, room_column [, type_prefix [, status_column [, status_map [, columns]]]])';
    END IF;
    IF columns IS NOT NULL AND jsonb_typeof(columns) <> 'array' THEN
        RAISE EXCEPTION 'roomcast_capture: columns must be a JSON array of column names, not %', columns;
    END IF;
    IF TG_OP = 'DELETE' THEN
        full_rec := to_jsonb(OLD);
    ELSE
        full_rec := to_jsonb(NEW);
    END IF;
    -- Only the columns named are published (all of them without a list).
    rec := roomcast_columns(full_rec, columns);
    IF TG_OP = 'UPDATE' THEN
        old_rec := roomcast_columns(to_jsonb(OLD), columns);
        SELECT coalesce(jsonb_agg(k ORDER BY k), '[]'::jsonb) INTO changed
          FROM jsonb_object_keys(rec) AS k
         WHERE rec -> k IS DISTINCT FROM old_rec -> k;
        IF jsonb_array_length(changed) = 0 THEN
            RETURN NULL;
        END IF;
    END IF;
    p_org := full_rec ->> org_col;
    p_room := full_rec ->> room_col;
    IF p_org IS NULL OR p_org = '' OR p_room IS NULL
       OR p_room !~ '^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$' THEN
        RAISE WARNING 'roomcast_capture on %: no valid org (%) or room (%) in the row; nothing published',
            TG_TABLE_NAME, org_col, room_col;
        RETURN NULL;
    END IF;
    IF NOT roomcast_may_publish(p_org) THEN
        RAISE WARNING 'roomcast_capture on %: role % may not publish into org %; nothing published',
            TG_TABLE_NAME, session_user, p_org;
        RETURN NULL;
    END IF;
    IF status_col IS NOT NULL AND TG_OP <> 'DELETE' THEN
        raw_status := full_rec ->> status_col;
        IF status_map IS NOT NULL THEN
            p_status := status_map ->> raw_status;
        ELSIF raw_status IN ('in_progress', 'completed', 'failed') THEN
            p_status := raw_status;
        END IF;
        IF TG_OP = 'UPDATE' AND (to_jsonb(NEW) -> status_col) IS NOT DISTINCT FROM (to_jsonb(OLD) -> status_col) THEN
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

DO $$
DECLARE
    s text := quote_ident(current_schema());
BEGIN
    -- What producers call runs as roomcast's role, in this schema only.
    EXECUTE format('ALTER FUNCTION roomcast_publish(text, text, text, jsonb, text, jsonb, text) SECURITY DEFINER SET search_path = %s, pg_temp', s);
    EXECUTE format('ALTER FUNCTION roomcast_publish_many(text, text, text[], jsonb[], text[], jsonb[], text[]) SECURITY DEFINER SET search_path = %s, pg_temp', s);
    EXECUTE format('ALTER FUNCTION roomcast_capture() SET search_path = %s, pg_temp', s);
    -- The server's own paths are not for anyone else.
    REVOKE EXECUTE ON FUNCTION
        roomcast_publish(text, text, text, jsonb, text, jsonb, text),
        roomcast_publish_many(text, text, text[], jsonb[], text[], jsonb[], text[]),
        roomcast_capture(),
        roomcast_publish_ex(text, text, text, jsonb, text, jsonb, text, boolean),
        roomcast_publish_plain(text, text, text[], jsonb[]),
        roomcast_move_outbox(text, text),
        roomcast_lock_room(text, text)
    FROM PUBLIC;
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'roomcast_producer') THEN
        IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = current_user AND (rolsuper OR rolcreaterole)) THEN
            RAISE NOTICE 'roomcast: the role roomcast_producer was not created (this role may not create roles); grant EXECUTE on roomcast_publish, roomcast_publish_many and roomcast_capture to producer roles instead';
            RETURN;
        END IF;
        BEGIN
            CREATE ROLE roomcast_producer NOLOGIN;
        EXCEPTION WHEN duplicate_object OR unique_violation THEN
            NULL; -- another database of this cluster made it meanwhile
        END;
    END IF;
    GRANT EXECUTE ON FUNCTION
        roomcast_publish(text, text, text, jsonb, text, jsonb, text),
        roomcast_publish_many(text, text, text[], jsonb[], text[], jsonb[], text[]),
        roomcast_capture()
    TO roomcast_producer;
END
$$;
