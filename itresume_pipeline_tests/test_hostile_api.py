"""The API client against an API that misbehaves on purpose, over real HTTP.

Bodies that trickle in a byte at a time (data and error pages), error texts that echo the key,
a 200 that carries an error object, redirects to another host, a URL without a scheme, a run
stopped by SIGTERM and a disk that refuses the download. Calls that the old client would never
have finished run on a helper thread with a time limit, so such a regression fails instead of
hanging the suite.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from datetime import date, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from dagster import DagsterInstance, DagsterRunStatus

from itresume_pipeline import landing
from itresume_pipeline.landing import LandingZone
from itresume_pipeline.local.simulator import ApiSimulator
from itresume_pipeline.payload import count_records
from itresume_pipeline.resources import build_resources
from itresume_pipeline.resources.api import ApiCancelled, ApiError, ItResumeApiResource
from itresume_pipeline.settings import SettingError
from itresume_pipeline_tests.helpers import (
    TEST_CLIENT,
    TEST_CLIENT_KEY,
    make_api,
    terminate_once,
    within,
)

DAY = datetime(2024, 10, 8)
NEXT_DAY = datetime(2024, 10, 9)
DAY_KEY = "2024-10-08"


def fragments(secret: str, size: int = 8) -> list[str]:
    """Every `size`-character piece of `secret`: none may appear anywhere."""
    return [secret[i : i + size] for i in range(len(secret) - size + 1)]


def assert_no_key_fragment(text: str) -> None:
    leaked = [piece for piece in fragments(TEST_CLIENT_KEY) if piece in text]
    assert not leaked, f"key fragments {leaked} in {text!r}"


def wait_for(condition: Callable[[], bool], seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.02)


@pytest.fixture
def other_host() -> Iterator[ApiSimulator]:
    """A second API on another address: the host a hostile redirect points at."""
    with ApiSimulator(host="127.0.0.2", client=TEST_CLIENT, client_key=TEST_CLIENT_KEY) as sim:
        yield sim


# -- secrets in error texts -------------------------------------------------------------------


def test_a_503_body_quoting_the_key_across_the_excerpt_cut_is_masked(
    api: ItResumeApiResource, simulator: ApiSimulator, tmp_path: Path, caplog
) -> None:
    """The key starts 12 characters before the 300-character cut: masked before cutting."""
    body = "x" * 283 + f" key {TEST_CLIENT_KEY} refused " + "y" * 400
    simulator.inject("status", code=503, body=body, times=5)
    with caplog.at_level(logging.WARNING), pytest.raises(ApiError) as caught:
        api.download(DAY, NEXT_DAY, tmp_path / "d.json.gz")
    assert "HTTP 503" in str(caught.value) and "gave up after 5 attempts" in str(caught.value)
    assert_no_key_fragment(str(caught.value))
    assert_no_key_fragment(caplog.text)
    assert "attempt 1/5 failed" in caplog.text


def test_a_200_error_object_is_not_retried_and_quotes_the_api_masked(
    api: ItResumeApiResource, simulator: ApiSimulator, tmp_path: Path, caplog
) -> None:
    error = {"errors": f"no such key {TEST_CLIENT_KEY[:16]}", "code": 17}
    simulator.inject("garbage", body=orjson.dumps(error), content_type="application/json")
    with caplog.at_level(logging.WARNING), pytest.raises(ApiError) as caught:
        api.download(DAY, NEXT_DAY, tmp_path / "d.json.gz")
    assert not caught.value.retryable and caught.value.status == 200
    assert str(caught.value).endswith("an error instead of data: no such key ***")
    assert len(simulator.requests) == 1
    assert_no_key_fragment(str(caught.value) + caplog.text)

    # Unlike a whole error object, an HTML page or a cut-off object is a proxy's hiccup.
    simulator.inject("garbage")
    simulator.inject("garbage", body=b'{"errors": "cut of', content_type="application/json")
    download = api.download(DAY, NEXT_DAY, tmp_path / "d.json.gz", validate_stream=count_records)
    assert download.attempts == 3 and download.records > 0


# -- bounded reads: error bodies, the total deadline ------------------------------------------


def test_a_trickling_error_body_is_read_bounded(simulator: ApiSimulator, tmp_path: Path) -> None:
    """A 503 whose 4 kB page comes a byte every 50 ms (200 s) costs half a second a try."""
    quick = make_api(simulator, max_attempts=2, error_body_timeout_s=0.5)
    simulator.inject("status", code=503, body="z" * 4000, trickle=0.05, times=2)
    _, error, elapsed = within(10, lambda: quick.download(DAY, NEXT_DAY, tmp_path / "d.json.gz"))
    assert isinstance(error, ApiError) and "HTTP 503" in str(error), error
    assert "gave up after 2 attempts" in str(error) and "zzzz" in str(error)
    assert elapsed < 4


def test_a_trickling_body_stops_at_the_total_deadline_naming_the_setting(
    simulator: ApiSimulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Bytes every 50 ms never trip the 10 s read timeout; the 1 s deadline stops the call."""
    monkeypatch.setenv("ITRESUME_API_DEADLINE_S", "1")
    patient = make_api(simulator, read_timeout_s=10)
    simulator.inject("trickle", interval=0.05, chunk=16, times=5)
    _, error, elapsed = within(10, lambda: patient.download(DAY, NEXT_DAY, tmp_path / "d.gz"))
    assert isinstance(error, ApiError) and not error.retryable, error
    assert "deadline of 1 s (ITRESUME_API_DEADLINE_S)" in str(error)
    assert len(simulator.requests) == 1  # a deadline hit is not retried
    assert 0.9 < elapsed < 3


def test_trickling_headers_stop_at_the_deadline_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server that never finishes its headers: one byte every 50 ms of an endless line."""
    monkeypatch.setenv("ITRESUME_API_DEADLINE_S", "1")
    server = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        conn, _ = server.accept()
        with conn, contextlib.suppress(OSError):
            conn.sendall(b"HTTP/1.1 200 OK\r\nX-Pad: ")
            while not stop.wait(0.05):
                conn.sendall(b"a")

    threading.Thread(target=serve, daemon=True).start()
    api = ItResumeApiResource(
        url=f"http://127.0.0.1:{server.getsockname()[1]}/api/statistics",
        client=TEST_CLIENT,
        client_key=TEST_CLIENT_KEY,
        read_timeout_s=10,
    )
    try:
        _, error, elapsed = within(10, lambda: api.download(DAY, NEXT_DAY, tmp_path / "d.gz"))
    finally:
        stop.set()
        server.close()
    assert isinstance(error, ApiError) and "ITRESUME_API_DEADLINE_S" in str(error), error
    assert elapsed < 3


# -- cancellation -----------------------------------------------------------------------------


def test_cancel_stops_a_download_blocked_in_a_read(
    api: ItResumeApiResource, simulator: ApiSimulator, tmp_path: Path
) -> None:
    cancel = threading.Event()
    simulator.inject("trickle", interval=5.0, chunk=1)  # one byte, then 5 s of silence

    def download() -> Any:
        return api.download(DAY, NEXT_DAY, tmp_path / "d.json.gz", cancel=cancel)

    outcome: list[Any] = []
    worker = threading.Thread(target=lambda: outcome.append(within(10, download)), daemon=True)
    worker.start()
    wait_for(lambda: len(simulator.requests) == 1)
    time.sleep(0.3)  # inside the body's first read
    cancelled_at = time.monotonic()
    cancel.set()
    worker.join(10)
    (_, error, _) = outcome[0]
    assert isinstance(error, ApiCancelled) and not error.retryable, error
    assert time.monotonic() - cancelled_at < 1.0


def test_cancel_cuts_a_backoff_sleep_short(simulator: ApiSimulator, tmp_path: Path) -> None:
    slow_retry = make_api(simulator, backoff_max_s=30)
    simulator.inject("429", retry_after=30)
    cancel = threading.Event()
    threading.Timer(0.5, cancel.set).start()
    _, error, elapsed = within(
        10, lambda: slow_retry.download(DAY, NEXT_DAY, tmp_path / "d.json.gz", cancel=cancel)
    )
    assert isinstance(error, ApiCancelled), error
    assert elapsed < 1.5 and len(simulator.requests) == 1


# -- redirects --------------------------------------------------------------------------------


def test_redirects_stay_on_the_same_host_and_the_key_never_leaves_it(
    api: ItResumeApiResource, simulator: ApiSimulator, other_host: ApiSimulator, tmp_path: Path
) -> None:
    simulator.inject("redirect", location=simulator.url)  # same scheme, host and port
    assert api.download(DAY, NEXT_DAY, tmp_path / "same.json.gz").attempts == 1
    assert [r["status"] for r in simulator.requests] == [302, 200]

    simulator.inject("redirect", code=307, location=other_host.url)
    with pytest.raises(ApiError) as caught:
        api.download(DAY, NEXT_DAY, tmp_path / "other.json.gz")
    message = str(caught.value)
    assert not caught.value.retryable
    assert f"another host, http://127.0.0.2:{other_host.port};" in message, message
    assert "client=" not in message and "?" not in message
    assert other_host.requests == []  # the key never reached it

    simulator.requests.clear()
    simulator.inject("redirect", location=simulator.url, times=10)
    with pytest.raises(ApiError, match="redirected more than 3 times") as caught:
        api.download(DAY, NEXT_DAY, tmp_path / "loop.json.gz")
    assert not caught.value.retryable and len(simulator.requests) == 4


# -- settings ---------------------------------------------------------------------------------


@pytest.mark.parametrize("url", ["b2b.itresume.ru/api/statistics", "ftp://b2b.itresume.ru/x"])
def test_an_api_url_that_is_not_http_names_the_setting_and_is_not_retried(
    url: str, itresume_home: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("ITRESUME_PROFILE")
    monkeypatch.setenv("ITRESUME_API_URL", url)
    monkeypatch.setenv("ITRESUME_CLIENT", TEST_CLIENT)
    monkeypatch.setenv("ITRESUME_CLIENT_KEY", TEST_CLIENT_KEY)
    api = build_resources()["itresume_api"].process_config_and_initialize()
    with pytest.raises(SettingError, match=r"ITRESUME_API_URL=.* is not an http") as caught:
        api.download(DAY, NEXT_DAY, tmp_path / "d.json.gz")
    assert caught.value.allow_retries is False


# -- the pipeline: SIGTERM and a failing disk ---------------------------------------------------


def _cli_env(home: Path, simulator: ApiSimulator) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DAGSTER_", "ITRESUME_"))}
    env.update(
        ITRESUME_HOME=str(home),
        ITRESUME_API_URL=simulator.url,
        ITRESUME_CLIENT=TEST_CLIENT,
        ITRESUME_CLIENT_KEY=TEST_CLIENT_KEY,
    )
    return env


@pytest.mark.processes
def test_one_sigterm_stops_a_run_stuck_in_a_trickling_download(
    simulator: ApiSimulator, tmp_path: Path
) -> None:
    """`dagster asset materialize` with its download blocked: SIGTERM ends it within 15 s, the
    run is not a success, and nothing was published for the day."""
    home, dagster_home = tmp_path / "home", tmp_path / "dagster_home"
    dagster_home.mkdir()
    env = {**_cli_env(home, simulator), "DAGSTER_HOME": str(dagster_home)}
    simulator.inject("trickle", interval=0.5, chunk=1, times=5)
    command = [str(Path(sys.executable).with_name("dagster")), "asset", "materialize"]
    command += ["-m", "itresume_pipeline", "--select", "raw_attempts", "--partition", DAY_KEY]
    process = subprocess.Popen(
        command, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        wait_for(lambda: len(simulator.requests) == 1, seconds=60)
        time.sleep(1.0)  # well inside the body
        text = terminate_once(process)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode != 0, text[-3000:]
    with DagsterInstance.from_config(str(dagster_home)) as instance:
        (run,) = instance.get_runs()
    assert run.status != DagsterRunStatus.SUCCESS
    final = LandingZone(root=str(home)).payload_path(date(2024, 10, 8))
    assert not final.exists()
    assert not list(final.parent.glob(f"*{landing.TEMP_SUFFIX}"))
    assert len(simulator.requests) == 1  # stopped, not retried


@pytest.mark.processes
def test_a_write_error_names_the_day_and_the_path(simulator: ApiSimulator, tmp_path: Path) -> None:
    """A file-size limit makes the kernel refuse the download's writes (EFBIG, as a full disk
    refuses them with ENOSPC); the process is a child, so nothing else is limited."""
    home = tmp_path / "home"
    script = textwrap.dedent(
        """
        import resource, signal, sys
        from datetime import date
        from dagster import Failure
        from itresume_pipeline.assets.ingestion import download_days
        from itresume_pipeline.resources import build_resources

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # an error from write(), not a kill
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
        bound = build_resources()  # as the code location binds them, from the environment
        api = bound["itresume_api"].process_config_and_initialize()
        try:
            download_days(api, bound["landing"], [date(2024, 10, 8)])
        except Failure as failure:
            print(failure.description, failure.allow_retries)
            sys.exit(3)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        env=_cli_env(home, simulator),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 3, done.stderr[-3000:]
    folder = home / "raw" / "attempts"
    assert done.stdout.startswith(f"raw_attempts {DAY_KEY}: cannot write {folder}/.{DAY_KEY}")
    assert done.stdout.rstrip().endswith(": File too large False"), done.stdout
    assert list(folder.iterdir()) == []  # the temp was removed


def test_a_landing_folder_that_cannot_be_made_names_the_day_and_the_path(
    simulator: ApiSimulator, itresume_home: Path
) -> None:
    from itresume_pipeline.assets.ingestion import raw_attempts
    from itresume_pipeline_tests.helpers import failure_text, retries_of, run_pipeline

    (itresume_home / "raw").write_text("a file where the landing folder should be")
    resources = {
        "itresume_api": make_api(simulator),
        "landing": LandingZone(root=str(itresume_home)),
    }
    result = run_pipeline(resources, assets=[raw_attempts])
    assert not result.success and retries_of(result) == 0
    text = failure_text(result)
    assert f"raw_attempts {DAY_KEY}: cannot create" in text, text
    assert str(itresume_home / "raw" / "attempts") in text
    assert simulator.requests == []
