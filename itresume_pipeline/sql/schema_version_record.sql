-- The version schema.sql has just brought the schema to.
INSERT INTO {schema}.schema_version (version) VALUES (%(version)s) ON CONFLICT DO NOTHING;
