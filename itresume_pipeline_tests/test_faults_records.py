"""Bad records, end to end: every field wrong in every way, served over HTTP, into PostgreSQL.

One day's payload mixes good records with a catalogue of broken ones (including bytes that are
not valid UTF-8 and JSON that does not parse). Each broken record must land in
`attempts_rejected` with a reason that starts with the field at fault, the good ones (some of
them odd but valid) must load exactly, and nothing may run the text it was given. Hypothesis
then throws arbitrary input at the payload stream and the loader: the only exception allowed is
`PayloadError`, for damage to the array itself.
"""

from __future__ import annotations

import gzip
import io
import os
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from itresume_pipeline.assets.ingestion import postgres_attempts, raw_attempts
from itresume_pipeline.assets.metrics import daily_metrics
from itresume_pipeline.landing import LandingZone
from itresume_pipeline.loading import replace_days
from itresume_pipeline.local.simulator import ApiSimulator
from itresume_pipeline.partitions import day_bounds
from itresume_pipeline.payload import PayloadError, process_day
from itresume_pipeline.records import (
    MAX_FIELD_CHARS,
    PassbackError,
    RejectedRecord,
    parse_passback,
    to_row,
)
from itresume_pipeline.resources.postgres import PostgresResource
from itresume_pipeline_tests.helpers import (
    DAY,
    day_records,
    db_rows,
    expected_attempts,
    make_api,
    metadata,
    metric_row,
    run_pipeline,
)

PWNED = Path("/tmp") / f"itresume-pwned-{uuid.uuid4().hex}"
FIELDS = (
    "record",
    "lti_user_id",
    "attempt_type",
    "is_correct",
    "created_at",
    "passback_params",
    "passback_params.oauth_consumer_key",
    "passback_params.lis_result_sourcedid",
    "passback_params.lis_outcome_service_url",
)
USER = "0123456789abcdef0123456789abcdef"
PASSBACK = (
    "{'oauth_consumer_key': '', 'lis_result_sourcedid': "
    f"'course-v1:Org+C+R:lms.example-{'a' * 32}:{USER}'}}"
)

BASE: dict[str, Any] = {
    "lti_user_id": USER,
    "passback_params": PASSBACK,
    "is_correct": 1,
    "attempt_type": "submit",
    "created_at": "2024-10-08 12:00:00.000000",
}
DROP = object()


def rec(name: str, **changes: Any) -> dict[str, Any]:
    """BASE with some fields changed or dropped, tagged so its rejection can be found."""
    out = {"case": name, **BASE, **changes}
    return {k: v for k, v in out.items() if v is not DROP}


# (record, field the reason must start with, words the reason must contain)
BAD_RECORDS: list[tuple[dict[str, Any], str, str]] = [
    # lti_user_id
    (rec("uid-missing", lti_user_id=DROP), "lti_user_id", "missing"),
    (rec("uid-null", lti_user_id=None), "lti_user_id", "Expected `str`, got `null`"),
    (rec("uid-number", lti_user_id=123), "lti_user_id", "got `int`"),
    (rec("uid-object", lti_user_id={"id": USER}), "lti_user_id", "got `object`"),
    (rec("uid-short", lti_user_id=USER[:31]), "lti_user_id", "length >= 32"),
    (rec("uid-long", lti_user_id=USER + "0"), "lti_user_id", "length <= 32"),
    (rec("uid-not-hex", lti_user_id="g" * 32), "lti_user_id", "expected 32 hex characters"),
    (rec("uid-spaces", lti_user_id=f" {USER[1:]}"), "lti_user_id", "expected 32 hex characters"),
    (rec("uid-empty", lti_user_id=""), "lti_user_id", "length >= 32"),
    (rec("uid-arabic-digits", lti_user_id="٣" * 32), "lti_user_id", "expected 32 hex characters"),
    (rec("uid-nul", lti_user_id=USER[:31] + "\x00"), "lti_user_id", "abcde\\x00'"),
    (rec("uid-huge", lti_user_id="f" * 100_000), "lti_user_id", "length <= 32"),
    (rec("uid-sql", lti_user_id="'; DROP TABLE attempts; --"), "lti_user_id", "length >= 32"),
    # attempt_type
    (rec("type-missing", attempt_type=DROP), "attempt_type", "missing"),
    (rec("type-null", attempt_type=None), "attempt_type", "got `null`"),
    (rec("type-unknown", attempt_type="compile"), "attempt_type", "'compile'"),
    (rec("type-case", attempt_type="RUN"), "attempt_type", "'RUN'"),
    (rec("type-padded", attempt_type="run "), "attempt_type", "'run '"),
    (rec("type-number", attempt_type=1), "attempt_type", "got `int`"),
    (rec("type-list", attempt_type=["run"]), "attempt_type", "got `array`"),
    (rec("type-nul", attempt_type="run\x00"), "attempt_type", "'run\\x00'"),
    # is_correct
    (rec("ok-missing", is_correct=DROP), "is_correct", "missing"),
    (rec("ok-two", is_correct=2), "is_correct", "Invalid enum value 2"),
    (rec("ok-negative", is_correct=-1), "is_correct", "Invalid enum value -1"),
    (rec("ok-float", is_correct=1.0), "is_correct", "got `float`"),
    (rec("ok-string", is_correct="1"), "is_correct", "got `str`"),
    (rec("ok-object", is_correct={"v": 1}), "is_correct", "got `object`"),
    # created_at
    (rec("ts-missing", created_at=DROP), "created_at", "missing"),
    (rec("ts-null", created_at=None), "created_at", "got `null`"),
    (rec("ts-epoch", created_at=1728381600), "created_at", "got `int`"),
    (rec("ts-feb-30", created_at="2024-02-30 10:00:00"), "created_at", "not a real date"),
    (rec("ts-hour-24", created_at="2024-10-08 24:00:00"), "created_at", "YYYY-MM-DD"),
    (rec("ts-minute-60", created_at="2024-10-08 10:60:00"), "created_at", "YYYY-MM-DD"),
    (rec("ts-leap-second", created_at="2024-10-08 23:59:60"), "created_at", "YYYY-MM-DD"),
    (rec("ts-month-13", created_at="2024-13-01 00:00:00"), "created_at", "YYYY-MM-DD"),
    (rec("ts-year-0", created_at="0000-10-08 10:00:00"), "created_at", "not a real date"),
    (rec("ts-offset", created_at="2024-10-08T10:00:00+03:00"), "created_at", "YYYY-MM-DD"),
    (rec("ts-date-only", created_at="2024-10-08"), "created_at", "YYYY-MM-DD"),
    (rec("ts-russian", created_at="08.10.2024 10:00:00"), "created_at", "YYYY-MM-DD"),
    (rec("ts-7-digits", created_at="2024-10-08 10:00:00.1234567"), "created_at", "YYYY-MM-DD"),
    (rec("ts-fullwidth", created_at="２０２４-10-08 10:00:00"), "created_at", "YYYY-MM-DD"),
    (rec("ts-empty", created_at=""), "created_at", "YYYY-MM-DD"),
    (rec("ts-nul", created_at="2024-10-08 10:00:00\x00"), "created_at", "10:00:00\\x00'"),
    # passback_params
    (rec("pb-missing", passback_params=DROP), "passback_params", "missing"),
    (rec("pb-null", passback_params=None), "passback_params", "got `null`"),
    (rec("pb-json-object", passback_params={"a": "b"}), "passback_params", "got `object`"),
    (rec("pb-json-text", passback_params='{"a": "b"'), "passback_params", "not a Python"),
    (rec("pb-prose", passback_params="not python at all"), "passback_params", "not a Python"),
    (
        rec("pb-exec", passback_params=f"__import__('os').system('touch {PWNED}')"),
        "passback_params",
        "not a Python literal",
    ),
    (
        rec(
            "pb-exec-in-value", passback_params=f"{{'a': __import__('os').system('touch {PWNED}')}}"
        ),
        "passback_params",
        "not a Python literal",
    ),
    (rec("pb-lambda", passback_params="(lambda: 0)()"), "passback_params", "not a Python"),
    (rec("pb-power", passback_params="{'a': 9**9**9}"), "passback_params", "not a Python"),
    (rec("pb-list", passback_params="['a', 'b']"), "passback_params", "got list"),
    (rec("pb-int-key", passback_params="{1: 'x'}"), "passback_params", "string keys"),
    (
        rec("pb-int-value", passback_params="{'oauth_consumer_key': 5}"),
        "passback_params",
        "got int",
    ),
    (rec("pb-unpack", passback_params="{**{'a': 'b'}}"), "passback_params", "not a Python"),
    (
        rec("pb-nesting", passback_params="{'a': " + "[" * 3000 + "]" * 3000 + "}"),
        "passback_params",
        "not a Python",
    ),
    (
        rec("pb-huge", passback_params="x" * (MAX_FIELD_CHARS * 10)),
        "passback_params",
        "length <= 10000",
    ),
    (rec("pb-nul", passback_params=PASSBACK[:-1] + ", 'x': '\x00'}"), "passback_params", "NUL"),
    (
        rec("pb-escaped-nul", passback_params="{'lis_result_sourcedid': 'a\\x00b'}"),
        "passback_params.lis_result_sourcedid",
        "NUL",
    ),
    (
        rec("pb-surrogate", passback_params="{'oauth_consumer_key': '\\ud800'}"),
        "passback_params.oauth_consumer_key",
        "surrogate",
    ),
    (
        rec("pb-huge-value", passback_params=repr({"lis_outcome_service_url": "u" * 20_000})),
        "passback_params",
        "length <= 10000",
    ),
]

# Not objects at all: (the JSON value, its exact raw_record, words in the reason)
NOT_OBJECTS: list[tuple[Any, str, str]] = [
    ("not an object", '"not an object"', "got `str`"),
    (42, "42", "got `int`"),
    (None, "null", "got `null`"),
    (True, "true", "got `bool`"),
    ([BASE], orjson.dumps([BASE]).decode(), "got `array`"),
]

# Raw bytes that are not valid JSON (or not valid UTF-8) inside one element of a sound array.
UNDECODABLE: list[tuple[bytes, str]] = [
    (b'{"case":"utf8-ff","lti_user_id":"\xff\xfe' + USER[2:].encode() + b'"}', "UTF-8"),
    (b'{"case":"utf8-overlong","passback_params":"\xc0\xaf"}', "UTF-8"),
    (b'{"case":"utf8-cut","attempt_type":"ru\xe2\x82"}', "UTF-8"),
    (b'{"case":"lone-surrogate","lti_user_id":"\\ud800"}', "surrogate"),
    (b'{"case":"raw-newline","created_at":"2024-10-08\n10:00:00"}', "control character"),
    (b"{\"case\":\"python-dict\",'lti_user_id':'x'}", "undecodable"),
    (b'{"case":"trailing-comma","a":1,}', "undecodable"),
    (b'{"case":"nan","is_correct":NaN}', "undecodable"),
    (b'{"case":"deep","x":' + b"[" * 2000 + b"]" * 2000 + b"}", "depth"),
]

# Odd but valid: they must load, and their text must come back exactly as sent.
TRICKY_VALUES = [
    "tab\tnewline\nreturn\rbackslash\\ and a literal \\N",
    "'); DROP TABLE attempts; --",
    "quote \" and apostrophe '",
    "Школа данных 😀 \u2028 \x0b",
    '},{"lti_user_id":"x"}',
]


def valid_odd_records(good: list[dict]) -> list[dict]:
    """Valid records whose values stress COPY escaping, quoting and the parser."""
    out = []
    for i, text in enumerate(TRICKY_VALUES):
        passback = repr({"oauth_consumer_key": "k", "lis_result_sourcedid": text})
        out.append({**good[i], "passback_params": passback, "case": f"odd-{i}"})
    out.append({**good[10], "lti_user_id": good[10]["lti_user_id"].upper()})  # same user, lower
    out.append({**good[11], "passback_params": "{'lis_outcome_service_url': None}"})
    out.append({**good[12], "passback_params": "{}", "extra": {"ignored": [1, 2]}})
    out.append({**good[13], "attempt_type": "run", "is_correct": None})
    out.append({**good[14], "attempt_type": "submit", "is_correct": True})
    out.append({**good[15], "created_at": "2024-10-08T23:59:59.999999"})
    out.append({**good[16], "created_at": "2024-10-08 07:00:00.5"})
    return out


def payload_bytes(elements: list[bytes]) -> bytes:
    return b"[\n" + b",\n".join(elements) + b"\n]"


def test_every_bad_record_is_quarantined_with_its_field_and_the_rest_load(
    small_simulator: ApiSimulator, api_and_warehouse: dict[str, Any]
) -> None:
    warehouse = api_and_warehouse["warehouse"]
    good = day_records(small_simulator)[:40]
    odd = valid_odd_records(good[40 - 20 :])
    elements = [orjson.dumps(r) for r in good[:20]]
    elements += [orjson.dumps(r) for r, _, _ in BAD_RECORDS]
    elements += [orjson.dumps(v) for v, _, _ in NOT_OBJECTS]
    elements += [raw for raw, _ in UNDECODABLE]
    elements += [orjson.dumps(r) for r in odd]
    small_simulator.set_day_payload(DAY, payload_bytes(elements))

    result = run_pipeline(
        api_and_warehouse, assets=[raw_attempts, postgres_attempts, daily_metrics]
    )
    assert result.success
    assert not PWNED.exists()  # nothing was executed

    rejected = db_rows(warehouse, "attempts_rejected")
    expected_rejects = len(BAD_RECORDS) + len(NOT_OBJECTS) + len(UNDECODABLE)
    assert len(rejected) == expected_rejects
    assert {row[0] for row in rejected} == {DAY}
    by_case = {}
    for _, reason, raw in rejected:
        assert reason.split(":", 1)[0] in FIELDS, reason
        assert "\x00" not in reason and len(reason) < 400
        by_case.setdefault(_case_of(raw), []).append((reason, raw))

    for record, field, words in BAD_RECORDS:
        [(reason, raw)] = by_case.pop(record["case"])
        assert reason.startswith(field + ": "), (record["case"], reason)
        assert words in reason, (record["case"], reason)
        assert orjson.loads(raw) == _json_roundtrip(record)  # the record, kept whole
    for _value, raw_text, words in NOT_OBJECTS:
        [(reason, raw)] = by_case.pop(raw_text)
        assert reason.startswith("record: ") and words in reason and raw == raw_text
    for raw_bytes, words in UNDECODABLE:
        case = raw_bytes.split(b'"case":"', 1)[1].split(b'"', 1)[0].decode()
        [(reason, raw)] = by_case.pop(case)
        assert reason.startswith("record: undecodable JSON at byte offset "), reason
        assert words in reason, (case, reason)
        assert raw.startswith('{"case":"' + case)
    assert by_case == {}
    assert "\\xff" in next(r[2] for r in rejected if "utf8-ff" in r[2])  # bytes kept, visibly

    loaded = good[:20] + odd
    assert sorted(db_rows(warehouse, "attempts"), key=repr) == expected_attempts(loaded)
    stored = {r[2] for r in db_rows(warehouse, "attempts")}
    assert set(TRICKY_VALUES) <= stored  # escaping round-trips exactly
    [(day, *metrics)] = db_rows(warehouse, "daily_metrics")
    lowered = [{**r, "lti_user_id": r["lti_user_id"].lower()} for r in loaded]
    assert (day, *metrics) == (DAY, *metric_row(lowered))

    meta = metadata(result, "postgres_attempts")
    assert meta["received"] == len(elements)
    assert meta["rejected"] == expected_rejects
    assert meta["loaded"] == len(loaded)
    assert sum(meta["reject_reasons"].values()) == expected_rejects
    assert set(meta["reject_reasons"]) <= set(FIELDS)


def test_a_bad_record_is_quarantined_once_under_its_own_day(
    small_simulator: ApiSimulator, api_and_warehouse: dict[str, Any]
) -> None:
    """Tomorrow's bad record served today too, a bad record served twice: one row each, under
    the day it belongs to; and the counts of each day's load add up to what it received."""
    warehouse = api_and_warehouse["warehouse"]
    tomorrow = DAY + timedelta(days=1)
    good, next_good = day_records(small_simulator)[:10], day_records(small_simulator, tomorrow)[:10]
    of_tomorrow = rec("of-tomorrow", attempt_type="RUN", created_at=f"{tomorrow} 09:00:00")
    twice = rec("twice", passback_params="{'a': 1}")
    unreadable = rec("unreadable", lti_user_id="XYZ", created_at="2024-10-32 09:00:00")
    today = [*good, of_tomorrow, twice, twice, unreadable, "not an object", "not an object"]
    small_simulator.set_day_payload(DAY, today)
    small_simulator.set_day_payload(tomorrow, [*next_good, of_tomorrow])

    counts = {}
    for day in (DAY, tomorrow):
        result = run_pipeline(
            api_and_warehouse, partition=day.isoformat(), assets=[raw_attempts, postgres_attempts]
        )
        assert result.success
        meta = metadata(result, "postgres_attempts")
        counts[day] = [meta[k] for k in ("received", "loaded", "rejected", "duplicates")]
        counts[day].append(meta["out_of_window"])
        received, loaded, rejected, duplicates, out_of_window = counts[day]
        assert received == loaded + rejected + duplicates + out_of_window

    assert counts == {DAY: [16, 10, 3, 2, 1], tomorrow: [11, 10, 1, 0, 0]}
    quarantine = sorted(
        (day, _case_of(raw)) for day, _, raw in db_rows(warehouse, "attempts_rejected")
    )
    assert quarantine == sorted(
        [(DAY, "twice"), (DAY, "unreadable"), (DAY, '"not an object"'), (tomorrow, "of-tomorrow")]
    )


def _case_of(raw: str) -> str:
    """The `case` tag of a rejected raw record, or the raw text itself when it has none."""
    marker = '"case":"'
    if marker in raw:
        return raw.split(marker, 1)[1].split('"', 1)[0]
    return raw


def _json_roundtrip(value: Any) -> Any:
    return orjson.loads(orjson.dumps(value))


@pytest.fixture
def api_and_warehouse(
    small_simulator: ApiSimulator, landing_zone: LandingZone, warehouse: PostgresResource
) -> dict:
    api = make_api(small_simulator)
    return {"itresume_api": api, "landing": landing_zone, "warehouse": warehouse}


# -- fuzz ------------------------------------------------------------------------------------

START, END = day_bounds(DAY)
# More examples for a bug hunt: ITRESUME_FUZZ_EXAMPLES=5000 pytest -k fuzz
EXAMPLES = int(os.environ.get("ITRESUME_FUZZ_EXAMPLES", "100"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
FIELD_VALUES = (
    JSON_VALUES
    | st.sampled_from([USER, USER.upper(), "run", "submit", 0, 1, PASSBACK, "2024-10-08 10:00:00"])
    | st.text(alphabet="0123456789abcdef-: .T'\"{}\\\x00\n\t", max_size=40)
)


@st.composite
def records(draw: st.DrawFn) -> Any:
    """Anything at all, but mostly records of roughly the right shape with some fields wrong."""
    if draw(st.integers(0, 4)) == 0:
        return draw(JSON_VALUES)
    out: dict[str, Any] = dict(BASE)
    for name in draw(st.lists(st.sampled_from(sorted(BASE)), max_size=3, unique=True)):
        if draw(st.booleans()):
            del out[name]
        else:
            out[name] = draw(FIELD_VALUES)
    return out


JUNK = st.binary(max_size=6).map(lambda b: b.replace(b'"', b"").replace(b"\\", b""))


@st.composite
def damaged_elements(draw: st.DrawFn) -> bytes:
    """One array element: a record's JSON, perhaps with junk bytes inside one of its strings."""
    element = orjson.dumps(draw(records()))
    openings = _string_openings(element)
    if openings and draw(st.integers(0, 2)) == 0:
        at = draw(st.sampled_from(openings)) + 1
        element = element[:at] + draw(JUNK) + element[at:]
    return element


def _string_openings(json_bytes: bytes) -> list[int]:
    """Offsets of the opening quotes of the strings in a JSON text."""
    out, inside, escaped = [], False, False
    for i, c in enumerate(json_bytes):
        if inside:
            if escaped:
                escaped = False
            elif c == ord("\\"):
                escaped = True
            elif c == ord('"'):
                inside = False
        elif c == ord('"'):
            inside = True
            out.append(i)
    return out


@st.composite
def mutated_arrays(draw: st.DrawFn) -> bytes:
    """A sound array with a few bytes deleted, inserted or cut off: anything may break."""
    payload = bytearray(b"[" + b",".join(draw(st.lists(damaged_elements(), max_size=5))) + b"]")
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.integers(0, len(payload)))
        action = draw(st.sampled_from(["insert", "delete", "cut"]))
        if action == "insert":
            payload[at:at] = draw(st.binary(min_size=1, max_size=3))
        elif action == "delete":
            del payload[at : at + 1]
        else:
            del payload[at:]
    return bytes(payload)


@FUZZ
@given(records() | st.text() | st.binary().map(lambda b: b.decode("utf-8", "surrogateescape")))
def test_fuzz_the_validator_raises_only_rejected_record(value: Any) -> None:
    """Any decoded value, lone surrogates included: a row, or a reason naming a field."""
    try:
        line = to_row(value)
    except RejectedRecord as exc:
        assert exc.field in FIELDS
        assert "\x00" not in exc.reason
        return
    assert line.endswith("\n") and line.count("\t") == 6
    user_id = line.split("\t", 1)[0]
    assert user_id == user_id.lower()


@FUZZ
@given(
    st.text()
    | st.text(alphabet="{}[]()'\": ,\\xu0NoneTrue_.*+-=lambda", max_size=60)
    | st.binary().map(lambda b: b.decode("utf-8", "surrogateescape"))
)
def test_fuzz_parse_passback_raises_only_passback_error(text: str) -> None:
    """Whatever the text, it is parsed without being run, or refused with PassbackError."""
    try:
        params = parse_passback(text)
    except PassbackError:
        return
    assert type(params) is dict
    assert all(type(k) is str and (v is None or type(v) is str) for k, v in params.items())


def _process(payload: bytes, chunk_size: int) -> tuple[int, int, int, int, int, list[str]]:
    received = loaded = rejected = duplicates = outside = 0
    reasons: list[str] = []
    for batch in process_day(io.BytesIO(payload), START, END, chunk_size=chunk_size):
        received += batch.received
        loaded += batch.loaded
        rejected += batch.rejected
        duplicates += batch.duplicates
        outside += batch.out_of_window
        reasons += [reason for reason, _ in batch.rejects]
        for line in batch.copy_data.decode().splitlines():
            assert line.count("\t") == 6  # one row per line, seven columns
    return received, loaded, rejected, duplicates, outside, reasons


@FUZZ
@given(
    st.binary(max_size=200)
    | st.binary(max_size=200).map(lambda b: b"[" + b + b"]")
    | mutated_arrays(),
    st.integers(1, 64),
)
def test_fuzz_any_bytes_give_batches_or_payload_error(payload: bytes, chunk_size: int) -> None:
    try:
        received, loaded, rejected, duplicates, outside, reasons = _process(payload, chunk_size)
    except PayloadError:
        return
    assert received == loaded + rejected + duplicates + outside
    assert all(r.split(":", 1)[0] in FIELDS for r in reasons)


@FUZZ
@given(
    st.lists(damaged_elements(), max_size=12), st.integers(1, 256), st.sampled_from([b",", b" ,\n"])
)
def test_fuzz_a_sound_array_of_any_records_never_fails(
    elements: list[bytes], chunk_size: int, separator: bytes
) -> None:
    """Whatever is inside the elements, an intact array is never a PayloadError: every element
    is counted, and each bad one is rejected with a reason naming a field."""
    payload = b"[" + separator.join(elements) + b"]"
    received, loaded, rejected, duplicates, outside, reasons = _process(payload, chunk_size)
    assert received == len(elements)
    assert received == loaded + rejected + duplicates + outside
    assert all(r.split(":", 1)[0] in FIELDS for r in reasons)


@settings(
    max_examples=max(10, EXAMPLES // 5),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(st.lists(damaged_elements(), min_size=1, max_size=10))
def test_fuzz_whatever_the_records_the_load_commits_and_adds_up(
    warehouse: PostgresResource, landing_zone: LandingZone, elements: list[bytes]
) -> None:
    """Into a real PostgreSQL: no input breaks COPY (encoding, NUL, escapes); counts add up."""
    path = landing_zone.payload_path(DAY)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(b"[" + b",".join(elements) + b"]"))
    [load], _ = replace_days(warehouse, {DAY: path}, run_id="fuzz")
    assert load.received == len(elements)
    assert load.received == load.loaded + load.rejected + load.duplicates + load.out_of_window
    with psycopg.connect(warehouse.database_url) as conn:
        rows = conn.execute(
            psycopg.sql.SQL("SELECT count(*) FROM {}").format(warehouse.table("attempts"))
        ).fetchone()[0]
        rejects = conn.execute(
            psycopg.sql.SQL("SELECT count(*) FROM {}").format(warehouse.table("attempts_rejected"))
        ).fetchone()[0]
    assert (rows, rejects) == (load.loaded, load.rejected)
