-- The payload a day was just loaded from (its sha256), under the run that loaded it.
INSERT INTO {schema}.loaded_days (day, sha256) VALUES (%(day)s, %(sha256)s)
ON CONFLICT (day) DO UPDATE
   SET sha256 = excluded.sha256, run_id = excluded.run_id, loaded_at = now();
