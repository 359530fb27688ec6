"""The code location loads, and its public surface is what the README documents."""

from __future__ import annotations

from dagster import AssetKey, Definitions

from itresume_pipeline import defs


def test_definitions_are_loadable():
    Definitions.validate_loadable(defs)


def test_asset_keys_snapshot():
    graph = defs.resolve_asset_graph()
    keys = sorted(key.to_user_string() for key in graph.get_all_asset_keys())
    assert keys == ["daily_metrics", "postgres_attempts", "raw_attempts", "sheets_report"]


def test_asset_checks_snapshot():
    graph = defs.resolve_asset_graph()
    checks = sorted(
        f"{key.asset_key.to_user_string()}:{key.name}" for key in graph.asset_check_keys
    )
    assert checks == [
        "daily_metrics:metrics_match_recount",
        "postgres_attempts:created_at_inside_partition",
        "postgres_attempts:reject_rate_below_threshold",
        "postgres_attempts:user_id_not_null",
        "sheets_report:sheet_matches_daily_metrics",
    ]


def test_lineage():
    graph = defs.resolve_asset_graph()
    assert graph.get(AssetKey("postgres_attempts")).parent_keys == {AssetKey("raw_attempts")}
    assert graph.get(AssetKey("daily_metrics")).parent_keys == {AssetKey("postgres_attempts")}
    assert graph.get(AssetKey("sheets_report")).parent_keys == {AssetKey("daily_metrics")}


def test_jobs_and_sensors_snapshot():
    repository = defs.get_repository_def()
    assert sorted(
        job.name for job in repository.get_all_jobs() if not job.name.startswith("__")
    ) == ["itresume_daily"]
    sensors = {sensor.name: sensor for sensor in repository.sensor_defs}
    assert sorted(sensors) == ["alert_outbox_flush", "run_failure_alert"]
    assert all(s.default_status.value == "RUNNING" for s in sensors.values())
    assert sorted(defs.resources) == ["itresume_api", "mail", "sheets", "warehouse"]


def test_partitions_are_utc_days_from_the_configured_start():
    partitions = defs.resolve_assets_def("raw_attempts").partitions_def
    assert partitions.timezone == "UTC"
    assert partitions.get_first_partition_key() == "2023-04-01"
