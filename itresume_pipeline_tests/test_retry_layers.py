"""One retrying layer per failure, each bounded: the clients retry HTTP transients, and no step
retry multiplies their attempts; waits between attempts stay inside the API deadline."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from itresume_pipeline.local.sheets_emulator import SheetsEmulator
from itresume_pipeline.local.simulator import ApiSimulator
from itresume_pipeline.partitions import day_bounds
from itresume_pipeline.resources.api import ApiError
from itresume_pipeline_tests.helpers import (
    DAY,
    failure_text,
    make_api,
    make_sheets,
    retries_of,
    run_pipeline,
    seed_day,
    step_failures,
    within,
)


def test_a_sheets_429_storm_is_retried_by_the_client_alone(
    resources: dict[str, Any], emulator: SheetsEmulator, warehouse
) -> None:
    """max_attempts requests, then a failure that Dagster does not re-execute: no step retry
    on top of the client's."""
    resources["sheets"] = make_sheets(emulator, max_attempts=3)
    seed_day(resources)
    emulator.reset_log()
    emulator.inject(429, times=1000, retry_after=0)
    result = run_pipeline(resources)
    assert not result.success
    assert "Google Sheets API answered 429" in failure_text(result)
    assert "after 3 attempts" in failure_text(result)
    assert [e.step_key for e in step_failures(result)] == ["sheets_report"]
    assert retries_of(result) == 0
    assert len(emulator.requests) == 3


def test_a_retried_answer_is_not_read_to_its_end(simulator: ApiSimulator, tmp_path: Path) -> None:
    """Two 503s whose 4 kB pages trickle for 200 s each: dropped, not read (only the final
    answer is quoted), so the third request comes at once."""
    api = make_api(simulator, error_body_timeout_s=5)
    simulator.inject("status", code=503, body="z" * 4000, trickle=0.05, times=2)
    download, error, elapsed = within(20, lambda: api.download(*day_bounds(DAY), tmp_path / "d.gz"))
    assert error is None, error
    assert download.attempts == 3
    assert elapsed < 2


def test_the_deadline_bounds_the_waits_between_attempts(
    simulator: ApiSimulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 429 asking for 30 s cannot stretch a download past its 1 s deadline."""
    monkeypatch.setenv("ITRESUME_API_DEADLINE_S", "1")
    api = make_api(simulator, backoff_max_s=30)
    simulator.inject("429", retry_after=30)
    _, error, elapsed = within(10, lambda: api.download(*day_bounds(DAY), tmp_path / "d.gz"))
    assert isinstance(error, ApiError) and not error.retryable, error
    assert "deadline of 1 s (ITRESUME_API_DEADLINE_S)" in str(error)
    assert len(simulator.requests) == 1
    assert elapsed < 3
