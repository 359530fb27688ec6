-- One row per day of the requested [start, end) range, empty days included, recomputed.
-- The days' rows are aggregated first, by one range predicate on created_at that uses
-- attempts_created_at_idx, so the cost follows the days asked for, not the size of the table;
-- then the days of the range are joined on, so that an empty day gets a row of zeros.
-- (metrics_match_recount checks the result with the other formulation, daily_metrics_recount.sql.)
WITH counted AS (
    SELECT a.created_at::date AS date,
           count(*) AS attempts,
           count(*) FILTER (WHERE a.is_correct) AS successful_attempts,
           count(DISTINCT a.user_id) AS unique_users
    FROM {schema}.attempts AS a
    WHERE a.created_at >= %(start)s::date AND a.created_at < %(end)s::date
    GROUP BY 1
)
INSERT INTO {schema}.daily_metrics AS m (date, attempts, successful_attempts, unique_users)
SELECT day.date,
       coalesce(c.attempts, 0),
       coalesce(c.successful_attempts, 0),
       coalesce(c.unique_users, 0)
FROM (
    SELECT d::date AS date
    FROM generate_series(%(start)s::date, %(end)s::date - 1, interval '1 day') AS d
) AS day
LEFT JOIN counted AS c ON c.date = day.date
ON CONFLICT (date) DO UPDATE
   SET attempts            = excluded.attempts,
       successful_attempts = excluded.successful_attempts,
       unique_users        = excluded.unique_users,
       updated_at          = now()
RETURNING m.date, m.attempts, m.successful_attempts, m.unique_users;
