"""The API client against the simulator over real HTTP: retries, fail-fast, redaction."""

from __future__ import annotations

import gzip
import logging
import time
from datetime import datetime
from pathlib import Path

import orjson
import pytest
from dagster import DagsterEventType, DagsterInstance, materialize

from itresume_pipeline.assets.ingestion import raw_attempts
from itresume_pipeline.resources import build_resources
from itresume_pipeline.resources.api import ApiAuthError, ApiError
from itresume_pipeline.settings import SettingError
from itresume_pipeline_tests.conftest import TEST_CLIENT, TEST_CLIENT_KEY, make_api

DAY = datetime(2024, 10, 8)
NEXT_DAY = datetime(2024, 10, 9)


def _records(path: Path) -> list[dict]:
    return orjson.loads(gzip.decompress(path.read_bytes()))


def test_download_streams_the_window_to_a_gzip_file(api, simulator, tmp_path):
    dest = tmp_path / "day.json.gz"
    download = api.download(DAY, NEXT_DAY, dest)
    records = _records(dest)
    assert len(records) > 0
    assert all(DAY <= datetime.fromisoformat(r["created_at"]) < NEXT_DAY for r in records)
    assert download.attempts == 1
    assert download.bytes == len(gzip.decompress(dest.read_bytes()))
    assert TEST_CLIENT_KEY not in download.url and "client_key=%2A%2A%2A" in download.url
    assert simulator.requests[-1]["params"]["start"] == "2024-10-08 00:00:00.000000"


def test_two_5xx_then_success_returns_complete_data(api, simulator, tmp_path):
    expected = api.download(DAY, NEXT_DAY, tmp_path / "first.json.gz")
    simulator.inject("status", code=502)
    simulator.inject("status", code=503)
    download = api.download(DAY, NEXT_DAY, tmp_path / "second.json.gz")
    assert download.attempts == 3
    assert download.sha256 == expected.sha256
    assert _records(tmp_path / "second.json.gz") == _records(tmp_path / "first.json.gz")


def test_429_honours_retry_after(simulator, tmp_path, caplog):
    """The wait is the server's (fractional seconds too), not the 10 ms backoff."""
    api = make_api(simulator, backoff_max_s=2)
    simulator.inject("429", retry_after=0.3)
    began = time.monotonic()
    with caplog.at_level(logging.WARNING):
        download = api.download(DAY, NEXT_DAY, tmp_path / "d.json.gz")
    assert download.attempts == 2
    assert time.monotonic() - began >= 0.3
    assert "attempt 1/5 failed: GET /api/statistics answered 429; retrying in 0.30 s" in caplog.text


def test_401_fails_fast_and_never_shows_the_key(simulator, tmp_path):
    wrong = make_api(simulator, client_key="wrong-key-77aa")
    with pytest.raises(ApiAuthError) as caught:
        wrong.download(DAY, NEXT_DAY, tmp_path / "d.json.gz")
    message = str(caught.value)
    assert "401" in message and TEST_CLIENT in message
    assert "wrong-key-77aa" not in message and TEST_CLIENT_KEY not in message


def test_403_is_not_retried(api, simulator, tmp_path):
    simulator.inject("status", code=403, times=5)
    with pytest.raises(ApiAuthError):
        api.download(DAY, NEXT_DAY, tmp_path / "d.json.gz")
    assert len(simulator.requests) == 1


def test_other_4xx_is_not_retried(api, simulator, tmp_path):
    simulator.inject("status", code=400, times=5)
    with pytest.raises(ApiError) as caught:
        api.download(DAY, NEXT_DAY, tmp_path / "d.json.gz")
    assert not caught.value.retryable and caught.value.status == 400
    assert len(simulator.requests) == 1


def test_persistent_5xx_gives_up_after_max_attempts(api, simulator, tmp_path):
    simulator.inject("status", code=500, times=10)
    with pytest.raises(ApiError, match=r"gave up after 5 attempts"):
        api.download(DAY, NEXT_DAY, tmp_path / "d.json.gz")
    assert len(simulator.requests) == 5


def test_connection_errors_are_retried_and_redacted(api, simulator, tmp_path):
    simulator.inject("reset", times=10)
    with pytest.raises(ApiError) as caught:
        api.download(DAY, NEXT_DAY, tmp_path / "d.json.gz")
    assert "gave up after 5 attempts" in str(caught.value)
    assert TEST_CLIENT_KEY not in str(caught.value)


def test_read_timeout_is_retried(simulator, tmp_path):
    fast = make_api(simulator, read_timeout_s=0.3)
    simulator.inject("slow", seconds=1.0)
    download = fast.download(DAY, NEXT_DAY, tmp_path / "d.json.gz")
    assert download.attempts == 2


def test_truncated_body_is_retried_then_reported(api, simulator, tmp_path):
    simulator.inject("truncate", times=10)
    with pytest.raises(ApiError) as caught:
        api.download(DAY, NEXT_DAY, tmp_path / "d.json.gz")
    assert "broke off" in str(caught.value)
    assert TEST_CLIENT_KEY not in str(caught.value)


def test_invalid_payload_is_retried_via_validator(api, simulator, tmp_path):
    from itresume_pipeline.payload import count_records

    simulator.inject("garbage")
    download = api.download(DAY, NEXT_DAY, tmp_path / "d.json.gz", validate_stream=count_records)
    assert download.attempts == 2
    assert download.records == len(_records(tmp_path / "d.json.gz"))


def test_missing_credentials_name_the_variables(simulator, tmp_path):
    anonymous = make_api(simulator, client="", client_key="")
    with pytest.raises(SettingError, match="ITRESUME_CLIENT and ITRESUME_CLIENT_KEY"):
        anonymous.download(DAY, NEXT_DAY, tmp_path / "d.json.gz")


def test_unset_credentials_fail_the_run_naming_them_instead_of_preventing_it(
    simulator, itresume_home: Path, monkeypatch: pytest.MonkeyPatch
):
    """Dagster refuses to create a run whose `EnvVar` is unset, so no failed run would alert
    anyone: the location binds an unset secret empty, and the run fails naming the variables."""
    monkeypatch.delenv("ITRESUME_PROFILE")
    monkeypatch.setenv("ITRESUME_API_URL", simulator.url)
    result = materialize(
        [raw_attempts],
        resources=build_resources(),
        partition_key="2024-10-08",
        instance=DagsterInstance.ephemeral(),
        raise_on_error=False,
    )
    assert not result.success
    [failure] = [e for e in result.all_events if e.event_type == DagsterEventType.STEP_FAILURE]
    message = failure.step_failure_data.user_failure_data.description
    assert message.startswith("ITRESUME_CLIENT and ITRESUME_CLIENT_KEY are not set"), message
    assert simulator.requests == []
