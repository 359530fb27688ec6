"""What people do to the report sheet: move the table, retype dates, break the header.

Every test drives the real writer through gspread over HTTP against the Sheets emulator; the
"person" edits the sheet either directly (``set_values``) or, for typed dates, through gspread
with ``USER_ENTERED``, the way the Sheets UI stores what is typed.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

import gspread
import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from itresume_pipeline.local.sheets_emulator import SheetsEmulator
from itresume_pipeline.resources.sheets import (
    FIXED_COLUMNS,
    SheetsLayoutError,
    SheetsResource,
    UpsertPlan,
    apply_block,
    plan_upsert,
)
from itresume_pipeline_tests.helpers import sheet_day, sheet_metric

HEADER = list(FIXED_COLUMNS)
KEY = "hand-edited"
WS = "daily_metrics"
TITLE = "IT Resume: attempts per day"

day, metric = sheet_day, sheet_metric  # short names for the tables below


def cells(n: int, scale: int = 1) -> list[Any]:
    """The typed cells the writer puts in the sheet for ``metric(n, scale)``."""
    return list(metric(n, scale).values())


def line(n: int, scale: int = 1) -> list[str]:
    """The sheet row ``metric(n, scale)`` gives, as the emulator shows it."""
    return [str(v) for v in metric(n, scale).values()]


@pytest.fixture
def emu() -> Iterator[SheetsEmulator]:
    with SheetsEmulator() as emulator:
        emulator.create_spreadsheet(KEY, sheets=[WS], locale="ru_RU")
        yield emulator


@pytest.fixture
def sheets(emu: SheetsEmulator) -> SheetsResource:
    return SheetsResource(
        emulator_host=emu.host_port, spreadsheet_id=KEY, backoff_base_s=0.01, backoff_max_s=0.05
    )


def person(emu: SheetsEmulator) -> gspread.Worksheet:
    """The worksheet as a person's client sees it: plain gspread against the emulator."""

    class ToEmulator(requests.Session):
        def request(self, method: str, url: str, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
            url = url.replace("https://sheets.googleapis.com", emu.url)
            return super().request(method, url, *args, **kwargs)

    client = gspread.Client(auth=None, session=ToEmulator())
    return client.open_by_key(KEY).worksheet(WS)


def written(grid: list[list[Any]], plan: UpsertPlan) -> list[list[Any]]:
    """The whole sheet after the plan's write: its block in the table's cells."""
    return grid if plan.top is None else apply_block(grid, plan.top, plan.table.col, plan.block)


def put_values(emu: SheetsEmulator) -> list[str]:
    """The ranges the values writes targeted."""
    return [r.path.split("/values/")[1] for r in emu.log if r.method == "PUT"]


# ---------------------------------------------------------------------------------------------
# The table is wherever its header is
# ---------------------------------------------------------------------------------------------


def test_a_title_row_and_blank_rows_above_the_header_keep_the_table_where_it_is(
    emu: SheetsEmulator, sheets: SheetsResource
) -> None:
    emu.set_values(KEY, WS, [[TITLE], [""], HEADER, cells(1), cells(3)])
    emu.reset_log()

    result = sheets.upsert_rows([metric(2), metric(3, scale=2)])

    assert emu.values(KEY, WS) == [[TITLE], [], HEADER, line(1), line(2), line(3, scale=2)]
    assert result.row_numbers == {day(2): 5, day(3): 6}
    assert result.write_calls == 1 == emu.write_calls()
    assert put_values(emu) == ["'daily_metrics'!A5:D6"]
    assert sheets.read_rows()[day(3)]["attempts"] == 600
    emu.reset_log()
    assert sheets.upsert_rows([metric(2), metric(3, scale=2)]).write_calls == 0


def test_a_table_moved_right_is_written_only_in_its_own_columns(
    emu: SheetsEmulator, sheets: SheetsResource
) -> None:
    left, right = "left of the table", "right of a blank column"
    emu.set_values(
        KEY,
        WS,
        [
            ["", "", TITLE],
            ["", "", *HEADER, "notes", "", right],
            [left, "", *cells(1), "first day", "", right],
            ["", "", *cells(4), "", "", right],
        ],
    )
    emu.reset_log()

    result = sheets.upsert_rows([metric(2), {**metric(3), "reject_rate": 0.5}])

    assert emu.values(KEY, WS) == [
        ["", "", TITLE],
        ["", "", *HEADER, "notes", "reject_rate", right],
        [left, "", *line(1), "first day", "", right],
        ["", "", *line(2), "", "", right],
        ["", "", *line(3), "", "0.5"],
        ["", "", *line(4)],
    ]
    assert result.row_numbers == {day(2): 4, day(3): 5}
    assert result.write_calls == 1
    assert put_values(emu) == ["'daily_metrics'!C2:H6"]  # the header gained a column; no more
    assert sheets.read_rows()[day(1)]["notes"] == "first day"


@pytest.mark.parametrize(
    ("cells", "found"),
    [
        # a title row a person typed where the header was, and no header anywhere
        ([[TITLE], [day(1), 100, 10, 2]], f"row 1 holds '{TITLE}'"),
        # a renamed header is no header: the writer does not guess which column is which
        ([["Date", "Attempts", "Successful", "Users"], line(1)], "row 1 holds 'Date', 'Attempts'"),
        # two tables: which one is the report?
        ([HEADER, line(1), [""], HEADER, line(2)], "2 header rows"),
        # one header naming a column twice
        ([[*HEADER, "attempts"], line(1)], "names 'attempts' 2 times (columns B, E)"),
    ],
    ids=["title-row-only", "renamed-header", "two-headers", "a-column-named-twice"],
)
def test_a_header_that_cannot_be_found_unambiguously_stops_the_write(
    emu: SheetsEmulator, sheets: SheetsResource, cells: list[list[Any]], found: str
) -> None:
    emu.set_values(KEY, WS, cells)
    before = emu.raw_values(KEY, WS)
    emu.reset_log()

    with pytest.raises(SheetsLayoutError, match=f"worksheet '{WS}'") as info:
        sheets.upsert_rows([metric(1), metric(2)])

    assert found in str(info.value)
    assert emu.write_calls() == 0
    assert emu.raw_values(KEY, WS) == before
    with pytest.raises(SheetsLayoutError):  # the check's reader refuses the same sheet
        sheets.read_rows()


def test_the_csv_sheet_keeps_a_moved_table_in_place_too(tmp_path: Path) -> None:
    sheets = SheetsResource(backend="csv", local_dir=str(tmp_path))
    path = tmp_path / "daily_metrics.csv"
    path.write_text(
        f"{TITLE}\n\n,{','.join(HEADER)}\n,{','.join(line(3))},kept\n", encoding="utf-8"
    )

    result = sheets.upsert_rows([metric(2)])

    assert result.row_numbers == {day(2): 4}
    assert path.read_text(encoding="utf-8").splitlines() == [
        TITLE,
        "",
        f",{','.join(HEADER)}",
        f",{','.join(line(2))},kept",
        f",{','.join(line(3))}",
    ]


def test_the_merge_keeps_the_table_in_place_in_any_position() -> None:
    """The plan for a table at C4 is the plan for the same table at A1, shifted."""
    at_a1 = [HEADER, [day(1), 100, 10, 2], [day(3), 300, 30, 4]]
    moved = [[TITLE], [], []] + [["x", "", *row, "", "kept"] for row in at_a1]
    rows = [metric(2), metric(3, scale=2)]

    plain, shifted = plan_upsert(at_a1, rows), plan_upsert(moved, rows)

    assert shifted.grid == plain.grid and shifted.block == plain.block
    assert (shifted.table.row, shifted.table.col) == (3, 2)
    assert {d: n - 3 for d, n in shifted.row_numbers.items()} == plain.row_numbers
    spliced = written(moved, shifted)
    assert spliced[:3] == [[TITLE], [], []]
    assert [r[:2] for r in spliced[3:]] == [["x", ""]] * 3 + [["", ""]]
    assert [r[6:] for r in spliced[3:6]] == [["", "kept"]] * 3


# ---------------------------------------------------------------------------------------------
# A date a person typed is that date, in any form
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "typed",
    [
        pytest.param(("set", "03.10.2024"), id="day-first-text"),
        pytest.param(("set", date(2024, 10, 3)), id="a-real-date"),
        pytest.param(("user", "03.10.2024"), id="typed-in-a-russian-sheet"),
        pytest.param(("user", "'03.10.2024"), id="typed-as-text"),
    ],
)
def test_a_retyped_date_is_rewritten_in_place(
    emu: SheetsEmulator, sheets: SheetsResource, typed: tuple[str, Any]
) -> None:
    sheets.upsert_rows([metric(n) for n in range(1, 6)])
    how, value = typed
    if how == "set":
        cells = emu.raw_values(KEY, WS)
        cells[3][0] = value
        emu.set_values(KEY, WS, cells)
    else:
        person(emu).update([[value]], "A4", value_input_option="USER_ENTERED")
    emu.reset_log()

    result = sheets.upsert_rows([metric(3, scale=2)])

    assert emu.values(KEY, WS) == [HEADER, *(line(n, 2 if n == 3 else 1) for n in range(1, 6))]
    assert result.row_numbers == {day(3): 4}
    assert result.write_calls == 1
    assert put_values(emu) == ["'daily_metrics'!A4:D4"]


def test_the_emulator_stores_typed_dates_like_google(emu: SheetsEmulator) -> None:
    """What the reader relies on: a date typed in the UI is a number to UNFORMATTED_VALUE."""
    ws = person(emu)
    ws.update([["03.10.2024", "'03.10.2024", "42", "x"]], "A1", value_input_option="USER_ENTERED")

    serial = (date(2024, 10, 3) - date(1899, 12, 30)).days
    assert ws.get("A1:D1", value_render_option="UNFORMATTED_VALUE") == [
        [serial, "03.10.2024", 42, "x"]
    ]
    assert ws.get("A1:D1") == [["03.10.2024", "03.10.2024", "42", "x"]]  # FORMATTED_VALUE
    assert ws.get(
        "A1",
        value_render_option="UNFORMATTED_VALUE",
        date_time_render_option="FORMATTED_STRING",
    ) == [["03.10.2024"]]
    ws.update([["2024-10-03"]], "A2", value_input_option="RAW")
    assert ws.get("A2", value_render_option="UNFORMATTED_VALUE") == [["2024-10-03"]]
    assert emu.raw_values(KEY, WS)[0][0] == date(2024, 10, 3)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    title_rows=st.integers(0, 3),
    shift=st.integers(0, 3),
    batches=st.lists(
        st.dictionaries(st.integers(1, 20), st.integers(1, 3), min_size=1, max_size=6),
        min_size=1,
        max_size=4,
    ),
)
def test_any_upserts_into_a_moved_table_never_touch_other_cells(
    title_rows: int, shift: int, batches: list[dict[int, int]]
) -> None:
    """Outside cells (titles, a column left of the table) stay; the table matches a dict model."""
    pad = [""] * shift
    grid: list[list[Any]] = [[f"title {i}"] for i in range(title_rows)]
    grid.append([*pad, *HEADER])
    for n in (5, 9):
        grid.append([*pad, *cells(n)])
        if shift:
            grid[-1][0] = f"note {n}"  # a person's cell left of the table, not in it
    before = [list(row) for row in grid]
    model = {day(5): cells(5), day(9): cells(9)}
    for batch in batches:
        rows = [metric(n, scale) for n, scale in batch.items()]
        plan = plan_upsert(grid, rows)
        grid = written(grid, plan)
        model.update({row["date"]: list(row.values()) for row in rows})

        assert grid[:title_rows] == before[:title_rows]
        assert [row[:shift] for row in grid[title_rows : title_rows + 3]] == [
            row[:shift] for row in before[title_rows:]
        ]
        table = [row[shift : shift + 4] for row in grid[title_rows:]]
        assert table == [HEADER, *(model[d] for d in sorted(model))]
        assert plan_upsert(grid, rows).top is None  # a rerun writes nothing
