-- One day's rows (its partition): how many this run wrote, and how many have no user.
SELECT count(*) FILTER (WHERE run_id = %(run_id)s),
       count(*) FILTER (WHERE user_id IS NULL OR user_id = '')
FROM {schema}.attempts
WHERE created_at >= %(day)s::date AND created_at < %(day)s::date + 1;
