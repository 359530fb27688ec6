-- The payload a day was just loaded from (its sha256) and the rows it left, under its run.
INSERT INTO {schema}.loaded_days (day, sha256, row_count) VALUES (%(day)s, %(sha256)s, %(rows)s)
ON CONFLICT (day) DO UPDATE
   SET sha256 = excluded.sha256, row_count = excluded.row_count, run_id = excluded.run_id,
       loaded_at = now();
