-- Idempotent migrations, run when schema_version is missing or older than the code's.
-- {schema} is substituted as a quoted identifier by resources/postgres.py.
CREATE SCHEMA IF NOT EXISTS {schema};

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
);
CREATE INDEX IF NOT EXISTS attempts_created_at_idx ON {schema}.attempts (created_at);

CREATE TABLE IF NOT EXISTS {schema}.attempts_rejected (
    partition_date date        NOT NULL,
    reason         text        NOT NULL,
    raw_record     text        NOT NULL,
    run_id         text        DEFAULT current_setting('itresume.run_id', true),
    rejected_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS attempts_rejected_partition_date_idx
    ON {schema}.attempts_rejected (partition_date);

CREATE TABLE IF NOT EXISTS {schema}.daily_metrics (
    date                date    PRIMARY KEY,
    attempts            bigint  NOT NULL,
    successful_attempts bigint  NOT NULL,
    unique_users        bigint  NOT NULL,
    updated_at          timestamptz NOT NULL DEFAULT now()
);

-- One row per applied version (resources/postgres.py SCHEMA_VERSION). First use reads it
-- instead of re-running this file, whose CREATE INDEX would wait for every running load.
CREATE TABLE IF NOT EXISTS {schema}.schema_version (
    version    integer     PRIMARY KEY,
    applied_at timestamptz NOT NULL DEFAULT now()
);
