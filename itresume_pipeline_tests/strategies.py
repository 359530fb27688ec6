"""API records for the property tests of records.py and payload.py.

`record()` is one valid record of the API's shape to vary field by field (`DROP` removes a
field); `records()` draws mostly valid records with the quoting, control characters and edge
timestamps that stress the fast path, some with one bad or missing field. Shared by
test_parsing.py and test_payload.py, so both vary the same inputs.
"""

from __future__ import annotations

from datetime import datetime

from hypothesis import strategies as st

USER = "0123456789abcdef0123456789abcdef"
SOURCEDID = f"course-v1:SkillFactory+DST-3.0+28FEB2021:lms.skillfactory.ru-{'a' * 32}:{USER}"
URL = "https://lms.skillfactory.ru/courses/course-v1:SkillFactory+DST-3.0/xblock/grade_handler"
PASSBACK = {
    "oauth_consumer_key": "",
    "lis_result_sourcedid": SOURCEDID,
    "lis_outcome_service_url": URL,
}

# Text that stresses both the fast scanner and the COPY escaping: quotes of both kinds,
# backslashes, control characters (tab, CR, LF, NUL, form feed), Cyrillic, emoji, `},`.
TRICKY = st.text(
    alphabet="ab:/-+ {}[],'\"\\\t\n\r\x00\x0b\x0c\x85\u2028юзерЁё😀\u200b",
    max_size=20,
)


DROP = object()  # a field value that removes the field


def record(**changes: object) -> dict[str, object]:
    """A valid record of the API's shape with `changes` applied."""
    base: dict[str, object] = {
        "lti_user_id": USER,
        "passback_params": repr(PASSBACK),
        "is_correct": 1,
        "attempt_type": "submit",
        "created_at": "2024-10-08 12:34:56.123456",
    }
    base.update(changes)
    return {k: v for k, v in base.items() if v is not DROP}


HEX = st.text(alphabet="0123456789abcdef", min_size=32, max_size=32)
TIMESTAMPS = st.datetimes(min_value=datetime(2024, 10, 7, 23), max_value=datetime(2024, 10, 9, 1))


@st.composite
def timestamp_texts(draw: st.DrawFn) -> str:
    moment = draw(TIMESTAMPS)
    sep = draw(st.sampled_from([" ", "T"]))
    text = moment.strftime(f"%Y-%m-%d{sep}%H:%M:%S")
    digits = draw(st.sampled_from([0, 6, 6, 6, 1, 3]))
    if digits:
        text += "." + f"{moment.microsecond:06d}"[:digits]
    edges = ["2024-10-08 00:00:00.000000", "2024-10-09 00:00:00.000000", "2024-10-08 00:00:00"]
    edges += ["2024-10-07 23:59:59.999999", "2024-10-08 23:59:59.999999", "2024-10-08T23:59:59"]
    return draw(st.sampled_from(edges)) if draw(st.integers(0, 5)) == 0 else text


@st.composite
def passbacks(draw: st.DrawFn) -> str:
    if draw(st.integers(0, 4)) == 0:  # the API's shape quoted by hand: raw control characters
        key, sourcedid = draw(TRICKY), draw(TRICKY)
        return f"{{'oauth_consumer_key': '{key}', 'lis_result_sourcedid': '{sourcedid}'}}"
    user = draw(HEX)
    params: dict[str, str | None] = {}
    if draw(st.booleans()):
        params["oauth_consumer_key"] = draw(st.sampled_from(["", "key"]) | TRICKY)
    params["lis_result_sourcedid"] = f"course-v1:o+c+r:host-{'b' * 32}:{user}" + draw(
        st.sampled_from(["", "", "it's", 'say "hi"', "\\", "},{", "ю"]) | TRICKY
    )
    if draw(st.booleans()):
        params["lis_outcome_service_url"] = draw(st.sampled_from([URL, None]) | TRICKY)
    if draw(st.integers(0, 9)) == 0:
        params["extra"] = draw(TRICKY)
    items = list(params.items())
    if draw(st.integers(0, 5)) == 0:
        items.reverse()
    return repr(dict(items))


# fmt: off
BAD_TIMESTAMPS = [
    "2024-02-30 00:00:00", "", "2024-10-08", None, "x" * 20000, "2024-10-08 12:00:00+00:00",
    "2024-02-30 00:00:00.000000", "2023-02-29 12:00:00.000000", "2024-10-08 24:00:00.000000",
    "2024-13-08 12:00:00.000000", "2024-10-08 12:00:60.000000", "2024-10-08 12:00:00.00000Z",
]
# fmt: on
BAD_VALUES = {
    "lti_user_id": st.sampled_from([None, "XYZ", 1, USER.upper() + "0", USER[:-1] + "\x00"]),
    "attempt_type": st.sampled_from([None, "RUN", "", "submit\x00", 0]),
    "is_correct": st.sampled_from([2, -1, 1.0, "1", [], {}]),
    "created_at": st.sampled_from(BAD_TIMESTAMPS),
    "passback_params": st.sampled_from(["{", "{'a': 1}", "[]", None, "{'a': 'b'}\x00", "x" * 20000])
    | TRICKY,
}


@st.composite
def records(draw: st.DrawFn) -> object:
    """Mostly valid records of the API's shape; some with one bad or missing field."""
    kind = draw(st.integers(0, 19))
    if kind == 0:
        return draw(st.sampled_from(["text", 12, None, [1, 2], {"nested": {"x": 1}}, True]))
    rec: dict[str, object] = {
        "lti_user_id": draw(HEX) if draw(st.integers(0, 9)) else draw(HEX).upper(),
        "passback_params": draw(passbacks()),
        "is_correct": draw(st.sampled_from([None, 0, 1, True, False])),
        "attempt_type": draw(st.sampled_from(["run", "submit"])),
        "created_at": draw(timestamp_texts()),
    }
    if kind <= 4:
        name = draw(st.sampled_from(sorted(BAD_VALUES)))
        if draw(st.booleans()):
            del rec[name]
        else:
            rec[name] = draw(BAD_VALUES[name])
    if kind == 5:
        rec["unexpected"] = draw(TRICKY)
    return rec
