-- One day's metrics, recomputed from its partition (pruned by the created_at range) and
-- upserted; an aggregate without GROUP BY gives an empty day a row of zeros.
-- (metrics_match_recount checks the result with the other formulation, daily_metrics_recount.sql.)
INSERT INTO {schema}.daily_metrics AS m (date, attempts, successful_attempts, unique_users)
SELECT %(day)s::date,
       count(*),
       count(*) FILTER (WHERE a.is_correct),
       count(DISTINCT a.user_id)
FROM {schema}.attempts AS a
WHERE a.created_at >= %(day)s::date AND a.created_at < %(day)s::date + 1
ON CONFLICT (date) DO UPDATE
   SET attempts            = excluded.attempts,
       successful_attempts = excluded.successful_attempts,
       unique_users        = excluded.unique_users,
       updated_at          = now()
RETURNING m.date, m.attempts, m.successful_attempts, m.unique_users;
