-- The sha256 of the payload each of the given days was last loaded from.
SELECT day, sha256 FROM {schema}.loaded_days WHERE day = ANY(%(days)s);
