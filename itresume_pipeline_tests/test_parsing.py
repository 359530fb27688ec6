"""records.py: passback_params, record validation and COPY lines, against plain references."""

from __future__ import annotations

import ast
from datetime import datetime
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from itresume_pipeline.records import (
    MAX_FIELD_CHARS,
    PASSBACK_KEYS,
    PassbackError,
    RejectedRecord,
    claimed_moment,
    parse_passback,
    to_row,
)
from itresume_pipeline_tests.reference import (
    Attempt,
    Refused,
    reference_attempt,
    reference_line,
    reference_moment,
)
from itresume_pipeline_tests.strategies import (
    DROP,
    PASSBACK,
    SOURCEDID,
    TRICKY,
    URL,
    USER,
    record,
    records,
)

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def reject_reason(rec: object) -> str:
    with pytest.raises(RejectedRecord) as info:
        to_row(rec)
    return info.value.reason


def checked_literal(text: str) -> dict[str, str | None] | None:
    """What parse_passback must return: literal_eval's dict of str -> str/None, else None."""
    try:
        value = ast.literal_eval(text)
    except Exception:
        return None
    if type(value) is not dict:
        return None
    if all(type(k) is str and (v is None or type(v) is str) for k, v in value.items()):
        return value
    return None


# --------------------------------------------------------------------------- parse_passback
def test_parse_passback_takes_the_api_shape() -> None:
    assert parse_passback(repr(PASSBACK)) == PASSBACK


def test_parse_passback_apostrophe_value_comes_double_quoted() -> None:
    text = """{'oauth_consumer_key': '', 'lis_result_sourcedid': "course-v1:x+y+z:host-abc:it's"}"""
    assert parse_passback(text)["lis_result_sourcedid"] == "course-v1:x+y+z:host-abc:it's"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("{}", {}),
        ("{'a': None}", {"a": None}),
        ("{'a': 'x\\ty', \"b\": 'it\\'s'}", {"a": "x\ty", "b": "it's"}),
        ("  {'a' :'b' ,}", {"a": "b"}),
        ("{'a': 'b' 'c'}", {"a": "bc"}),
        ("{'a': '1', 'a': '2'}", {"a": "2"}),
        ("{'''a''': '''b'''}", {"a": "b"}),
        ("{'a': '\\u044e\\x00'}", {"a": "ю\x00"}),
    ],
)
def test_parse_passback_unusual_but_valid_literals(text: str, expected: dict) -> None:
    assert parse_passback(text) == expected


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "not a Python literal"),
        ("{'a': 'b'", "not a Python literal"),
        ('{"a": "b"} {', "not a Python literal"),
        ("['a', 'b']", "expected a dict literal, got list"),
        ("{1: 'b'}", "expected string keys, got int"),
        ("{'a': 1}", "'a': expected a string or None, got int"),
        ("{'a': b'x'}", "'a': expected a string or None, got bytes"),
        ("{'a': f'x'}", "not a Python literal"),
        ("{'a': 'x\x00'}", "contains a NUL character"),
        ("{'a': '\ud800'}", "UnicodeEncodeError"),
        ("{'a': 'x\ny'}", "not a Python literal"),
        ("{'a': 'b' # }", "not a Python literal"),
    ],
)
def test_parse_passback_rejects_with_a_reason(text: str, reason: str) -> None:
    with pytest.raises(PassbackError) as info:
        parse_passback(text)
    assert reason in info.value.reason


@pytest.mark.parametrize(
    "template",
    [
        "__import__('os').system('touch {path}')",
        "{{'a': __import__('os').system('touch {path}')}}",
        "{{'a': (lambda: __import__('os').system('touch {path}'))()}}",
        "[c for c in ().__class__.__base__.__subclasses__()] or open('{path}', 'w')",
    ],
)
def test_parse_passback_never_executes_code(tmp_path: Path, template: str) -> None:
    marker = tmp_path / "executed"
    with pytest.raises(PassbackError):
        parse_passback(template.format(path=marker))
    assert not marker.exists()


@SETTINGS
@given(st.dictionaries(TRICKY, TRICKY | st.none(), max_size=5))
def test_parse_passback_of_any_repr_equals_literal_eval(d: dict[str, str | None]) -> None:
    text = repr(d)
    assert parse_passback(text) == ast.literal_eval(text) == d


# fmt: off
PIECES = st.sampled_from([
    "{", "}", "'", '"', ": ", ":", ", ", ",", " ", "a", "b", "\\", "\\'", "\n", "\t",
    "\x00", "None", "1", "#", "(", ")", "ю", "'''", "b'", "f'", "\ud800",
])
# fmt: on


@SETTINGS
@given(st.lists(PIECES, max_size=14).map("".join) | st.text(max_size=30))
def test_parse_passback_fuzz_matches_checked_literal_eval(text: str) -> None:
    """Any text: the same dict literal_eval would give, or PassbackError; nothing else."""
    expected = checked_literal(text)
    if expected is None:
        with pytest.raises(PassbackError):
            parse_passback(text)
    else:
        assert parse_passback(text) == expected


@SETTINGS
@given(st.lists(st.tuples(TRICKY, TRICKY), max_size=4), st.sampled_from(["'", '"']))
def test_parse_passback_fuzz_of_near_repr_shapes(pairs: list, quote: str) -> None:
    """Hand-quoted (not repr) dicts: raw control characters, unbalanced quotes and so on."""
    body = ", ".join(f"{quote}{k}{quote}: {quote}{v}{quote}" for k, v in pairs)
    text = "{" + body + "}"
    expected = checked_literal(text)
    if expected is None:
        with pytest.raises(PassbackError):
            parse_passback(text)
    else:
        assert parse_passback(text) == expected


def test_parse_passback_survives_deep_nesting() -> None:
    for text in ["{'a': " + "(" * 500 + ")" * 500 + "}", "-" * 5000 + "1", "[" * 5000]:
        with pytest.raises(PassbackError):
            parse_passback(text)


# --------------------------------------------------------------------------- to_row
def test_to_row_of_the_api_shape() -> None:
    assert to_row(record()) == reference_line(
        Attempt(
            user_id=USER,
            oauth_consumer_key="",
            lis_result_sourcedid=SOURCEDID,
            lis_outcome_service_url=URL,
            is_correct=True,
            attempt_type="submit",
            created_at=datetime(2024, 10, 8, 12, 34, 56, 123456),
        )
    )


def test_missing_passback_keys_are_null_and_extras_ignored() -> None:
    params = repr({"oauth_consumer_key": "k", "something_else": "x"})
    line = to_row(record(passback_params=params, extra_field=[1, 2]))
    assert decode_copy_line(line)[1:4] == ["k", None, None]


def test_raw_tabs_in_passback_values_are_escaped_for_copy() -> None:
    """A tab needs no escape in a Python literal, so it arrives raw and COPY must escape it."""
    for quote in ("'", '"'):
        params = f"{{'oauth_consumer_key': {quote}a\tb{quote}, 'lis_result_sourcedid': 'x\ty'}}"
        assert decode_copy_line(to_row(record(passback_params=params)))[:3] == [
            USER,
            "a\tb",
            "x\ty",
        ]


def test_a_run_with_null_and_an_uppercase_user() -> None:
    line = to_row(record(attempt_type="run", is_correct=None, lti_user_id=USER.upper()))
    fields = decode_copy_line(line)
    assert (fields[5], fields[4], fields[0]) == ("run", None, USER)


@pytest.mark.parametrize(
    ("value", "expected"),
    [(None, None), (0, "f"), (1, "t"), (False, "f"), (True, "t")],
)
def test_is_correct_values(value: object, expected: str | None) -> None:
    for kind in ("run", "submit"):
        assert decode_copy_line(to_row(record(is_correct=value, attempt_type=kind)))[4] == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2024-10-08 12:34:56", datetime(2024, 10, 8, 12, 34, 56)),
        ("2024-10-08T12:34:56.5", datetime(2024, 10, 8, 12, 34, 56, 500000)),
        ("2024-10-08 12:34:56.000123", datetime(2024, 10, 8, 12, 34, 56, 123)),
        ("2024-02-29 23:59:59.999999", datetime(2024, 2, 29, 23, 59, 59, 999999)),
    ],
)
def test_timestamps(text: str, expected: datetime) -> None:
    line = to_row(record(created_at=text))
    assert line.endswith("\t" + expected.isoformat(" ", "microseconds") + "\n")


BAD = [
    ("record", "not a dict"),
    ("record", ["a", "list"]),
    ("record", None),
    ("lti_user_id", record(lti_user_id=DROP)),
    ("lti_user_id", record(lti_user_id=None)),
    ("lti_user_id", record(lti_user_id=12345)),
    ("lti_user_id", record(lti_user_id="XYZ")),
    ("lti_user_id", record(lti_user_id=USER + "0")),
    ("lti_user_id", record(lti_user_id=USER[:-1] + "g")),
    ("lti_user_id", record(lti_user_id=USER[:-1] + "\x00")),
    ("lti_user_id", record(lti_user_id="٣" * 32)),
    ("attempt_type", record(attempt_type=DROP)),
    ("attempt_type", record(attempt_type="RUN")),
    ("attempt_type", record(attempt_type=["run"])),
    ("is_correct", record(is_correct=DROP)),
    ("is_correct", record(is_correct=2)),
    ("is_correct", record(is_correct=1.0)),
    ("is_correct", record(is_correct="1")),
    ("created_at", record(created_at=DROP)),
    ("created_at", record(created_at=1728390896)),
    ("created_at", record(created_at="2024-02-30 00:00:00")),
    ("created_at", record(created_at="2024-10-08 25:00:00")),
    ("created_at", record(created_at="2024-10-08 12:60:00")),
    ("created_at", record(created_at="2024-10-08 12:00:00+03:00")),
    ("created_at", record(created_at="2024-10-08 12:00:00Z")),
    ("created_at", record(created_at="2024-10-08")),
    ("created_at", record(created_at="2024-10-08 12:00:00.1234567")),
    ("created_at", record(created_at="2024-1-08 12:00:00")),
    ("created_at", record(created_at="２０２４-10-08 12:00:00")),
    ("created_at", record(created_at="0000-10-08 12:00:00")),
    ("created_at", record(created_at="2024-10-08 12:00:00\x00")),
    ("passback_params", record(passback_params=DROP)),
    ("passback_params", record(passback_params=PASSBACK)),
    ("passback_params", record(passback_params="{'a': 'b'")),
    ("passback_params", record(passback_params="{'a': 1}")),
    ("passback_params", record(passback_params="x" * (MAX_FIELD_CHARS + 1))),
    ("passback_params", record(passback_params=repr({"a": "b" * MAX_FIELD_CHARS}))),
    ("passback_params", record(passback_params="{'a': 'b'}\x00")),
    ("passback_params", record(passback_params=repr(PASSBACK).replace("', '", "\x00', '", 1))),
    ("passback_params", record(passback_params=repr(PASSBACK).replace("', '", "\n', '", 1))),
    ("passback_params", record(passback_params=repr(PASSBACK).replace("', '", "\ud800', '", 1))),
    ("passback_params.lis_result_sourcedid", record(passback_params=repr({
        "lis_result_sourcedid": "a\x00b"}))),
    ("passback_params.oauth_consumer_key", record(
        passback_params="{'oauth_consumer_key': '\\ud800'}")),
]  # fmt: skip


@pytest.mark.parametrize(("field", "rec"), BAD)
def test_to_row_names_the_bad_field(field: str, rec: object) -> None:
    with pytest.raises(RejectedRecord) as info:
        to_row(rec)
    assert info.value.field == field
    assert info.value.reason.startswith(field + ": ")
    with pytest.raises(Refused) as ref:
        reference_attempt(rec)
    assert ref.value.field == field


def test_rejection_reasons_are_precise_and_short() -> None:
    assert reject_reason(record(lti_user_id="XYZ")) == (
        "lti_user_id: Expected `str` of length >= 32"
    )
    assert reject_reason(record(lti_user_id="g" * 32)) == (
        f"lti_user_id: expected 32 hex characters, got '{'g' * 32}'"
    )
    assert reject_reason(record(attempt_type=None)) == "attempt_type: Expected `str`, got `null`"
    assert reject_reason(record(attempt_type="RUN")) == "attempt_type: Invalid enum value 'RUN'"
    assert reject_reason(record(is_correct=DROP)) == "is_correct: missing"
    assert reject_reason(record(is_correct=7)) == "is_correct: Invalid enum value 7"
    assert "day is out of range" in reject_reason(record(created_at="2024-02-30 00:00:00"))
    long = reject_reason(record(created_at="Z" * 5000))
    assert len(long) < 120 and long.endswith("…")
    nul = reject_reason(record(passback_params=repr({"oauth_consumer_key": "\x00"})))
    assert "NUL" in nul and "\x00" not in nul


# --------------------------------------------------------------------------- COPY lines
def test_copy_line_exact() -> None:
    params = repr({"oauth_consumer_key": "", "lis_outcome_service_url": "u\\r\tl\n\r"})
    rec = record(passback_params=params, is_correct=None, attempt_type="run")
    line = to_row({**rec, "created_at": "2024-01-02 03:04:05"})
    assert line == f"{USER}\t\t\\N\tu\\\\r\\tl\\n\\r\t\\N\trun\t2024-01-02 03:04:05.000000\n"
    flags = [to_row(record(is_correct=v)).split("\t")[4] for v in (True, False)]
    assert flags == ["t", "f"]


def decode_copy_line(line: str) -> list[str | None]:
    """An independent reader of COPY text format (as PostgreSQL would read the line)."""
    assert line.endswith("\n") and "\n" not in line[:-1] and "\r" not in line
    fields: list[str | None] = []
    for raw in line[:-1].split("\t"):
        if raw == "\\N":
            fields.append(None)
            continue
        out, chars = [], iter(raw)
        for ch in chars:
            if ch == "\\":
                nxt = next(chars)
                out.append({"t": "\t", "n": "\n", "r": "\r", "\\": "\\"}[nxt])
            else:
                out.append(ch)
        fields.append("".join(out))
    return fields


ATTEMPTS = st.builds(
    Attempt,
    user_id=st.just(USER),
    oauth_consumer_key=TRICKY.filter(lambda s: "\x00" not in s) | st.none(),
    lis_result_sourcedid=TRICKY.filter(lambda s: "\x00" not in s) | st.none(),
    lis_outcome_service_url=TRICKY.filter(lambda s: "\x00" not in s) | st.none(),
    is_correct=st.sampled_from([None, True, False]),
    attempt_type=st.sampled_from(["run", "submit"]),
    created_at=st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31)),
)


@SETTINGS
@given(ATTEMPTS)
def test_copy_line_round_trips_through_a_copy_reader(a: Attempt) -> None:
    params = dict(zip(PASSBACK_KEYS, a[1:4], strict=True))
    rec = record(
        lti_user_id=a.user_id,
        passback_params=repr(params),
        is_correct=a.is_correct,
        attempt_type=a.attempt_type,
        created_at=a.created_at.isoformat(" ", "microseconds"),
    )
    fields = decode_copy_line(to_row(rec))
    flag = None if a.is_correct is None else ("t" if a.is_correct else "f")
    t = a.created_at
    stamp = (
        f"{t.year:04d}-{t.month:02d}-{t.day:02d} "
        f"{t.hour:02d}:{t.minute:02d}:{t.second:02d}.{t.microsecond:06d}"
    )
    assert fields == [*a[:4], flag, a.attempt_type, stamp]


# --------------------------------------------------------------------------- fast vs reference
@SETTINGS
@given(records())
def test_to_row_agrees_with_the_reference(rec: object) -> None:
    try:
        expected = reference_attempt(rec)
    except Refused as ref:
        with pytest.raises(RejectedRecord) as info:
            to_row(rec)
        assert info.value.field == ref.field
        assert "\x00" not in info.value.reason
        return
    assert to_row(rec) == reference_line(expected)


@pytest.mark.parametrize(
    ("rec", "expected"),
    [
        (record(lti_user_id="XYZ", created_at="2024-10-09 08:00:00"), datetime(2024, 10, 9, 8)),
        (
            record(attempt_type="RUN", created_at="2024-10-07T23:59:59.5"),
            datetime(2024, 10, 7, 23, 59, 59, 500000),
        ),
        (record(passback_params=None), datetime(2024, 10, 8, 12, 34, 56, 123456)),
        (record(created_at="2024-02-30 10:00:00"), None),  # not a real date: no day of its own
        (record(created_at="2024-10-09 10:00:00+03:00"), None),
        (record(created_at=DROP), None),
        (record(created_at=1728381600), None),
        (["2024-10-08 12:00:00"], None),
    ],
)
def test_claimed_moment_reads_created_at_whatever_else_is_wrong(
    rec: object, expected: datetime | None
) -> None:
    """The day a bad record belongs to: its created_at by the rule a row's must follow."""
    assert claimed_moment(rec) == expected


@SETTINGS
@given(records())
def test_claimed_moment_agrees_with_the_reference_and_with_the_row(rec: object) -> None:
    moment = claimed_moment(rec)
    assert moment == reference_moment(rec)
    try:
        line = to_row(rec)
    except RejectedRecord:
        return
    assert line.endswith(f"\t{moment.isoformat(' ', 'microseconds')}\n")


# --------------------------------------------------------------------------- one statement
PACKAGE = Path(__file__).resolve().parents[1] / "itresume_pipeline"


def imported_names(path: Path) -> list[tuple[str, str]]:
    """(module, name) for each ``from itresume_pipeline... import name`` in a source file."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return [
        (node.module, alias.name)
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("itresume_pipeline")
        for alias in node.names
    ]


def test_no_module_imports_another_modules_private_names() -> None:
    private = [
        (str(path.relative_to(PACKAGE)), module, name)
        for path in sorted(PACKAGE.rglob("*.py"))
        for module, name in imported_names(path)
        if name.startswith("_")
    ]
    assert private == []


def test_the_reference_shares_nothing_with_the_pipeline() -> None:
    """The equivalence tests mean something only while the reference states the rules itself."""
    reference = Path(__file__).with_name("reference.py")
    assert imported_names(reference) == []
