"""A valid but much smaller payload (an empty one above all) never silently replaces a loaded day,
and the payload the warehouse was built from stays in the landing zone for a replay."""

from __future__ import annotations

import hashlib
import shutil
from datetime import date
from pathlib import Path

import pytest
from dagster import DagsterEventType, DagsterInstance, materialize

from itresume_pipeline.assets.ingestion import ALLOW_SHRINK_TAG, postgres_attempts, raw_attempts
from itresume_pipeline.assets.metrics import daily_metrics
from itresume_pipeline.jobs import range_tags
from itresume_pipeline.landing import open_payload
from itresume_pipeline.local.simulator import generate_day
from itresume_pipeline_tests.helpers import (
    DAY,
    TEST_ATTEMPTS_PER_DAY,
    db_state,
    metadata,
    retries_of,
)

ASSETS = [raw_attempts, postgres_attempts, daily_metrics]
PARTITION = DAY.isoformat()
FORCE_CONFIG = {"ops": {"postgres_attempts": {"config": {"allow_shrink": True}}}}


def run(
    api,
    warehouse,
    landing,
    *,
    assets=ASSETS,
    partition=PARTITION,
    tags=None,
    config=None,
):
    return materialize(
        assets,
        resources={"itresume_api": api, "warehouse": warehouse, "landing": landing},
        partition_key=partition,
        tags=tags,
        run_config=config,
        instance=DagsterInstance.ephemeral(),
        raise_on_error=False,
    )


def failure_of(result, step: str) -> str:
    [failure] = [
        e
        for e in result.all_events
        if e.event_type == DagsterEventType.STEP_FAILURE and e.step_key == step
    ]
    return failure.step_failure_data.user_failure_data.description


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_an_empty_payload_does_not_wipe_a_loaded_day(
    api, warehouse, simulator, landing_zone
) -> None:
    records = generate_day(DAY, seed=simulator.seed, attempts_per_day=TEST_ATTEMPTS_PER_DAY)
    bad = {"lti_user_id": "nope", "attempt_type": "run", "created_at": "2024-10-08 10:00:00"}
    simulator.set_day_payload(DAY, [*records, bad])
    assert run(api, warehouse, landing_zone).success
    before = db_state(warehouse)
    assert (
        len(before["attempts"]) == TEST_ATTEMPTS_PER_DAY and len(before["attempts_rejected"]) == 1
    )
    good_payload = digest(landing_zone.payload_path(DAY))
    assert digest(landing_zone.loaded_path(DAY)) == good_payload

    simulator.set_day_payload(DAY, [])  # a valid answer: the API lost the day
    result = run(api, warehouse, landing_zone)
    assert not result.success
    message = failure_of(result, "postgres_attempts")
    assert f"{DAY}: {TEST_ATTEMPTS_PER_DAY} rows loaded now, the new payload would load 0" in (
        message
    )
    assert '"allow_shrink": true' in message and f"{ALLOW_SHRINK_TAG}=true" in message
    assert retries_of(result) == 0  # no retry can make the payload bigger
    assert db_state(warehouse) == before  # the rejects of the day too
    with open_payload(landing_zone.payload_path(DAY)) as latest:
        assert latest.read() == b"[]"  # the download itself is kept: it is what the API said
    assert digest(landing_zone.loaded_path(DAY)) == good_payload  # the replay copy is untouched

    shutil.copyfile(
        landing_zone.loaded_path(DAY), landing_zone.payload_path(DAY)
    )  # the documented replay
    replay = run(api, warehouse, landing_zone, assets=[postgres_attempts, daily_metrics])
    assert replay.success
    assert db_state(warehouse) == before


@pytest.mark.parametrize("force", ["config", "tag"])
def test_a_shrink_can_be_forced_by_run_config_or_run_tag(
    api, warehouse, simulator, landing_zone, force
) -> None:
    assert run(api, warehouse, landing_zone).success
    simulator.set_day_payload(DAY, [])
    assert not run(api, warehouse, landing_zone).success
    forced = (
        run(api, warehouse, landing_zone, config=FORCE_CONFIG)
        if force == "config"
        else run(api, warehouse, landing_zone, tags={ALLOW_SHRINK_TAG: "True"})
    )
    assert forced.success
    assert db_state(warehouse) == {
        "attempts": [],
        "attempts_rejected": [],
        "daily_metrics": [(DAY, 0, 0, 0)],
    }
    assert digest(landing_zone.loaded_path(DAY)) == digest(
        landing_zone.payload_path(DAY)
    )  # now loaded
    meta = metadata(forced, "postgres_attempts")
    assert (meta["replaced"], meta["loaded"]) == (TEST_ATTEMPTS_PER_DAY, 0)


def test_in_a_range_each_day_is_judged_alone_and_one_shrink_refuses_the_whole_run(
    api, warehouse, simulator, landing_zone
) -> None:
    days = [date(2024, 10, d) for d in (6, 7, 8)]
    tags = range_tags(days[0].isoformat(), days[-1].isoformat())
    assert run(api, warehouse, landing_zone, partition=None, tags=tags).success
    before = db_state(warehouse)
    n = TEST_ATTEMPTS_PER_DAY
    full = {d: generate_day(d, seed=simulator.seed, attempts_per_day=n) for d in days}
    simulator.set_day_payload(days[0], full[days[0]][: n // 2])  # exactly half goes: allowed
    simulator.set_day_payload(days[1], full[days[1]][: n // 2 - 1])  # more than half: refused
    simulator.set_day_payload(days[2], generate_day(days[2], seed=99, attempts_per_day=n * 2))

    result = run(api, warehouse, landing_zone, partition=None, tags=tags)
    assert not result.success
    message = failure_of(result, "postgres_attempts")
    assert f"{days[1]}: {n} rows loaded now, the new payload would load {n // 2 - 1}" in message
    assert str(days[0]) not in message and str(days[2]) not in message
    assert db_state(warehouse) == before  # not even the growing day was replaced

    forced = run(
        api, warehouse, landing_zone, partition=None, tags={**tags, ALLOW_SHRINK_TAG: "true"}
    )
    assert forced.success
    assert [row[1] for row in db_state(warehouse)["daily_metrics"]] == [n // 2, n // 2 - 1, n * 2]


def test_a_malformed_force_tag_fails_naming_it(api, warehouse, landing_zone) -> None:
    result = run(api, warehouse, landing_zone, tags={ALLOW_SHRINK_TAG: "maybe"})
    assert not result.success
    assert f"run tag {ALLOW_SHRINK_TAG}='maybe'" in failure_of(result, "postgres_attempts")
    assert retries_of(result) == 0
