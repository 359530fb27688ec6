"""The report sheet, driven through real gspread over HTTP against the in-process emulator.

No mocks: the google-mode test signs a real JWT with a throwaway RSA key and fetches a token from
the emulator's ``/token``, exactly as it would from Google.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import date
from pathlib import Path
from typing import Any

import gspread
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from itresume_pipeline.local.sheets_emulator import SheetsEmulator
from itresume_pipeline.resources import sheets_resource
from itresume_pipeline.resources.sheets import (
    FIXED_COLUMNS,
    SheetsConfigError,
    SheetsError,
    SheetsResource,
    apply_block,
    plan_upsert,
)
from itresume_pipeline.settings import SettingError
from itresume_pipeline_tests.helpers import sheet_day, sheet_metric, write_credentials

HEADER = list(FIXED_COLUMNS)
KEY = "sheet-key-1"
WS = "daily_metrics"

day, metric = sheet_day, sheet_metric  # short names for the tables below


def line(n: int, scale: int = 1) -> list[str]:
    """The sheet row ``metric(n, scale)`` should produce, as the emulator shows it."""
    return [str(v) for v in metric(n, scale).values()]


def data_dates(values: list[list[str]]) -> list[str]:
    return [r[0] for r in values[1:]]


@pytest.fixture(autouse=True)
def _no_sheets_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """`sheets_resource` binds these variables: keep the host's settings out of the tests.
    The profile is production unless a test asks for the local one."""
    for name in (
        "ITRESUME_PROFILE",
        "ITRESUME_SHEETS_BACKEND",
        "ITRESUME_SHEETS_SPREADSHEET_ID",
        "ITRESUME_SHEETS_CREDENTIALS",
        "ITRESUME_SHEETS_WORKSHEET",
        "SHEETS_EMULATOR_HOST",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("ITRESUME_HOME", str(tmp_path / "home"))


@pytest.fixture
def emu() -> Iterator[SheetsEmulator]:
    with SheetsEmulator() as emulator:
        emulator.create_spreadsheet(KEY, title="IT Resume report")
        yield emulator


@pytest.fixture
def sheets(emu: SheetsEmulator) -> SheetsResource:
    return SheetsResource(
        emulator_host=emu.host_port,
        spreadsheet_id=KEY,
        backoff_base_s=0.01,
        backoff_max_s=0.05,
        connect_timeout_s=2,
        read_timeout_s=2,
    )


# ---------------------------------------------------------------------------------------------
# Google mode: the full service-account flow, offline
# ---------------------------------------------------------------------------------------------


def test_google_mode_runs_the_service_account_token_flow(
    tmp_path: Path, private_key_pem: str, caplog: pytest.LogCaptureFixture
) -> None:
    with SheetsEmulator(require_auth=True) as emu:
        emu.create_spreadsheet(KEY, sheets=["Sheet1"])
        creds = write_credentials(tmp_path / "sa.json", emu.token_uri, private_key_pem)
        sheets = SheetsResource(
            spreadsheet_id=KEY, credentials_path=str(creds), api_base_url=emu.url
        )

        caplog.set_level(logging.DEBUG)
        result = sheets.upsert_rows([metric(2), metric(1)])

        assert result.mode == "google"
        assert result.url.startswith(f"https://docs.google.com/spreadsheets/d/{KEY}/edit#gid=")
        assert emu.values(KEY, WS) == [HEADER, line(1), line(2)]
        assert ("POST", "/token") in emu.requests
        api_calls = [r for r in emu.log if r.path.startswith("/v4/")]
        assert api_calls and all(r.bearer and r.status == 200 for r in api_calls)
        claims = emu.token_requests[0]
        assert claims["iss"] == "robot@itresume-test.iam.gserviceaccount.com"
        assert "https://www.googleapis.com/auth/spreadsheets" in claims["scope"]
        assert "drive" not in claims["scope"]
        assert sheets.read_rows()[day(1)] == {
            "attempts": 100,
            "successful_attempts": 10,
            "unique_users": 2,
        }
        key_body = private_key_pem.splitlines()[1]
        assert key_body not in caplog.text
        assert "emu-" not in caplog.text  # no access token in the logs


def test_google_mode_unknown_spreadsheet_names_id_and_robot(
    tmp_path: Path, private_key_pem: str
) -> None:
    with SheetsEmulator(require_auth=True) as emu:
        creds = write_credentials(tmp_path / "sa.json", emu.token_uri, private_key_pem)
        sheets = SheetsResource(
            spreadsheet_id="nope", credentials_path=str(creds), api_base_url=emu.url
        )
        with pytest.raises(SheetsError) as info:
            sheets.upsert_rows([metric(1)])
    message = str(info.value)
    assert "'nope' was not found" in message
    assert "robot@itresume-test.iam.gserviceaccount.com" in message
    assert private_key_pem.splitlines()[1] not in message


def test_emulator_rejects_missing_bearer_when_auth_is_required() -> None:
    with SheetsEmulator(require_auth=True) as emu:
        emu.create_spreadsheet(KEY)
        client = gspread.Client(auth=None, session=_redirect_session(emu.url))
        with pytest.raises(gspread.exceptions.APIError, match="401"):
            client.open_by_key(KEY)
    assert [(r.status, r.bearer) for r in emu.log] == [(401, False)]


# ---------------------------------------------------------------------------------------------
# Upsert semantics (emulator mode)
# ---------------------------------------------------------------------------------------------


def test_creates_worksheet_and_header_in_two_calls(
    emu: SheetsEmulator, sheets: SheetsResource
) -> None:
    result = sheets.upsert_rows([metric(3)])

    assert emu.sheet_titles(KEY) == ["Sheet1", WS]
    assert emu.values(KEY, WS) == [HEADER, line(3)]
    assert result.write_calls == 2 == emu.write_calls()
    assert result.row_numbers == {day(3): 2}
    assert result.values == {day(3): ["2024-10-03", 300, 30, 4]}
    assert emu.raw_values(KEY, WS)[1] == ["2024-10-03", 300, 30, 4]  # numbers stay numbers
    assert result.url.endswith(f"/d/{KEY}/edit#gid=2")


def test_inserts_in_the_middle_at_the_top_and_at_the_end(
    emu: SheetsEmulator, sheets: SheetsResource
) -> None:
    sheets.upsert_rows([metric(2), metric(4)])

    middle = sheets.upsert_rows([metric(3)])
    assert middle.row_numbers == {day(3): 3}
    top = sheets.upsert_rows([metric(1)])
    assert top.row_numbers == {day(1): 2}
    end = sheets.upsert_rows([metric(5)])
    assert end.row_numbers == {day(5): 6}
    assert end.written_range == "'daily_metrics'!A6:D6"  # appending rewrites one row only

    assert emu.values(KEY, WS) == [HEADER, *(line(n) for n in range(1, 6))]


def test_update_in_place_rewrites_only_that_row(
    emu: SheetsEmulator, sheets: SheetsResource
) -> None:
    sheets.upsert_rows([metric(n) for n in range(1, 6)])

    result = sheets.upsert_rows([metric(3, scale=2)])

    assert result.write_calls == 1
    assert result.written_range == "'daily_metrics'!A4:D4"
    assert emu.values(KEY, WS)[3] == line(3, scale=2)
    assert data_dates(emu.values(KEY, WS)) == [day(n) for n in range(1, 6)]


def test_same_rows_again_make_zero_write_calls(emu: SheetsEmulator, sheets: SheetsResource) -> None:
    rows = [metric(n) for n in range(1, 8)]
    first = sheets.upsert_rows(rows)
    before = emu.values(KEY, WS)
    writes = emu.write_calls()

    again = sheets.upsert_rows(rows)

    assert again.write_calls == 0
    assert emu.write_calls() == writes
    assert emu.values(KEY, WS) == before
    assert again.row_numbers == first.row_numbers
    assert again.url == first.url


def test_out_of_order_backfill_keeps_ascending_unique_dates(
    emu: SheetsEmulator, sheets: SheetsResource
) -> None:
    for n in (5, 1, 3):
        sheets.upsert_rows([metric(n)])
    assert data_dates(emu.values(KEY, WS)) == [day(1), day(3), day(5)]

    result = sheets.upsert_rows([metric(n) for n in range(1, 8)])

    assert emu.values(KEY, WS) == [HEADER, *(line(n) for n in range(1, 8))]
    assert result.row_numbers == {day(n): n + 1 for n in range(1, 8)}
    assert result.write_calls == 1


def test_a_30_day_backfill_costs_at_most_two_write_calls(
    emu: SheetsEmulator, sheets: SheetsResource
) -> None:
    fresh = sheets.upsert_rows([metric(n) for n in range(1, 31)])
    assert fresh.write_calls <= 2 and emu.write_calls() == fresh.write_calls

    emu.reset_log()
    rerun = sheets.upsert_rows([metric(n, scale=3) for n in range(1, 31)])

    assert rerun.write_calls == 1 == emu.write_calls()
    assert emu.values(KEY, WS) == [HEADER, *(line(n, scale=3) for n in range(1, 31))]


def test_grid_too_small_grows_in_the_same_budget(
    emu: SheetsEmulator, sheets: SheetsResource
) -> None:
    emu.create_spreadsheet(KEY, sheets=[WS], rows=5, cols=4)

    result = sheets.upsert_rows([metric(n) for n in range(1, 31)])

    assert result.write_calls == 2  # appendDimension + one values write
    assert emu.grid_size(KEY, WS)[0] >= 31
    assert len(emu.values(KEY, WS)) == 31


def test_hand_edits_are_corrected_and_duplicates_collapsed(
    emu: SheetsEmulator, sheets: SheetsResource, caplog: pytest.LogCaptureFixture
) -> None:
    sheets.upsert_rows([metric(n) for n in range(1, 5)])
    edited = emu.values(KEY, WS)
    edited[2][1] = "999"  # someone typed over day 2
    edited.insert(4, list(edited[3]))  # and pasted day 3 twice
    edited.insert(2, ["", "", "", ""])  # and left a blank row
    emu.set_values(KEY, WS, edited)
    emu.reset_log()

    caplog.set_level(logging.WARNING)
    result = sheets.upsert_rows([metric(2), metric(3)])

    assert emu.values(KEY, WS) == [HEADER, *(line(n) for n in range(1, 5))]
    assert result.duplicates_collapsed == 1
    assert result.write_calls == 1 == emu.write_calls()
    assert "collapsed 1 duplicate" in caplog.text


def test_sheet_without_header_gets_one(emu: SheetsEmulator, sheets: SheetsResource) -> None:
    emu.create_spreadsheet(KEY, sheets=[WS])
    emu.set_values(KEY, WS, [["2024-10-02", 1, 1, 1]])

    sheets.upsert_rows([metric(1)])

    assert emu.values(KEY, WS) == [HEADER, line(1), ["2024-10-02", "1", "1", "1"]]


def test_extra_columns_follow_the_fixed_ones_and_hand_columns_survive(
    emu: SheetsEmulator, sheets: SheetsResource
) -> None:
    emu.create_spreadsheet(KEY, sheets=[WS])
    emu.set_values(
        KEY,
        WS,
        [
            ["Date", "unique_users", "attempts", "successful_attempts", "notes"],
            ["2024-10-03", 4, 300, 30, "holiday"],
        ],
    )

    sheets.upsert_rows([{**metric(1), "reject_rate": 0.5}])

    assert emu.values(KEY, WS) == [
        [*HEADER, "notes", "reject_rate"],
        ["2024-10-01", "100", "10", "2", "", "0.5"],
        ["2024-10-03", "300", "30", "4", "holiday"],
    ]
    assert sheets.read_rows()[day(3)] == {
        "attempts": 300,
        "successful_attempts": 30,
        "unique_users": 4,
        "notes": "holiday",
        "reject_rate": "",
    }


def test_hand_typed_serial_dates_are_understood(
    emu: SheetsEmulator, sheets: SheetsResource
) -> None:
    emu.create_spreadsheet(KEY, sheets=[WS])
    serial = (date(2024, 10, 2) - date(1899, 12, 30)).days  # what UNFORMATTED_VALUE returns
    emu.set_values(KEY, WS, [HEADER, [serial, 20, 2, 1]])

    sheets.upsert_rows([metric(2)])

    assert emu.values(KEY, WS) == [HEADER, line(2)]


def test_read_rows_returns_ints(sheets: SheetsResource) -> None:
    sheets.upsert_rows([metric(1), metric(2)])

    assert sheets.read_rows() == {
        day(1): {"attempts": 100, "successful_attempts": 10, "unique_users": 2},
        day(2): {"attempts": 200, "successful_attempts": 20, "unique_users": 3},
    }


def test_bad_rows_are_rejected_before_any_call(emu: SheetsEmulator, sheets: SheetsResource) -> None:
    with pytest.raises(ValueError, match="appears twice"):
        sheets.upsert_rows([metric(1), metric(1)])
    with pytest.raises(ValueError, match="'attempts' must be an int"):
        sheets.upsert_rows([{**metric(1), "attempts": "12"}])
    with pytest.raises(ValueError, match="ISO date"):
        sheets.upsert_rows([{**metric(1), "date": "01/10/2024"}])
    assert emu.write_calls() == 0


def test_the_emulator_host_may_be_a_url(emu: SheetsEmulator) -> None:
    sheets = SheetsResource(emulator_host=emu.url, spreadsheet_id=KEY)

    result = sheets.upsert_rows([metric(1)])

    assert result.mode == "emulator"
    assert emu.values(KEY, WS) == [HEADER, line(1)]


def test_parallel_partitions_do_not_lose_rows(emu: SheetsEmulator, sheets: SheetsResource) -> None:
    """A backfill runs partitions in parallel; each read-modify-write must see the others."""
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(lambda n: sheets.upsert_rows([metric(n)]), range(1, 17)))

    assert emu.values(KEY, WS) == [HEADER, *(line(n) for n in range(1, 17))]


# ---------------------------------------------------------------------------------------------
# Retries
# ---------------------------------------------------------------------------------------------


def test_recovers_from_429_honouring_retry_after(
    emu: SheetsEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    sheets = SheetsResource(
        emulator_host=emu.host_port, spreadsheet_id=KEY, backoff_base_s=0.001, backoff_max_s=2
    )
    emu.inject(429, times=2, retry_after=0.25)
    caplog.set_level(logging.WARNING)

    started = time.monotonic()
    result = sheets.upsert_rows([metric(1)])
    elapsed = time.monotonic() - started

    assert emu.values(KEY, WS) == [HEADER, line(1)]
    assert result.write_calls == 2
    assert elapsed >= 0.5  # both waits honoured the server's Retry-After
    assert [r.status for r in emu.log[:3]] == [429, 429, 200]
    assert caplog.text.count("answered 429") == 2


@pytest.mark.parametrize("status", [500, 503])
def test_recovers_from_5xx_on_a_write(
    emu: SheetsEmulator, sheets: SheetsResource, status: int
) -> None:
    sheets.upsert_rows([metric(1)])
    sheets_calls = len(emu.log)
    emu.inject(status)  # hits the next call: the metadata GET
    emu.inject(status)  # and then the values GET

    sheets.upsert_rows([metric(2)])

    assert emu.values(KEY, WS) == [HEADER, line(1), line(2)]
    assert [r.status for r in emu.log[sheets_calls:]].count(status) == 2


def test_a_429_storm_gives_up_after_max_attempts(emu: SheetsEmulator) -> None:
    sheets = SheetsResource(
        emulator_host=emu.host_port,
        spreadsheet_id=KEY,
        max_attempts=3,
        backoff_base_s=0.001,
        backoff_max_s=0.01,
    )
    emu.inject(429, times=50, retry_after=0)

    with pytest.raises(SheetsError) as info:
        sheets.upsert_rows([metric(1)])

    assert "answered 429" in str(info.value)
    assert "after 3 attempts" in str(info.value)
    assert info.value.status == 429 and info.value.attempts == 3
    assert len(emu.log) == 3
    assert emu.write_calls() == 0


def test_a_4xx_is_not_retried(emu: SheetsEmulator, sheets: SheetsResource) -> None:
    emu.inject(400)

    with pytest.raises(SheetsError, match=f"refused GET /v4/spreadsheets/{KEY} with 400") as info:
        sheets.upsert_rows([metric(1)])

    assert info.value.status == 400
    assert len(emu.log) == 1


def test_timeouts_and_dropped_connections_are_retried(emu: SheetsEmulator) -> None:
    sheets = SheetsResource(
        emulator_host=emu.host_port,
        spreadsheet_id=KEY,
        backoff_base_s=0.001,
        backoff_max_s=0.01,
        read_timeout_s=0.2,
    )
    emu.inject_delay(0.6)
    emu.inject_disconnect()

    sheets.upsert_rows([metric(1)])

    assert emu.values(KEY, WS) == [HEADER, line(1)]


def test_connection_refused_gives_up_with_a_clear_error() -> None:
    with SheetsEmulator() as gone:
        address = gone.host_port
    sheets = SheetsResource(
        emulator_host=address,
        spreadsheet_id=KEY,
        max_attempts=2,
        backoff_base_s=0.001,
        backoff_max_s=0.01,
    )

    with pytest.raises(SheetsError, match=r"failed with ConnectionError .* after 2 attempts"):
        sheets.upsert_rows([metric(1)])


# ---------------------------------------------------------------------------------------------
# Configuration errors
# ---------------------------------------------------------------------------------------------


def test_only_a_spreadsheet_id_names_the_missing_credentials_variable() -> None:
    sheets = SheetsResource(spreadsheet_id="abc")
    with pytest.raises(SheetsConfigError, match="ITRESUME_SHEETS_CREDENTIALS is not") as info:
        sheets.upsert_rows([metric(1)])
    assert isinstance(info.value, SettingError) and not info.value.allow_retries


def test_only_credentials_names_the_missing_spreadsheet_variable(tmp_path: Path) -> None:
    sheets = SheetsResource(credentials_path=str(tmp_path / "sa.json"))
    with pytest.raises(SheetsConfigError, match="ITRESUME_SHEETS_SPREADSHEET_ID is not"):
        sheets.read_rows()


def test_missing_credentials_file_names_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "sa.json"
    sheets = SheetsResource(spreadsheet_id="abc", credentials_path=str(missing))
    with pytest.raises(SheetsConfigError, match="does not exist") as info:
        sheets.upsert_rows([metric(1)])
    assert str(missing) in str(info.value)


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("not json at all -----BEGIN PRIVATE KEY----- SECRET", "key in .* \\(JSONDecodeError\\)"),
        ('{"type": "authorized_user", "refresh_token": "SECRET"}', "not a service-account"),
        ('{"type": "service_account", "private_key": "SECRET"}', "cannot load the service-acc"),
    ],
)
def test_unusable_credentials_never_echo_the_content(
    tmp_path: Path, content: str, expected: str
) -> None:
    path = tmp_path / "sa.json"
    path.write_text(content, encoding="utf-8")
    sheets = SheetsResource(spreadsheet_id="abc", credentials_path=str(path))
    with pytest.raises(SheetsConfigError, match=expected) as info:
        sheets.upsert_rows([metric(1)])
    assert str(path) in str(info.value)
    assert "SECRET" not in str(info.value)
    assert info.value.__cause__ is None  # no chained parser error that could quote the file
    assert info.value.__context__ is None or info.value.__suppress_context__


def test_a_corrupt_private_key_is_reported_without_the_key(tmp_path: Path) -> None:
    secret = "-----BEGIN PRIVATE KEY-----\nTOPSECRETMATERIAL\n-----END PRIVATE KEY-----\n"
    path = write_credentials(tmp_path / "sa.json", "http://127.0.0.1:9/token", secret)
    sheets = SheetsResource(spreadsheet_id="abc", credentials_path=str(path))
    with pytest.raises(SheetsConfigError, match="cannot load the service-account key") as info:
        sheets.upsert_rows([metric(1)])
    assert "TOPSECRET" not in str(info.value)


def test_the_documented_variables_are_bound(
    emu: SheetsEmulator, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("ITRESUME_PROFILE", "local")
    local = sheets_resource()
    local.upsert_rows([metric(1)])
    assert (tmp_path / "home" / "sheets" / "daily_metrics.csv").exists()
    monkeypatch.delenv("ITRESUME_PROFILE")

    monkeypatch.setenv("SHEETS_EMULATOR_HOST", emu.host_port)
    monkeypatch.setenv("ITRESUME_SHEETS_SPREADSHEET_ID", KEY)
    monkeypatch.setenv("ITRESUME_SHEETS_WORKSHEET", "stats")
    result = sheets_resource().upsert_rows([metric(1)])

    assert result.mode == "emulator"
    assert emu.values(KEY, "stats") == [HEADER, line(1)]
    monkeypatch.delenv("SHEETS_EMULATOR_HOST")
    with pytest.raises(SheetsConfigError, match="ITRESUME_SHEETS_CREDENTIALS is not"):
        sheets_resource().read_rows()


# ---------------------------------------------------------------------------------------------
# The backend is chosen explicitly: no silent fallback to a file
# ---------------------------------------------------------------------------------------------

BOTH_MISSING = (
    "ITRESUME_SHEETS_SPREADSHEET_ID is not set and ITRESUME_SHEETS_CREDENTIALS is not set"
)


def test_production_with_no_sheets_settings_fails_instead_of_writing_a_file(
    tmp_path: Path,
) -> None:
    sheets = sheets_resource()

    with pytest.raises(SettingError, match=BOTH_MISSING) as info:
        sheets.upsert_rows([metric(1)])

    assert "ITRESUME_SHEETS_BACKEND=csv" in str(info.value)  # the way out is named too
    assert not info.value.allow_retries
    assert list(tmp_path.rglob("*.csv")) == []


@pytest.mark.parametrize(
    ("profile", "env", "expected"),
    [
        # asked for by name, csv wins over an emulator and over Google settings
        (
            "",
            {"ITRESUME_SHEETS_BACKEND": "csv", "SHEETS_EMULATOR_HOST": "127.0.0.1:9"},
            "local-csv",
        ),
        (
            "local",
            {
                "ITRESUME_SHEETS_BACKEND": "CSV",
                "ITRESUME_SHEETS_SPREADSHEET_ID": "abc",
                "ITRESUME_SHEETS_CREDENTIALS": "/etc/sa.json",
            },
            "local-csv",
        ),
        # google asked for in the local profile still needs its settings
        ("local", {"ITRESUME_SHEETS_BACKEND": "google"}, BOTH_MISSING),
        ("", {"ITRESUME_SHEETS_BACKEND": "excel"}, "ITRESUME_SHEETS_BACKEND='excel' is not"),
        ("local", {"ITRESUME_SHEETS_BACKEND": "local-csv"}, "ITRESUME_SHEETS_BACKEND='local-csv'"),
    ],
    ids=[
        "csv-over-an-emulator",
        "csv-over-google-settings",
        "google-in-the-local-profile",
        "unknown-backend",
        "a-mode-is-not-a-backend",
    ],
)
def test_the_backend_variable_decides(
    monkeypatch: pytest.MonkeyPatch, profile: str, env: dict[str, str], expected: str
) -> None:
    if profile:
        monkeypatch.setenv("ITRESUME_PROFILE", profile)
    for name, value in env.items():
        monkeypatch.setenv(name, value)

    if expected == "local-csv":
        assert sheets_resource().describe().startswith("local CSV file")
    else:
        with pytest.raises(SettingError, match=expected):
            sheets_resource().describe()


def test_the_backend_field_writes_the_csv_sheet_in_production(
    emu: SheetsEmulator, tmp_path: Path
) -> None:
    sheets = SheetsResource(
        backend="csv", emulator_host=emu.host_port, local_dir=str(tmp_path / "report")
    )

    result = sheets.upsert_rows([metric(1)])

    assert result.mode == "local-csv"
    assert (tmp_path / "report" / "daily_metrics.csv").read_text(encoding="utf-8").splitlines() == [
        ",".join(HEADER),
        ",".join(line(1)),
    ]
    assert emu.write_calls() == 0


# ---------------------------------------------------------------------------------------------
# Local CSV mode
# ---------------------------------------------------------------------------------------------


def test_local_csv_mode_has_the_same_semantics(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sheets = SheetsResource(backend="csv", local_dir=str(tmp_path / "sheets"))
    path = tmp_path / "sheets" / "daily_metrics.csv"
    caplog.set_level(logging.WARNING)

    for n in (5, 1, 3):
        sheets.upsert_rows([metric(n)])
    result = sheets.upsert_rows([metric(n) for n in range(1, 8)])

    assert result.mode == "local-csv"
    assert "LOCAL CSV file" in caplog.text and "not Google Sheets" in caplog.text
    assert result.url == path.resolve().as_uri()
    assert result.row_numbers == {day(n): n + 1 for n in range(1, 8)}
    expected = [",".join(HEADER)] + [",".join(line(n)) for n in range(1, 8)]
    assert path.read_text(encoding="utf-8").splitlines() == expected
    assert sheets.upsert_rows([metric(n) for n in range(1, 8)]).write_calls == 0
    assert sheets.read_rows()[day(7)] == {
        "attempts": 700,
        "successful_attempts": 70,
        "unique_users": 8,
    }
    assert [p.name for p in path.parent.iterdir()] == ["daily_metrics.csv"]  # no temp files left


def test_local_csv_corrects_hand_edits(tmp_path: Path) -> None:
    sheets = SheetsResource(backend="csv", local_dir=str(tmp_path))
    sheets.upsert_rows([metric(1), metric(2)])
    path = tmp_path / "daily_metrics.csv"
    lines = path.read_text(encoding="utf-8").splitlines()
    path.write_text("\n".join([*lines, lines[1], "", "2024-10-02,1,1,1"]) + "\n", encoding="utf-8")

    result = sheets.upsert_rows([metric(2)])

    assert result.duplicates_collapsed == 2
    assert path.read_text(encoding="utf-8").splitlines() == [
        ",".join(HEADER),
        ",".join(line(1)),
        ",".join(line(2)),
    ]


# ---------------------------------------------------------------------------------------------
# The merge, property-tested against a plain dict model
# ---------------------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    batches=st.lists(
        st.lists(st.tuples(st.integers(1, 40), st.integers(0, 3)), min_size=1, max_size=12).map(
            lambda xs: dict(xs)
        ),
        min_size=1,
        max_size=6,
    )
)
def test_any_sequence_of_upserts_matches_a_dict_model(batches: list[dict[int, int]]) -> None:
    grid: list[list[Any]] = []
    model: dict[str, list[Any]] = {}
    for batch in batches:
        rows = [metric(n, scale) for n, scale in batch.items()]
        plan = plan_upsert(grid, rows)
        for row in rows:
            model[row["date"]] = list(row.values())
        if plan.top is not None:  # write the block like the API would
            grid = apply_block(grid, plan.top, plan.table.col, plan.block)
        assert grid == [HEADER, *(model[d] for d in sorted(model))]
        assert plan_upsert(grid, rows).top is None  # idempotent


# ---------------------------------------------------------------------------------------------
# Emulator fidelity for plain gspread use (what a demo or a human might call)
# ---------------------------------------------------------------------------------------------


def _redirect_session(base_url: str) -> Any:
    import requests

    class Redirect(requests.Session):
        def request(self, method: str, url: str, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
            url = url.replace("https://sheets.googleapis.com", base_url)
            return super().request(method, url, *args, **kwargs)

    return Redirect()


def test_emulator_serves_common_gspread_worksheet_calls(emu: SheetsEmulator) -> None:
    client = gspread.Client(auth=None, session=_redirect_session(emu.url))
    with pytest.raises(gspread.SpreadsheetNotFound):
        client.open_by_key("missing")
    book = client.open_by_key(KEY)
    assert book.title == "IT Resume report"
    with pytest.raises(gspread.WorksheetNotFound):
        book.worksheet("Stats")
    ws = book.add_worksheet("Stats", rows=10, cols=5)

    ws.update([["a", 1], ["b", 2]], "A1")
    ws.append_rows([["c", 3]])
    ws.batch_update([{"range": "C1:C2", "values": [["x"], ["y"]]}])
    assert ws.get_all_values() == [["a", "1", "x"], ["b", "2", "y"], ["c", "3", ""]]
    assert ws.get("B2:C3") == [["2", "y"], ["3"]]
    assert ws.get("A:A") == [["a"], ["b"], ["c"]]
    assert ws.get_all_records() == [{"a": "b", "1": 2, "x": "y"}, {"a": "c", "1": 3, "x": ""}]
    assert [vr for vr in ws.batch_get(["A1", "B1:B3"])] == [[["a"]], [["1"], ["2"], ["3"]]]
    with pytest.raises(gspread.exceptions.APIError, match="exceeds grid limits"):
        ws.update([["too far"]], "A11")
    ws.clear()
    assert ws.get_all_values() in ([], [[]])  # gspread pads an empty answer to [[]]
    assert emu.grid_size(KEY, "Stats") == (10, 5)  # OVERWRITE append: room was left
