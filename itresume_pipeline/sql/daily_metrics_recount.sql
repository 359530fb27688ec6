-- One day's recount from its partition next to its stored metrics: a row only if they differ.
WITH day_rows AS (
    SELECT user_id, is_correct
    FROM {schema}.attempts
    WHERE created_at >= %(day)s::date AND created_at < %(day)s::date + 1
), recount AS (
    SELECT (SELECT count(*) FROM day_rows) AS attempts,
           (SELECT count(*) FROM day_rows WHERE is_correct) AS successful_attempts,
           (SELECT count(*) FROM (SELECT DISTINCT user_id FROM day_rows) AS u) AS unique_users
)
SELECT r.attempts, r.successful_attempts, r.unique_users,
       m.attempts, m.successful_attempts, m.unique_users
FROM recount AS r
LEFT JOIN {schema}.daily_metrics AS m ON m.date = %(day)s::date
WHERE m.date IS NULL
   OR (m.attempts, m.successful_attempts, m.unique_users)
      IS DISTINCT FROM (r.attempts, r.successful_attempts, r.unique_users);
