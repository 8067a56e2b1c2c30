-- roomcast schema v5: presence (issue 13).
--
-- Each instance owns its connections and writes, per room, the members it
-- holds (a member is a token's `sub`, with the token's `info`) and how many
-- connections each has there. A room's members are the union over the
-- instances whose rows have not expired: live instances refresh
-- `expires_at` every 10 s, so the members of an instance that died (kill -9)
-- drop out within 30 s. Changes also travel as messages (NOTIFY on channel
-- `roomcast_presence`, or the bus), so instances following a room apply them
-- without reading; this table answers `GET /v1/rooms/{room}/presence` and
-- gives an instance that starts following a room its current members.

CREATE TABLE presence (
    org         text        NOT NULL,
    room        text        NOT NULL,
    instance    text        NOT NULL,
    sub         text        NOT NULL,
    info        jsonb       NOT NULL DEFAULT '{}'::jsonb,
    connections int         NOT NULL,
    -- The writing instance's change counter: a message older than what is
    -- known of (instance, sub) is ignored.
    ver         bigint      NOT NULL,
    expires_at  timestamptz NOT NULL,
    PRIMARY KEY (org, room, instance, sub)
);

CREATE INDEX presence_instance ON presence (instance);
CREATE INDEX presence_expiry ON presence (expires_at);
