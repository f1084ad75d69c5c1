-- 20,000,000 recorded requests for 1,000,000 users, in SQL, on a freshly migrated database:
-- user 'heavy' has 5,000,000 of them; users u000001 … u999999 share the other 15,000,000 (15 each).
-- Every row is the same small valid input (n = 7, all clouds safe, max_jump 2, 3 jumps);
-- created_at is spread evenly over the last 400 days, so a 365-day retention removes ~8.75 %.
-- Indexes are dropped for the load and rebuilt after it (minutes instead of hours).
-- Run: psql -v ON_ERROR_STOP=1 -d <database> -f scripts/scale/generate.sql (scripts/scale/README.md says how)
\timing on
SET maintenance_work_mem = '2GB';
SET synchronous_commit = off;
ALTER TABLE jump_requests DROP CONSTRAINT jump_requests_pkey;
DROP INDEX ix_jump_requests_created_at_id;
DROP INDEX ix_jump_requests_user_created_at_id;
TRUNCATE jump_requests, user_stats;

INSERT INTO jump_requests (id, user_name, n, max_jump, clouds, jumps, created_at)
SELECT gen_random_uuid(), 'heavy', 7, 2, '\x00'::bytea, 3,
       now() - (i % 400) * interval '1 day' - (i % 86400) * interval '1 second'
FROM generate_series(1, 5000000) AS i;

INSERT INTO jump_requests (id, user_name, n, max_jump, clouds, jumps, created_at)
SELECT gen_random_uuid(), 'u' || lpad((1 + i % 999999)::text, 6, '0'), 7, 2, '\x00'::bytea, 3,
       now() - (i % 400) * interval '1 day' - (i % 86399) * interval '1 second'
FROM generate_series(1, 15000000) AS i;

ALTER TABLE jump_requests ADD CONSTRAINT jump_requests_pkey PRIMARY KEY (id);
CREATE INDEX ix_jump_requests_created_at_id ON jump_requests (created_at DESC, id DESC);
CREATE INDEX ix_jump_requests_user_created_at_id ON jump_requests (user_name, created_at DESC, id DESC);

INSERT INTO user_stats (user_name, requests, last_request_at)
SELECT user_name, count(*), max(created_at) FROM jump_requests GROUP BY user_name;

VACUUM ANALYZE jump_requests;
VACUUM ANALYZE user_stats;
SELECT count(*) AS requests, (SELECT count(*) FROM user_stats) AS users FROM jump_requests;
