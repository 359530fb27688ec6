-- Days of the requested [start, end) range whose stored metrics differ from a fresh recount of attempts.
WITH recount AS (
    SELECT day.date,
           count(a.created_at) AS attempts,
           count(a.created_at) FILTER (WHERE a.is_correct) AS successful_attempts,
           count(DISTINCT a.user_id) AS unique_users
    FROM (
        SELECT d::date AS date
        FROM generate_series(%(start)s::date, %(end)s::date - 1, interval '1 day') AS d
    ) AS day
    LEFT JOIN {schema}.attempts AS a
           ON a.created_at >= day.date AND a.created_at < day.date + 1
    GROUP BY day.date
)
SELECT r.date::text, r.attempts, r.successful_attempts, r.unique_users,
       m.attempts, m.successful_attempts, m.unique_users
FROM recount AS r
LEFT JOIN {schema}.daily_metrics AS m ON m.date = r.date
WHERE m.date IS NULL
   OR (m.attempts, m.successful_attempts, m.unique_users)
      IS DISTINCT FROM (r.attempts, r.successful_attempts, r.unique_users)
ORDER BY r.date;
