"""The API simulator over real HTTP: the contract, windows, faults, and the CLI.

The rest of the suite trusts the simulator to behave like the real API, so these tests pin the
contract itself (field shapes, the dict-literal quirks, half-open windows) and what a plain
`requests` client sees for every fault, independent of our own API client.
"""

from __future__ import annotations

import ast
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
import requests

from itresume_pipeline.local.simulator import ApiSimulator, generate_day, render_day_json

DAY = date(2024, 10, 8)
NEXT_DAY = DAY + timedelta(days=1)
CLIENT = "sim-test"
KEY = "sim-test-key-7c2e"
APD = 1200  # small days keep the HTTP tests quick; the contract tests use the default size

HEX32 = re.compile(r"[0-9a-f]{32}")
CREATED_AT = re.compile(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}(\.\d{6})?")
SOURCEDID = re.compile(
    r"course-v1:[^+:]+\+[^+:]+\+[^+:]+:[^:]+-[0-9a-f]{32}:(?P<user>[0-9a-f]{32})"
)


@pytest.fixture(scope="module")
def day_records() -> list[dict[str, Any]]:
    return generate_day(DAY, seed=42, attempts_per_day=6500)


@pytest.fixture(scope="module")
def day_passbacks(day_records: list[dict[str, Any]]) -> list[dict[str, str]]:
    return [ast.literal_eval(r["passback_params"]) for r in day_records]


@pytest.fixture
def sim() -> Iterator[ApiSimulator]:
    with ApiSimulator(client=CLIENT, client_key=KEY, attempts_per_day=APD) as simulator:
        yield simulator


def get(sim: ApiSimulator, start: str, end: str, **kw: Any) -> requests.Response:
    params = {"client": CLIENT, "client_key": KEY, "start": start, "end": end}
    params.update(kw.pop("params", {}))
    return requests.get(sim.url, params=params, timeout=kw.pop("timeout", 10), **kw)


def day_params(day: date = DAY) -> tuple[str, str]:
    return f"{day} 00:00:00.000000", f"{day + timedelta(days=1)} 00:00:00.000000"


def moment(created_at: str) -> datetime:
    return datetime.fromisoformat(created_at)


# --- the data contract ------------------------------------------------------------------------


def test_every_record_matches_the_contract(
    day_records: list[dict[str, Any]], day_passbacks: list[dict[str, str]]
) -> None:
    assert len(day_records) == 6500
    for rec, params in zip(day_records, day_passbacks, strict=True):
        assert list(rec) == [
            "lti_user_id",
            "passback_params",
            "is_correct",
            "attempt_type",
            "created_at",
        ]
        assert HEX32.fullmatch(rec["lti_user_id"])
        assert isinstance(rec["passback_params"], str)
        assert set(params) <= {
            "oauth_consumer_key",
            "lis_result_sourcedid",
            "lis_outcome_service_url",
        }
        assert isinstance(params["oauth_consumer_key"], str)
        match = SOURCEDID.fullmatch(params["lis_result_sourcedid"])
        assert match and match["user"] == rec["lti_user_id"]
        if "lis_outcome_service_url" in params:
            assert params["lis_outcome_service_url"].startswith("https://")
            assert 150 <= len(params["lis_outcome_service_url"]) <= 260
        assert rec["attempt_type"] in ("run", "submit")
        if rec["attempt_type"] == "run":
            assert rec["is_correct"] is None
        else:
            assert type(rec["is_correct"]) is int and rec["is_correct"] in (0, 1)
        assert CREATED_AT.fullmatch(rec["created_at"])
        assert moment(rec["created_at"]).date() == DAY
    stamps = [moment(r["created_at"]) for r in day_records]
    assert stamps == sorted(stamps)


def test_passback_params_round_trip_through_repr(
    day_records: list[dict[str, Any]], day_passbacks: list[dict[str, str]]
) -> None:
    for rec, params in zip(day_records, day_passbacks, strict=True):
        assert repr(params) == rec["passback_params"]


def test_the_day_has_the_realistic_mix(
    day_records: list[dict[str, Any]], day_passbacks: list[dict[str, str]]
) -> None:
    params = day_passbacks
    kinds = {(r["attempt_type"], r["is_correct"]) for r in day_records}
    assert kinds == {("run", None), ("submit", 0), ("submit", 1)}
    assert any("lis_outcome_service_url" not in p for p in params)
    assert any("lis_outcome_service_url" in p for p in params)
    # An apostrophe makes repr() switch to double quotes, which naive quote swapping breaks.
    assert any("'" in v for p in params for v in p.values())
    assert any('"' in r["passback_params"] for r in day_records)
    assert any(re.search("[а-яА-ЯёЁ]", v) for p in params for v in p.values())
    assert sum(p["oauth_consumer_key"] == "" for p in params) > len(params) / 2
    assert any(p["oauth_consumer_key"] for p in params)
    no_fraction = [r for r in day_records if len(r["created_at"]) == 19]
    assert 0 < len(no_fraction) < len(day_records) / 20
    users = {r["lti_user_id"] for r in day_records}
    assert 300 <= len(users) <= 1500
    tomorrow = {r["lti_user_id"] for r in generate_day(NEXT_DAY, seed=42, attempts_per_day=6500)}
    assert len(users & tomorrow) > 50  # the same learners come back


def test_data_depends_only_on_seed_day_and_size() -> None:
    one = render_day_json(DAY, seed=1, attempts_per_day=500)
    assert render_day_json(DAY, seed=1, attempts_per_day=500) == one
    assert render_day_json(DAY, seed=2, attempts_per_day=500) != one
    assert render_day_json(NEXT_DAY, seed=1, attempts_per_day=500) != one
    assert orjson.loads(one) == generate_day(DAY, seed=1, attempts_per_day=500)
    assert len(generate_day(DAY, seed=1, attempts_per_day=1)) == 1
    assert render_day_json(DAY, seed=1, attempts_per_day=0) == b"[]"


def test_rendering_is_fast() -> None:
    started = time.perf_counter()
    body = render_day_json(DAY, seed=3, attempts_per_day=20_000)
    assert time.perf_counter() - started < 3  # ~0.1 s; a 1M-record day takes a few seconds
    assert len(orjson.loads(body)) == 20_000


# --- windows ----------------------------------------------------------------------------------


def test_whole_day_is_served_verbatim(sim: ApiSimulator) -> None:
    r = get(sim, *day_params())
    assert r.status_code == 200
    assert r.headers["Content-Type"] == "application/json"
    assert int(r.headers["Content-Length"]) == len(r.content)
    assert r.content == render_day_json(DAY, seed=42, attempts_per_day=APD)


def test_window_is_half_open_across_a_day_boundary(sim: ApiSimulator) -> None:
    both = generate_day(DAY, seed=42, attempts_per_day=APD) + generate_day(
        NEXT_DAY, seed=42, attempts_per_day=APD
    )
    start, end = datetime(2024, 10, 8, 18, 30), datetime(2024, 10, 9, 6, 15, 0, 250)
    r = get(sim, f"{start}", f"{end}")
    expected = [rec for rec in both if start <= moment(rec["created_at"]) < end]
    assert r.json() == expected
    assert {moment(rec["created_at"]).date() for rec in expected} == {DAY, NEXT_DAY}

    # A record's own timestamp is inside as start and outside as end.
    edge = expected[10]["created_at"]
    assert get(sim, edge, f"{end}").json() == expected[10:]
    assert get(sim, f"{start}", edge).json() == expected[:10]


@pytest.mark.parametrize(
    ("start", "end"),
    [
        ("2024-10-08 00:00:00.000000", "2024-10-09 00:00:00.000000"),
        ("2024-10-08 00:00:00", "2024-10-09 00:00:00"),
        ("2024-10-08", "2024-10-09"),
        ("2024-10-08T00:00:00", "2024-10-09T00:00:00.000000"),
        ("2024-10-08T03:00:00+03:00", "2024-10-09T00:00:00Z"),
    ],
)
def test_accepted_datetime_formats(sim: ApiSimulator, start: str, end: str) -> None:
    r = get(sim, start, end)
    assert r.status_code == 200
    assert r.content == render_day_json(DAY, seed=42, attempts_per_day=APD)


def test_empty_window_is_an_empty_array(sim: ApiSimulator) -> None:
    r = get(sim, "2024-10-08 12:00:00", "2024-10-08 12:00:00")
    assert (r.status_code, r.content, r.headers["Content-Length"]) == (200, b"[]", "2")


def test_a_week_window_counts_every_day(sim: ApiSimulator) -> None:
    r = get(sim, "2024-10-01", "2024-10-08")
    records = r.json()
    assert len(records) == 7 * APD
    assert {rec["created_at"][:10] for rec in records} == {f"2024-10-0{d}" for d in range(1, 8)}


# --- errors -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("client", "key"), [(CLIENT, "wrong"), ("someone-else", KEY)])
def test_wrong_credentials_get_401(sim: ApiSimulator, client: str, key: str) -> None:
    r = get(sim, *day_params(), params={"client": client, "client_key": key})
    assert r.status_code == 401
    assert r.json() == {"errors": ["invalid client_key"]}


@pytest.mark.parametrize(
    ("params", "needle"),
    [
        ({"start": None}, "start"),
        ({"client_key": None}, "client_key"),
        ({"end": ""}, "end"),
        ({"start": "yesterday"}, "start"),
        ({"end": "2024-13-45"}, "end"),
        ({"start": "2024-01-01", "end": "2024-12-31"}, "window too long"),
    ],
)
def test_bad_parameters_get_400(sim: ApiSimulator, params: dict[str, Any], needle: str) -> None:
    r = get(sim, *day_params(), params=params)
    assert r.status_code == 400
    assert r.headers["Content-Type"] == "application/json"
    errors = r.json()["errors"]
    assert errors and any(needle in e for e in errors)


def test_other_paths_get_404(sim: ApiSimulator) -> None:
    r = requests.get(sim.url.replace("/api/statistics", "/api/other"), timeout=5)
    assert r.status_code == 404


def test_requests_are_logged_with_the_key_redacted(sim: ApiSimulator) -> None:
    get(sim, *day_params())
    get(sim, *day_params(), params={"client_key": "wrong"})
    assert [(r["path"], r["status"]) for r in sim.requests] == [
        ("/api/statistics", 200),
        ("/api/statistics", 401),
    ]
    assert sim.requests[0]["params"] == {
        "client": CLIENT,
        "client_key": "***",
        "start": "2024-10-08 00:00:00.000000",
        "end": "2024-10-09 00:00:00.000000",
    }
    assert KEY not in repr(sim.requests)


# --- faults -----------------------------------------------------------------------------------


def test_status_faults_are_consumed_in_order(sim: ApiSimulator) -> None:
    sim.inject("status", code=502)
    sim.inject("status", code=503, times=2, body={"errors": ["maintenance"]})
    sim.inject("status", code=403)
    codes = [get(sim, *day_params()).status_code for _ in range(5)]
    assert codes == [502, 503, 503, 403, 200]
    assert [r["status"] for r in sim.requests] == codes
    assert sim.pending_faults == 0


def test_status_fault_bodies(sim: ApiSimulator) -> None:
    sim.inject("status", code=503, body={"errors": ["maintenance"]})
    sim.inject("500")
    r = get(sim, *day_params())
    assert (r.status_code, r.json()) == (503, {"errors": ["maintenance"]})
    r = get(sim, *day_params())
    assert r.status_code == 500 and r.json()["errors"]


def test_429_carries_retry_after(sim: ApiSimulator) -> None:
    sim.inject("429", retry_after=7)
    r = get(sim, *day_params())
    assert r.status_code == 429
    assert r.headers["Retry-After"] == "7"
    assert get(sim, *day_params()).status_code == 200


def test_slow_fault_times_the_client_out(sim: ApiSimulator) -> None:
    sim.inject("slow", seconds=1.0)
    with pytest.raises(requests.exceptions.ReadTimeout):
        get(sim, *day_params(), timeout=(3, 0.2))
    assert get(sim, *day_params()).status_code == 200


def test_truncated_body_breaks_off(sim: ApiSimulator) -> None:
    sim.inject("truncate")
    with pytest.raises(requests.exceptions.ChunkedEncodingError):
        get(sim, *day_params())
    assert get(sim, *day_params()).content == render_day_json(DAY, seed=42, attempts_per_day=APD)


def test_truncated_stream_breaks_off(sim: ApiSimulator) -> None:
    sim.inject("truncate")
    with (
        get(sim, *day_params(), stream=True) as r,
        pytest.raises(requests.exceptions.ChunkedEncodingError),
    ):
        for _ in r.iter_content(1 << 16):
            pass


def test_garbage_is_html_with_status_200(sim: ApiSimulator) -> None:
    sim.inject("garbage")
    r = get(sim, *day_params())
    assert r.status_code == 200
    assert r.headers["Content-Type"].startswith("text/html")
    with pytest.raises(requests.exceptions.JSONDecodeError):
        r.json()


def test_reset_drops_the_connection(sim: ApiSimulator) -> None:
    sim.inject("reset")
    with pytest.raises(requests.exceptions.ConnectionError):
        get(sim, *day_params())
    assert sim.requests[-1]["status"] is None
    assert get(sim, *day_params()).status_code == 200


def test_trickle_sends_the_whole_body_slowly(sim: ApiSimulator) -> None:
    """Bytes keep coming (no read timeout trips), but the body takes its time."""
    sim.inject("trickle", interval=0.01, chunk=4096)
    started = time.perf_counter()
    r = get(sim, *day_params(), timeout=(3, 1))
    body = render_day_json(DAY, seed=42, attempts_per_day=APD)
    assert r.status_code == 200 and r.content == body
    assert time.perf_counter() - started >= 0.01 * (len(body) // 4096)


def test_an_error_body_can_trickle(sim: ApiSimulator) -> None:
    sim.inject("status", code=503, body="slow error", trickle=0.05)
    started = time.perf_counter()
    r = get(sim, *day_params())
    assert (r.status_code, r.text) == (503, "slow error")
    assert time.perf_counter() - started >= 0.05 * 9


def test_redirect_points_elsewhere_with_the_query(sim: ApiSimulator) -> None:
    sim.inject("redirect", location="http://127.0.0.2:9/api/statistics")
    sim.inject("redirect", code=301, location="http://127.0.0.2:9/x", with_query=False)
    r = get(sim, *day_params(), allow_redirects=False)
    assert r.status_code == 302
    assert r.headers["Location"].startswith("http://127.0.0.2:9/api/statistics?client=sim-test")
    assert f"client_key={KEY}" in r.headers["Location"]
    r = get(sim, *day_params(), allow_redirects=False)
    assert (r.status_code, r.headers["Location"]) == (301, "http://127.0.0.2:9/x")
    with pytest.raises(TypeError, match="location"):
        sim.inject("redirect")


def test_unknown_fault_is_refused(sim: ApiSimulator) -> None:
    with pytest.raises(ValueError, match="unknown fault"):
        sim.inject("meltdown")
    with pytest.raises(TypeError, match="seconds"):
        sim.inject("truncate", seconds=3)


def test_latency_delays_every_answer(sim: ApiSimulator) -> None:
    sim.latency = 0.3
    started = time.perf_counter()
    assert get(sim, *day_params()).status_code == 200
    assert time.perf_counter() - started >= 0.3
    sim.latency = 0.0
    started = time.perf_counter()
    get(sim, *day_params())
    assert time.perf_counter() - started < 0.3


def test_close_does_not_wait_for_sleeping_handlers() -> None:
    sim = ApiSimulator(client=CLIENT, client_key=KEY, attempts_per_day=APD, latency=30).start()
    outcome: list[object] = []

    def call() -> None:
        try:
            outcome.append(get(sim, *day_params()).status_code)
        except requests.RequestException as exc:
            outcome.append(exc)

    worker = threading.Thread(target=call, daemon=True)
    worker.start()
    time.sleep(0.2)
    started = time.perf_counter()
    sim.close()
    worker.join(timeout=5)
    assert time.perf_counter() - started < 3
    assert outcome  # the sleeping request was released, one way or another


# --- injected payloads ------------------------------------------------------------------------


def test_injected_records_are_served_for_their_day(sim: ApiSimulator) -> None:
    bad = [
        {"lti_user_id": "not-hex", "passback_params": "{", "is_correct": 2},
        {
            "lti_user_id": "a" * 32,
            "passback_params": "{}",
            "is_correct": None,
            "attempt_type": "run",
            "created_at": "2024-10-08 12:00:00.000001",
        },
        {"created_at": "2024-10-09 00:00:00.000000"},  # out of its day: a client must notice
    ]
    sim.set_day_payload(DAY, bad)
    assert get(sim, *day_params()).json() == bad
    assert get(sim, "2024-10-08 11:00", "2024-10-08 13:00").json() == [bad[1]]
    assert len(get(sim, *day_params(NEXT_DAY)).json()) == APD  # other days are untouched
    sim.set_day_payload(DAY, None)
    assert len(get(sim, *day_params()).json()) == APD


def test_injected_bytes_are_served_verbatim(sim: ApiSimulator) -> None:
    raw = b'[{"lti_user_id": "x", "created_at": "2024-10-08 01:00:00"}, {"broken'
    sim.set_day_payload(DAY, raw)
    r = get(sim, *day_params())
    assert r.status_code == 200
    assert r.content == raw
    assert int(r.headers["Content-Length"]) == len(raw)


# --- console script ---------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def read_line(proc: subprocess.Popen[str], *, timeout: float) -> str:
    """The first stdout line, without hanging the suite if the process never prints one."""
    lines: queue.Queue[str] = queue.Queue()
    assert proc.stdout is not None
    stdout = proc.stdout
    threading.Thread(target=lambda: lines.put(stdout.readline()), daemon=True).start()
    try:
        return lines.get(timeout=timeout)
    except queue.Empty:
        pytest.fail(f"itresume-simulator printed nothing in {timeout} s")


@pytest.mark.processes
def test_console_script_serves_and_stops_on_sigterm() -> None:
    script = shutil.which("itresume-simulator", path=str(Path(sys.executable).parent))
    assert script, "itresume-simulator is not installed next to this Python"
    port = free_port()
    proc = subprocess.Popen(
        [
            *(script, "--port", str(port), "--seed", "7", "--attempts-per-day", "100"),
            *("--client", "cli", "--client-key", "cli-key"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        line = read_line(proc, timeout=60)  # the package import pulls in Dagster: seconds
        url = f"http://127.0.0.1:{port}/api/statistics"
        assert url in line and "cli-key" in line, line
        r = requests.get(
            url,
            params={
                "client": "cli",
                "client_key": "cli-key",
                "start": "2024-10-08",
                "end": "2024-10-09",
            },
            timeout=10,
        )
        assert r.content == render_day_json(DAY, seed=7, attempts_per_day=100)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    stderr = proc.stderr.read() if proc.stderr else ""
    assert "Traceback" not in stderr
    assert "cli-key" not in stderr  # the request log redacts the key
