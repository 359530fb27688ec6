"""The streaming fast path (payload.process_day) against the plain reference (reference_rows).

process_day takes the structs msgspec decodes through the column lane (each value rule proven
for a whole column, the window compared as text, batch-wise dedupe) and sends every record the
typed decode refuses through `to_row`. Whole generated payloads must give exactly the rows, the
quarantine, the counts and the metrics of `reference_rows`, whatever the chunking.

Both hold a bad record to one rule: it is quarantined once, under its own day. A bad record whose
created_at is readable belongs to that moment's day, and any other day's load counts it as out of
its window; one whose created_at is unreadable belongs to the day whose payload holds it; an
exact repeat of a bad record in a day's payload is quarantined once and counted as a duplicate.
"""

from __future__ import annotations

import io
import json
from dataclasses import asdict
from datetime import date, datetime, timedelta

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from itresume_pipeline.local.simulator import render_day_json
from itresume_pipeline.payload import Counts, process_day
from itresume_pipeline.records import ApiRecord, column_lines, decode_records
from itresume_pipeline_tests.reference import reference_line, reference_moment, reference_rows

DAY = date(2024, 10, 8)
START = datetime(2024, 10, 8)
END = START + timedelta(days=1)
HEX = st.text(alphabet="0123456789abcdef", min_size=32, max_size=32)
SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Values for the passback: the API's usual text, Cyrillic (non-ASCII, as in real course names),
# apostrophes (repr switches to double quotes), and what COPY or the scanner must escape.
PASSBACK_TEXT = st.sampled_from(
    ["", "key", "Школа_данных", "it's", 'say "hi"', "a\\b", "tab\there", "nl\nx", "😀", "},{"]
) | st.text(alphabet="ab:/-+ {}',\"\\\tюЁ\x00\u2028", max_size=12)

# Moments at and around the window edges, where text order and time order must agree.
EDGES = [START, END, START - timedelta(microseconds=1), END - timedelta(microseconds=1)]
MOMENTS = st.sampled_from(EDGES) | st.datetimes(
    min_value=START - timedelta(hours=2), max_value=END + timedelta(hours=2)
)


@st.composite
def timestamps(draw: st.DrawFn) -> str:
    moment = draw(MOMENTS)
    form = draw(st.integers(0, 9))
    if form <= 5:  # the API's canonical form: the fast lane
        return moment.isoformat(" ", "microseconds")
    if form == 6:  # no fraction, or a short one, or a T: valid, but the general path
        return moment.isoformat(draw(st.sampled_from([" ", "T"])), "seconds")
    if form == 7:
        return moment.isoformat("T", "microseconds")
    if form == 8:
        return moment.isoformat(" ", "milliseconds")
    return draw(
        st.sampled_from(
            [
                "2024-02-30 00:00:00.000000",  # not a real date, canonical shape
                "2024-13-08 00:00:00.000000",
                "2024-10-08 24:00:00.000000",
                "2024-10-08 12:60:00.000000",
                "0000-10-08 12:00:00.000000",
                "2024-10-08 12:00:00.0000000",
                "2024-10-08",
                "",
            ]
        )
    )


@st.composite
def passbacks(draw: st.DrawFn, user: str) -> str:
    params: dict[str, object] = {
        "oauth_consumer_key": draw(st.sampled_from(["", ""]) | PASSBACK_TEXT),
        "lis_result_sourcedid": f"course-v1:{draw(PASSBACK_TEXT)}+c+r:host-{'b' * 32}:{user}",
    }
    if draw(st.booleans()):
        params["lis_outcome_service_url"] = draw(
            st.sampled_from(["https://lms.example/outcome", None]) | PASSBACK_TEXT
        )
    shape = draw(st.integers(0, 9))
    if shape == 0:
        params = dict(reversed(list(params.items())))
    elif shape == 1:
        params.pop("oauth_consumer_key")
    elif shape == 2:
        params["extra"] = draw(PASSBACK_TEXT)
    elif shape == 3:
        return draw(st.sampled_from(["{", "[]", "{'a': 1}", "None", "{'x': 'y'}\x00"]))
    text = repr(params)
    if shape == 4:
        text = text.replace(": ", ":")  # other spacing: the general path's parser
    elif shape == 5:  # whitespace that JSON and literal_eval both skip, around and between tokens
        text = draw(st.sampled_from([" ", "\t", "\n", "\r\n", ""])) + text.replace(", '", ",\n '")
    return text


# Wrong values that `ApiRecord` accepts: they pass the typed decode, so they reach the column
# lane's value checks, which must hand each one to the per-record lane.
ODD_STRINGS = {
    "lti_user_id": st.sampled_from(["g" * 32, "é" * 32, "G" * 32, "٣" * 32, " " * 32]),
    "created_at": st.sampled_from(["", "RUN", "x" * 10_001, "0" * 31, "2024-10-08\n"]),
}


@st.composite
def records(draw: st.DrawFn, plain: bool = False) -> object:
    """A record; `plain` ones keep the API's JSON types (str, true/false/null/0/1) and keys."""
    kind = draw(st.integers(1 if plain else 0, 29))
    if plain and kind in (2, 3):
        name = draw(st.sampled_from(sorted(ODD_STRINGS)))
        user = draw(HEX)
        rec = {
            "lti_user_id": user,
            "passback_params": draw(passbacks(user)),
            "is_correct": draw(st.sampled_from([None, 0, 1, True, False])),
            "attempt_type": draw(st.sampled_from(["run", "submit"])),
            "created_at": draw(timestamps()),
        }
        rec[name] = draw(ODD_STRINGS[name])
        return rec
    if kind == 0:
        return draw(st.sampled_from(["text", 12, None, [1, 2], True]))
    user = draw(HEX)
    rec: dict[str, object] = {
        "lti_user_id": user if kind != 1 else user.upper(),
        "passback_params": draw(passbacks(user)),
        "is_correct": draw(st.sampled_from([None, 0, 1, 0, 1, True, False])),
        "attempt_type": draw(st.sampled_from(["run", "submit"])),
        "created_at": draw(timestamps()),
    }
    if kind == 2:
        name = draw(st.sampled_from(sorted(rec)))
        if draw(st.booleans()):
            del rec[name]
        else:
            rec[name] = draw(st.sampled_from([None, 2, 1.0, "1", "", "RUN", [], {}, "x" * 10_001]))
    if kind == 3:
        rec["unexpected"] = draw(PASSBACK_TEXT)
    return rec


@st.composite
def payloads(draw: st.DrawFn, plain: bool = False) -> bytes:
    """A JSON array of records, with exact repeats (duplicates) scattered through it."""
    items = draw(st.lists(records(plain), max_size=40))
    for _ in range(draw(st.integers(0, 6))):
        if items:
            items.insert(draw(st.integers(0, len(items))), draw(st.sampled_from(items)))
    if draw(st.booleans()):  # Python backends escape non-ASCII; orjson does not
        return json.dumps(items).encode()
    return orjson.dumps(items)


def untyped(payload: bytes) -> list[int]:
    """Indices of the records the typed decode refused: the per-record lane judges them."""
    return [i for i, record in enumerate(decode_records(payload)) if type(record) is not ApiRecord]


def run_fast(
    payload: bytes, chunk_size: int, start: datetime = START, end: datetime = END
) -> tuple[list[str], list[tuple[str, str]], Counts]:
    lines: list[str] = []
    rejected: list[tuple[str, str]] = []
    stats = Counts()
    for batch in process_day(io.BytesIO(payload), start, end, chunk_size=chunk_size):
        # COPY lines end in LF only (U+2028 and friends may sit inside a value)
        lines.extend(line + "\n" for line in batch.copy_data.decode().split("\n")[:-1])
        rejected.extend(batch.rejects)
        stats.add(batch)
    return lines, rejected, stats


def metrics_of_lines(lines: list[str]) -> tuple[int, int, int]:
    fields = [line.split("\t") for line in lines]
    return len(fields), sum(f[4] == "t" for f in fields), len({f[0] for f in fields})


def assert_equivalent(
    payload: bytes, chunk_size: int, start: datetime = START, end: datetime = END
) -> list[tuple[str, str]]:
    """The fast path's day equals the reference's; returns the fast path's quarantine."""
    expected = reference_rows(payload, start, end)
    lines, rejected, stats = run_fast(payload, chunk_size, start, end)

    # the rows, in order, as COPY lines
    assert lines == [reference_line(a) for a in expected.rows]
    # the quarantine: the same records, in order, each for a reason naming the same field
    assert [orjson.loads(raw) for _, raw in rejected] == [rec for _, rec in expected.rejected]
    assert [reason.split(":", 1)[0] for reason, _ in rejected] == [
        reason.split(":", 1)[0] for reason, _ in expected.rejected
    ]
    # the counts: each record received is counted exactly once
    assert stats.received == stats.loaded + stats.rejected + stats.duplicates + stats.out_of_window
    assert asdict(stats) == {
        "received": expected.received,
        "loaded": len(expected.rows),
        "rejected": len(expected.rejected),
        "duplicates": expected.duplicates,
        "out_of_window": expected.out_of_window,
    }
    # the metrics daily_metrics computes from those rows
    assert metrics_of_lines(lines) == (
        len(expected.rows),
        sum(a.is_correct is True for a in expected.rows),
        len({a.user_id for a in expected.rows}),
    )
    return rejected


@SETTINGS
@given(payloads(), st.sampled_from([1, 7, 64, 4096, 1 << 22]))
def test_process_day_equals_the_reference(payload: bytes, chunk_size: int) -> None:
    assert_equivalent(payload, chunk_size)


@SETTINGS
@given(payloads(plain=True), st.sampled_from([64, 4096, 1 << 22]))
def test_column_lane_equals_the_reference(payload: bytes, chunk_size: int) -> None:
    """Payloads msgspec decodes whole, so every record goes through the column lane first."""
    assert not untyped(payload)  # every record goes through the column lane first
    assert_equivalent(payload, chunk_size)


# The days around DAY: together they hold every moment `timestamps` draws.
DAYS = [(START + timedelta(days=k), START + timedelta(days=k + 1)) for k in (-1, 0, 1)]


@SETTINGS
@given(payloads() | payloads(plain=True), st.sampled_from([7, 4096, 1 << 22]))
def test_each_bad_record_is_quarantined_once_under_its_own_day(
    payload: bytes, chunk_size: int
) -> None:
    """The same payload loaded as each of three days: a bad record with a readable created_at
    is quarantined by its own day only, once; one without is quarantined by every day."""
    readable_by_day: list[list[str]] = []
    unreadable_by_day: list[set[str]] = []
    for start, end in DAYS:
        raws = [raw for _, raw in assert_equivalent(payload, chunk_size, start, end)]
        assert len(raws) == len(set(raws))  # once a day
        readable = []
        for raw in raws:
            moment = reference_moment(orjson.loads(raw))
            if moment is not None:
                assert start <= moment < end  # under its own day
                readable.append(raw)
        readable_by_day.append(readable)
        unreadable_by_day.append(set(raws) - set(readable))
    assert unreadable_by_day[0] == unreadable_by_day[1] == unreadable_by_day[2]
    quarantined = [raw for raws in readable_by_day for raw in raws]
    assert len(quarantined) == len(set(quarantined))  # by one day only
    everywhere = reference_rows(payload, datetime.min, datetime.max).rejected
    own_day = {json.dumps(rec) for _, rec in everywhere if reference_moment(rec) is not None}
    assert {json.dumps(orjson.loads(raw)) for raw in quarantined} == own_day  # and none lost


def test_a_bad_record_is_quarantined_once_under_its_own_day_in_both_lanes() -> None:
    user = "a" * 32
    good = {
        "lti_user_id": user,
        "passback_params": repr({"oauth_consumer_key": "", "lis_result_sourcedid": "s"}),
        "is_correct": 1,
        "attempt_type": "run",
        "created_at": "2024-10-08 10:00:00.000000",
    }
    tomorrow = {**good, "lti_user_id": "G" * 32, "created_at": "2024-10-09 10:00:00.000000"}
    at_end = {**good, "lti_user_id": "g" * 32, "created_at": "2024-10-09 00:00:00.000000"}
    last = {**good, "lti_user_id": "g" * 32, "created_at": "2024-10-08 23:59:59.999999"}
    unreadable = {**good, "lti_user_id": "G" * 32, "created_at": "2024-10-32 10:00:00.000000"}
    repeated = {**good, "passback_params": "{'a': 1}"}
    plain = [good, tomorrow, at_end, last, unreadable, repeated, repeated, good]
    mixed = [*plain, "not an object", "not an object"]
    assert not untyped(orjson.dumps(plain))  # the column lane first
    assert untyped(orjson.dumps(mixed)) == [8, 9]  # to_row judges them
    next_day = (END, END + timedelta(days=1))
    for chunk_size in (1, 64, 1 << 22):
        rejected = assert_equivalent(orjson.dumps(plain), chunk_size)
        assert [orjson.loads(raw) for _, raw in rejected] == [last, unreadable, repeated]
        assert run_fast(orjson.dumps(plain), chunk_size)[2] == Counts(
            received=8, loaded=1, rejected=3, duplicates=2, out_of_window=2
        )
        rejected = assert_equivalent(orjson.dumps(mixed), chunk_size)
        assert [orjson.loads(raw) for _, raw in rejected] == [
            last,
            unreadable,
            repeated,
            "not an object",
        ]
        assert run_fast(orjson.dumps(mixed), chunk_size)[2] == Counts(
            received=10, loaded=1, rejected=4, duplicates=3, out_of_window=2
        )
        rejected = assert_equivalent(orjson.dumps(plain), chunk_size, *next_day)
        assert [orjson.loads(raw) for _, raw in rejected] == [tomorrow, at_end, unreadable]


def test_column_lane_judges_odd_but_typed_records_itself() -> None:
    user = "a" * 32
    good = {
        "lti_user_id": user,
        "passback_params": repr({"oauth_consumer_key": "", "lis_result_sourcedid": "s"}),
        "is_correct": 1,
        "attempt_type": "run",
        "created_at": "2024-10-08 10:00:00.000000",
    }
    odd = [
        {**good, "lti_user_id": user.upper()},  # lower-cased in the column
        {**good, "created_at": "2024-10-08T10:00:00"},  # accepted, normalized
        {**good, "passback_params": repr({"lis_result_sourcedid": "O'Reilly"})},  # double-quoted
        {**good, "created_at": "2024-10-09 00:00:00.000000"},  # the caller's window decides
        {**good, "lti_user_id": "g" * 32, "passback_params": "{'a': 1}"},  # the first field wins
        {**good, "passback_params": "{'a': 1}"},  # rejected
    ]
    lines, reasons, created = column_lines(decode_records(orjson.dumps([good, *odd, good])))
    assert lines[0] == lines[1] == lines[2] == lines[7]
    assert lines[0] == f"{user}\t\ts\t\\N\tt\trun\t2024-10-08 10:00:00.000000\n"
    assert lines[3] == f"{user}\t\\N\tO'Reilly\t\\N\tt\trun\t2024-10-08 10:00:00.000000\n"
    assert created[4] == "2024-10-09 00:00:00.000000" and lines[4] is not None
    assert sorted(reasons) == [5, 6] and lines[5] is None and lines[6] is None
    assert reasons[5].startswith("lti_user_id: ") and reasons[6].startswith("passback_params: ")
    assert created[5] == created[0]  # a bad record still has its own day
    refused = {**good, "attempt_type": "RUN"}  # refused by the typed decode: to_row judges it
    assert_equivalent(orjson.dumps([good, *odd, refused, good]), 1 << 22)


@settings(max_examples=20, deadline=None)
@given(st.integers(0, 400), st.sampled_from([512, 1 << 14, 1 << 22]))
def test_process_day_equals_the_reference_on_simulator_days(records: int, chunk_size: int) -> None:
    """The simulator's bytes: the real shape, with Cyrillic course names and missing URLs."""
    assert_equivalent(render_day_json(DAY, attempts_per_day=records), chunk_size)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(0, 5), max_size=40), st.sampled_from([1, 300, 1 << 22]))
def test_exact_repeats_load_once_within_and_across_batches(
    picks: list[int], chunk_size: int
) -> None:
    """The day's dedupe: the first occurrence of a row is loaded, whichever batch repeats it."""
    pool = orjson.loads(render_day_json(DAY, attempts_per_day=6))
    payload = orjson.dumps([pool[i] for i in picks])
    assert_equivalent(payload, chunk_size)
    lines, _, stats = run_fast(payload, chunk_size)
    assert len(lines) == len(set(lines)) == len({orjson.dumps(pool[i]) for i in picks})
    assert stats.duplicates == len(picks) - len(lines)


def test_a_few_odd_records_keep_the_rest_of_the_chunk_in_the_column_lane() -> None:
    """A wrong type or a missing field costs one record the column lane, not its whole chunk;
    an extra key costs nothing."""
    good = orjson.loads(render_day_json(DAY, attempts_per_day=100))
    odd = {
        10: {**good[10], "is_correct": 2},  # rejected by the per-record lane
        20: {**good[20], "source": "lms"},  # an extra key: loaded, the key ignored
        25: {k: v for k, v in good[25].items() if k != "created_at"},  # rejected
        30: "not a record",
    }
    records = [odd.get(i, record) for i, record in enumerate(good)]
    payload = orjson.dumps(records)
    assert untyped(payload) == [10, 25, 30]
    assert decode_records(payload)[25] == odd[25]
    assert_equivalent(payload, 1 << 22)

    many = orjson.dumps([{**record, "is_correct": 2} for record in good[:40]] + good[40:])
    assert untyped(many) == list(range(40))  # the other 60 stay typed
    assert_equivalent(many, 1 << 22)
