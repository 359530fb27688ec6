-- Stored metrics of the inclusive [start, end] date range, ascending.
SELECT date, attempts, successful_attempts, unique_users
FROM {schema}.daily_metrics
WHERE date BETWEEN %(start)s AND %(end)s
ORDER BY date;
