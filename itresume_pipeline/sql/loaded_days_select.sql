-- The sha256 of the payload each of the given days was last loaded from, and its rows.
SELECT day, sha256, row_count FROM {schema}.loaded_days WHERE day = ANY(%(days)s);
