-- roomcast schema v8: presence as a table every view converges to (issue 23).
--
-- Each instance says it is alive in `presence_instances` (every 5 s) and
-- stores there the change counter (`ver`) of its last committed write of
-- `presence`, in that write's own transaction. A reader takes the live
-- instances (heartbeat younger than 15 s) with their `ver` and their rows
-- of the rooms it follows in one statement: an announcement it received
-- that is not newer than that `ver` is already in what it read, and a
-- member it shows whose instance is not live, or whose row is gone, is no
-- longer a member. The rows themselves no longer expire (every instance
-- used to rewrite all of its rows every 5 s): a row counts while its
-- instance is live, and the rows of an instance dead for a minute are
-- deleted by any live one.

CREATE TABLE presence_instances (
    instance text        PRIMARY KEY,
    ver      bigint      NOT NULL,
    alive_at timestamptz NOT NULL
);

-- Members are connections of running processes: nothing of them survives
-- an upgrade (each instance writes its members again).
TRUNCATE presence;
DROP INDEX presence_expiry;
ALTER TABLE presence DROP COLUMN expires_at;
