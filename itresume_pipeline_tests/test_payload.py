"""payload.py: streaming a day's JSON array into COPY batches, against a whole-payload reference."""

from __future__ import annotations

import gzip
import io
import json
from dataclasses import asdict
from datetime import datetime, timedelta, timezone

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from itresume_pipeline.payload import (
    Counts,
    PayloadError,
    ProcessedBatch,
    UndecodableRecord,
    count_records,
    iter_records,
    process_day,
)
from itresume_pipeline.records import MAX_FIELD_CHARS
from itresume_pipeline_tests.reference import reference_line, reference_rows
from itresume_pipeline_tests.strategies import PASSBACK, USER, record, records

START, END = datetime(2024, 10, 8), datetime(2024, 10, 9)
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
CHUNKS = st.sampled_from([1, 7, 64, 64, 300, 4096, 4 << 20])

# Strings that look like record boundaries, and escapes that hide or fake a closing quote.
NASTY = [
    "},",
    '"}, {"',
    '"}, {"lti_user_id": "x"}, ',
    "}\n ,",
    '\\"},',
    "\\",
    "\\\\",
    '\\\\"',
    "]",
    "[{",
    "ю},",
    "😀",
]


def decoded(payload: bytes, chunk_size: int) -> list[object]:
    return [r for batch in iter_records(io.BytesIO(payload), chunk_size) for r in batch]


def run_day(payload: bytes, chunk_size: int = 4 << 20) -> list[ProcessedBatch]:
    return list(process_day(io.BytesIO(payload), START, END, chunk_size=chunk_size))


def total(batches: list[ProcessedBatch]) -> Counts:
    counts = Counts()
    for batch in batches:
        counts.add(batch)
    return counts


def dumps(value: object, style: int) -> bytes:
    """The same array in several layouts: compact, spaced, pretty, odd whitespace."""
    if style == 0:
        return orjson.dumps(value)
    if style == 1:
        return json.dumps(value).encode()
    if style == 2:
        return json.dumps(value, indent=2, ensure_ascii=False).encode()
    text = json.dumps(value, separators=(" ,\r\n\t", " : "), ensure_ascii=False)
    return b" \n" + text.encode() + b"\n\t "


# --------------------------------------------------------------------------- iter_records
@SETTINGS
@given(
    st.lists(
        st.one_of(
            st.dictionaries(st.sampled_from(["a", "b", "},"]), st.sampled_from(NASTY) | st.text()),
            st.sampled_from(NASTY),
            st.integers(-(2**63), 2**63 - 1),
            st.lists(st.sampled_from(NASTY), max_size=3),
            st.none(),
        ),
        max_size=8,
    ),
    CHUNKS,
    st.integers(0, 3),
)
def test_iter_records_equals_json_loads(items: list[object], chunk_size: int, style: int) -> None:
    payload = dumps(items, style)
    assert decoded(payload, chunk_size) == json.loads(payload)
    # count_records proves the structure with msgspec's undecoded elements instead
    assert count_records(io.BytesIO(payload), chunk_size) == len(items)


@pytest.mark.parametrize("chunk_size", [1, 2, 3, 5, 8, 13, 21, 34, 55, 89, 144, 4 << 20])
def test_iter_records_cuts_anywhere_inside_nasty_strings(chunk_size: int) -> None:
    items = [{"s": s, "t": [s, {"u": s}]} for s in NASTY] * 3
    payload = json.dumps(items, ensure_ascii=False).encode()
    assert decoded(payload, chunk_size) == items


@pytest.mark.parametrize("payload", [b"[]", b"  [ ] \n", b"\xef\xbb\xbf[]", b"[\n]"])
def test_iter_records_empty_array(payload: bytes) -> None:
    assert decoded(payload, 1) == []
    assert decoded(payload, 4 << 20) == []


def test_iter_records_record_much_larger_than_a_chunk() -> None:
    big = {"s": "},{" * 20_000, "n": list(range(1000))}
    items = [1, big, {"x": "y"}, big]
    for chunk_size in (64, 4096, 1 << 20):
        assert decoded(json.dumps(items).encode(), chunk_size) == items


def test_iter_records_streams_instead_of_reading_everything() -> None:
    """The first batch arrives after a chunk or two, not after the whole payload."""
    payload = orjson.dumps([record()] * 20_000)
    stream = io.BytesIO(payload)
    first = next(iter_records(stream, chunk_size=64 << 10))
    assert first
    assert stream.tell() <= 2 * (64 << 10) < len(payload)


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"", "not a JSON array: it is empty"),
        (b" \n ", "not a JSON array: it is only whitespace"),
        (b"<html><body>502 Bad Gateway</body></html>", "not a JSON array: it starts with b'<html>"),
        (b'{"errors": ["bad key"]}', "not a JSON array"),
        (b'"[]"', "not a JSON array"),
        (b"[1, 2] x", "after the array's closing ']' at byte offset 7"),
        (b"[1, 2]]", "after the array's closing ']' at byte offset 6"),
        (b"[] []", "after the array's closing ']' at byte offset 3"),
        (b"[1, 2,]", "stray ','"),
        (b"[1,, 2]", "stray ','"),
        (b"[,]", "stray ','"),
        (b'[{"a": 1},]', "trailing ','"),
        (b'[{"a": 1}}, {"b": 2}]', "unexpected '}' at byte offset 9"),
        (b'[{"a": [1}]', "mismatched '}' at byte offset 9"),
        (b'[{"a": 1}, {"b": "x', "truncated: it ends inside a string at byte offset 19"),
        (b'[{"a": 1}, {"b": 2}', "truncated: it ends at byte offset 19"),
    ],
)
def test_iter_records_structural_damage(payload: bytes, message: str) -> None:
    for chunk_size in (1, 4, 4 << 20):
        with pytest.raises(PayloadError) as info:
            decoded(payload, chunk_size)
        assert message in str(info.value)
        with pytest.raises(PayloadError) as info:
            count_records(io.BytesIO(payload), chunk_size)
        assert message in str(info.value)


def test_iter_records_truncation_at_every_offset_is_an_error() -> None:
    items = [record(), {"s": '\\"}, {"'}, record(passback_params=repr({"a": "},\"'"})), [], 7]
    payload = json.dumps(items, ensure_ascii=False).encode()
    assert decoded(payload, 16) == items
    for cut in range(len(payload)):
        for chunk_size in (1, 16, 4 << 20):
            with pytest.raises(PayloadError):
                decoded(payload[:cut], chunk_size)
            with pytest.raises(PayloadError):
                count_records(io.BytesIO(payload[:cut]), chunk_size)


def test_iter_records_garbage_after_a_long_array_is_found_without_buffering_it() -> None:
    payload = orjson.dumps([record()] * 300) + b" <html>" + b"x" * 100_000
    with pytest.raises(PayloadError, match="after the array's closing"):
        decoded(payload, 4096)


def test_iter_records_quarantines_only_the_undecodable_record() -> None:
    good = [record(created_at=f"2024-10-08 00:00:0{i}") for i in range(6)]
    parts = [orjson.dumps(r) for r in good]
    parts[2] = parts[2].replace(b'"submit"', b'"sub\xffmit"')  # invalid UTF-8
    parts[4] = b'{"lti_user_id": "\x00", nonsense}'  # raw NUL, not JSON
    payload = b"[" + b",\n".join(parts) + b"]"
    for chunk_size in (1, 50, 4 << 20):
        out = decoded(payload, chunk_size)
        assert [r for i, r in enumerate(out) if i not in (2, 4)] == [good[i] for i in (0, 1, 3, 5)]
        bad = [out[2], out[4]]
        assert all(type(r) is UndecodableRecord for r in bad)
        assert "sub\\xffmit" in bad[0].raw
        assert "\x00" not in bad[1].raw and "\\x00" in bad[1].raw
        assert bad[0].reason.startswith("record: undecodable JSON at byte offset ")
        assert f"byte offset {payload.index(parts[2])}:" in bad[0].reason
        assert count_records(io.BytesIO(payload), chunk_size) == 6


def test_count_records_reads_a_gzip_landing_file() -> None:
    payload = gzip.compress(orjson.dumps([record()] * 1000 + ["x", 1]))
    with gzip.open(io.BytesIO(payload), "rb") as stream:
        assert count_records(stream, chunk_size=4096) == 1002
    with pytest.raises(PayloadError), gzip.open(io.BytesIO(gzip.compress(b"[1, 2")), "rb") as s:
        count_records(s)


# --------------------------------------------------------------------------- process_day
def field_of(reason: str) -> str:
    return reason.split(":", 1)[0]


def assert_matches_reference(payload: bytes, batches: list[ProcessedBatch]) -> None:
    ref = reference_rows(payload, START, END)
    assert b"".join(b.copy_data for b in batches).decode() == "".join(map(reference_line, ref.rows))
    rejected = [
        (reason.split(":", 1)[0], json.loads(raw)) for b in batches for reason, raw in b.rejects
    ]
    assert rejected == [(reason.split(":", 1)[0], rec) for reason, rec in ref.rejected]
    stats = total(batches)
    assert asdict(stats) == {
        "received": ref.received,
        "loaded": len(ref.rows),
        "rejected": len(ref.rejected),
        "duplicates": ref.duplicates,
        "out_of_window": ref.out_of_window,
    }
    for b in batches:
        assert b.received == b.loaded + b.rejected + b.duplicates + b.out_of_window
        assert b.loaded == b.copy_data.count(b"\n") and b.rejected == len(b.rejects)


@SETTINGS
@given(st.lists(records(), max_size=12), st.data(), CHUNKS, st.integers(0, 3))
def test_process_day_equals_the_reference(
    base: list[object], data: st.DataObject, chunk_size: int, style: int
) -> None:
    items = list(base)
    for _ in range(data.draw(st.integers(0, 4)) if items else 0):  # exact duplicates
        items.insert(data.draw(st.integers(0, len(items))), data.draw(st.sampled_from(base)))
    payload = dumps(items, style)
    assert_matches_reference(payload, run_day(payload, chunk_size))


def test_process_day_counts_window_duplicates_and_rejects() -> None:
    items = [
        record(created_at="2024-10-08 00:00:00"),  # first instant: inside
        record(created_at="2024-10-08 00:00:00.000000"),  # the same row again: duplicate
        record(created_at="2024-10-08T00:00:00"),  # and again
        record(created_at="2024-10-09 00:00:00"),  # window end: outside
        record(created_at="2024-10-07 23:59:59.999999"),  # outside
        record(created_at="2024-10-08 23:59:59.999999"),  # inside
        record(created_at="2024-10-08 23:59:59.999999", is_correct=0),  # differs: loaded
        record(lti_user_id=USER.upper(), created_at="2024-10-08 23:59:59.999999"),  # duplicate
        record(is_correct=True, created_at="2024-10-08 12:00:00"),  # inside
        record(is_correct=1, created_at="2024-10-08 12:00:00.000000"),  # duplicate: 1 is true
        record(lti_user_id="nope"),
        "a string",
    ]
    payload = orjson.dumps(items)
    for chunk_size in (1, 100, 4 << 20):
        batches = run_day(payload, chunk_size)
        stats = total(batches)
        assert stats == Counts(received=12, loaded=4, rejected=2, duplicates=4, out_of_window=2)
        assert [r[0].split(":")[0] for b in batches for r in b.rejects] == [
            "lti_user_id",
            "record",
        ]
        assert [json.loads(r[1]) for b in batches for r in b.rejects] == items[-2:]
        assert_matches_reference(payload, batches)


@pytest.mark.parametrize(
    "special", ["\t", "\n", "\r", "\x00", "\\", "\\t", "юзер", "😀", "'", '"', "},{", "\x0c", ""]
)
def test_process_day_api_shape_with_special_characters(special: str) -> None:
    """The API's exact record shape (the common, fastest path) with one unusual character."""
    sourcedid = PASSBACK["lis_result_sourcedid"] + special
    items = [
        # quoted by hand: raw characters, as a Python literal may carry them (or may not)
        record(
            passback_params=f"{{'oauth_consumer_key': '', 'lis_result_sourcedid': '{sourcedid}'}}"
        ),
        # repr's own rendering of the same value: escapes, or double quotes
        record(passback_params=repr({"oauth_consumer_key": "", "lis_result_sourcedid": sourcedid})),
        record(passback_params=repr(dict(PASSBACK, lis_outcome_service_url=special + "u"))),
        record(passback_params=repr(PASSBACK)[:-2] + "x" * MAX_FIELD_CHARS + special + "'}"),
    ]
    payload = orjson.dumps(items)
    batches = run_day(payload)
    assert_matches_reference(payload, batches)
    assert total(batches).rejected >= 1  # the over-long one at least


def test_process_day_rejects_impossible_dates_even_in_canonical_form() -> None:
    days = ["2024-02-30", "2023-02-29", "2024-10-32", "0000-10-08", "2024-02-29"]
    stamps = [f"{day} 00:00:00.000000" for day in days] + ["2024-10-08 24:00:00.000000"]
    payload = orjson.dumps([record(created_at=stamp) for stamp in stamps])
    batches = run_day(payload)
    assert total(batches) == Counts(received=6, rejected=5, out_of_window=1)
    assert {field_of(reason) for b in batches for reason, _ in b.rejects} == {"created_at"}
    assert_matches_reference(payload, batches)


def test_process_day_converts_an_aware_window_to_utc() -> None:
    payload = orjson.dumps([record(created_at="2024-10-08 01:00:00")])
    msk = timezone(timedelta(hours=3))
    start, end = datetime(2024, 10, 8, 3, tzinfo=msk), datetime(2024, 10, 9, 3, tzinfo=msk)
    batches = list(process_day(io.BytesIO(payload), start, end))
    assert total(batches).loaded == 1


def test_process_day_copy_text_is_exact() -> None:
    params = dict(PASSBACK, lis_outcome_service_url="a\tb\\c")
    payload = orjson.dumps([record(passback_params=repr(params), is_correct=None)])
    [batch] = [b for b in run_day(payload) if b.received]
    assert batch.copy_data.decode() == (
        f"{USER}\t\t{PASSBACK['lis_result_sourcedid']}\ta\\tb\\\\c\t\\N\tsubmit\t"
        "2024-10-08 12:34:56.123456\n"
    )


def test_process_day_quarantines_undecodable_records_with_raw_text() -> None:
    payload = b'[{"a": "\xff"}, ' + orjson.dumps(record())[:-1] + b', "x": tru}]'
    batches = run_day(payload, 8)
    stats = total(batches)
    assert (stats.received, stats.rejected, stats.loaded) == (2, 2, 0)
    raws = [raw for b in batches for _, raw in b.rejects]
    assert raws[0] == '{"a": "\\xff"}'
    assert raws[1].endswith('"x": tru}')


def test_process_day_structural_damage_raises() -> None:
    with pytest.raises(PayloadError):
        run_day(orjson.dumps([record()] * 50)[:-1], 64)
    with pytest.raises(PayloadError):
        run_day(b"<!DOCTYPE html>")


def test_an_undecodable_record_served_twice_is_quarantined_once() -> None:
    """The same broken bytes at two offsets: one row to quarantine (the first), one duplicate."""
    broken = b'{"a": "\xff"}'
    payload = b"[" + b", ".join([broken, orjson.dumps(record()), broken]) + b"]"
    for chunk_size in (8, 4 << 20):
        batches = run_day(payload, chunk_size)
        assert total(batches) == Counts(received=3, loaded=1, rejected=1, duplicates=1)
        [(reason, raw)] = [r for b in batches for r in b.rejects]
        assert reason.startswith("record: undecodable JSON at byte offset 1:")
        assert raw == '{"a": "\\xff"}'
