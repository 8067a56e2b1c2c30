-- roomcast schema v12: the cluster secret (issue 24).
--
-- Everything one roomcast instance tells the others (bus messages, presence
-- and ephemeral NOTIFYs) is sealed with a key derived from a secret the
-- instances share. A deployment may set it (ROOMCAST_CLUSTER_SECRET);
-- otherwise every instance reads this one, generated here once from
-- PostgreSQL's strong random source (gen_random_uuid, 2 x 122 bits).
--
-- Only the table's owner (roomcast's role) and superusers can read it: a
-- role that may LISTEN or NOTIFY, or publish on the broker, can neither read
-- nor forge what the instances say.

CREATE TABLE roomcast_cluster (
    one boolean PRIMARY KEY DEFAULT true CHECK (one),
    secret text NOT NULL
);
REVOKE ALL ON roomcast_cluster FROM PUBLIC;
INSERT INTO roomcast_cluster (secret)
    VALUES (replace(gen_random_uuid()::text || gen_random_uuid()::text, '-', ''));
