-- Idempotent migrations, run when schema_version is missing or older than the code's.
-- {schema} is substituted as a quoted identifier by resources/postgres.py.
CREATE SCHEMA IF NOT EXISTS {schema};

-- Upgrade from the unpartitioned tables (schema version 1): set them aside, fill the
-- partitioned tables from them at the end of this file, then drop them.
DO $$
BEGIN
    IF (SELECT relkind FROM pg_class WHERE oid = to_regclass('{schema}.attempts')) = 'r' THEN
        ALTER TABLE {schema}.attempts RENAME TO attempts_unpartitioned;
        ALTER TABLE {schema}.attempts_rejected RENAME TO attempts_rejected_unpartitioned;
    END IF;
END $$;

-- One partition per UTC day (add_day_partitions), so replacing a day is a TRUNCATE of its
-- partition: no dead rows. No index: every read is of whole days, found by partition pruning.
CREATE TABLE IF NOT EXISTS {schema}.attempts (
    user_id                 text        NOT NULL,
    oauth_consumer_key      text,
    lis_result_sourcedid    text,
    lis_outcome_service_url text,
    is_correct              boolean,
    attempt_type            text        NOT NULL,
    created_at              timestamp   NOT NULL,
    -- lineage: which Dagster run loaded the row, and when
    run_id                  text        DEFAULT current_setting('itresume.run_id', true),
    loaded_at               timestamptz NOT NULL DEFAULT now()
) PARTITION BY RANGE (created_at);

CREATE TABLE IF NOT EXISTS {schema}.attempts_rejected (
    partition_date date        NOT NULL,
    reason         text        NOT NULL,
    raw_record     text        NOT NULL,
    run_id         text        DEFAULT current_setting('itresume.run_id', true),
    rejected_at    timestamptz NOT NULL DEFAULT now()
) PARTITION BY RANGE (partition_date);

CREATE TABLE IF NOT EXISTS {schema}.daily_metrics (
    date                date    PRIMARY KEY,
    attempts            bigint  NOT NULL,
    successful_attempts bigint  NOT NULL,
    unique_users        bigint  NOT NULL,
    updated_at          timestamptz NOT NULL DEFAULT now()
);

-- The sha256 of the payload each day was last loaded from: an unchanged day is not reloaded.
CREATE TABLE IF NOT EXISTS {schema}.loaded_days (
    day       date        PRIMARY KEY,
    sha256    text        NOT NULL,
    run_id    text        DEFAULT current_setting('itresume.run_id', true),
    loaded_at timestamptz NOT NULL DEFAULT now()
);

-- Version 3: the rows each load left in its day, so the shrink guard needs no count(*).
ALTER TABLE {schema}.loaded_days ADD COLUMN IF NOT EXISTS row_count bigint;

-- attempts_YYYYMMDD and attempts_rejected_YYYYMMDD for one day, if missing. Created apart and
-- then attached, because ATTACH takes a lock on the parent that readers and loads do not wait
-- for (CREATE TABLE ... PARTITION OF would take ACCESS EXCLUSIVE).
CREATE OR REPLACE FUNCTION {schema}.add_day_partitions(day date) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    parent text;
    child  text;
BEGIN
    FOREACH parent IN ARRAY ARRAY['attempts', 'attempts_rejected'] LOOP
        child := parent || '_' || to_char(day, 'YYYYMMDD');
        IF to_regclass(format('{schema}.%I', child)) IS NULL THEN
            EXECUTE format('CREATE TABLE {schema}.%I (LIKE {schema}.%I INCLUDING DEFAULTS)',
                           child, parent);
            EXECUTE format('ALTER TABLE {schema}.%I ATTACH PARTITION {schema}.%I '
                           'FOR VALUES FROM (%L) TO (%L)', parent, child, day, day + 1);
        END IF;
    END LOOP;
END $$;

-- One row per applied version (resources/postgres.py SCHEMA_VERSION). First use reads it
-- instead of re-running this file, whose DDL would wait for every running load.
CREATE TABLE IF NOT EXISTS {schema}.schema_version (
    version    integer     PRIMARY KEY,
    applied_at timestamptz NOT NULL DEFAULT now()
);

DO $$
BEGIN
    IF to_regclass('{schema}.attempts_unpartitioned') IS NOT NULL THEN
        PERFORM {schema}.add_day_partitions(day)
        FROM (SELECT DISTINCT created_at::date AS day FROM {schema}.attempts_unpartitioned
              UNION SELECT partition_date FROM {schema}.attempts_rejected_unpartitioned) AS days;
        INSERT INTO {schema}.attempts SELECT * FROM {schema}.attempts_unpartitioned;
        INSERT INTO {schema}.attempts_rejected
            SELECT * FROM {schema}.attempts_rejected_unpartitioned;
        DROP TABLE {schema}.attempts_unpartitioned, {schema}.attempts_rejected_unpartitioned;
    END IF;
END $$;
