"""The log search matcher (pure)."""

from __future__ import annotations

import pytest

from idunno.node.grep import MAX_PATTERN, BadPattern, Matcher, search

LINES = [
    '{"event":"member_changed","member":"n4","new":"failed"}\n',
    '{"event":"file_put","file":"a.txt"}\n',
    '{"event":"member_changed","member":"n2","new":"alive"}\n',
    '{"event":"Coordinator_Elected","epoch":2}\n',
]


def test_a_fixed_string_matches_anywhere_in_the_json_text() -> None:
    found, count = search(Matcher("member_changed"), LINES, 10)
    assert count == 2
    assert found == [LINES[0].rstrip("\n"), LINES[2].rstrip("\n")]


def test_a_fixed_string_is_not_a_regex() -> None:
    assert search(Matcher("n.*failed"), LINES, 10) == ([], 0)


def test_a_regex_and_ignore_case() -> None:
    assert search(Matcher('"new":"(failed|left)"', regex=True), LINES, 10)[1] == 1
    assert search(Matcher("coordinator_elected"), LINES, 10)[1] == 0
    assert search(Matcher("coordinator_elected", ignore_case=True), LINES, 10)[1] == 1
    assert search(Matcher("COORD.*ELECTED", regex=True, ignore_case=True), LINES, 10)[1] == 1


def test_the_limit_bounds_lines_but_not_the_count() -> None:
    found, count = search(Matcher("event"), LINES, 2)
    assert (len(found), count) == (2, 4)


@pytest.mark.parametrize(
    ("pattern", "regex", "fragment"),
    [("", False, "empty"), ("(", True, "not a valid regular expression"),
     ("x" * (MAX_PATTERN + 1), False, "longer than")],
)  # fmt: skip
def test_bad_patterns_are_one_line_errors(pattern: str, regex: bool, fragment: str) -> None:
    with pytest.raises(BadPattern, match=fragment) as info:
        Matcher(pattern, regex=regex)
    assert "\n" not in str(info.value)
