-- One row per day of the requested [start, end) range, empty days included, recomputed.
-- The range predicate on created_at uses attempts_created_at_idx, so the cost follows the days
-- asked for, not the size of the table.
INSERT INTO {schema}.daily_metrics AS m (date, attempts, successful_attempts, unique_users)
SELECT day.date,
       count(a.created_at),
       count(a.created_at) FILTER (WHERE a.is_correct),
       count(DISTINCT a.user_id)
FROM (
    SELECT d::date AS date
    FROM generate_series(%(start)s::date, %(end)s::date - 1, interval '1 day') AS d
) AS day
LEFT JOIN {schema}.attempts AS a
       ON a.created_at >= day.date AND a.created_at < day.date + 1
GROUP BY day.date
ON CONFLICT (date) DO UPDATE
   SET attempts            = excluded.attempts,
       successful_attempts = excluded.successful_attempts,
       unique_users        = excluded.unique_users,
       updated_at          = now()
RETURNING m.date, m.attempts, m.successful_attempts, m.unique_users;
