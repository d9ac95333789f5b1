"""Executor CPU pinning (idunno.inference.cpus): the CPU list a node is given, and the local
cluster's one core per node."""

from __future__ import annotations

import pytest

from idunno.inference.cpus import format_cpu_list, local_node_pin, parse_cpu_list, usable_cpus


def test_cpu_lists_parse_numbers_and_ranges() -> None:
    assert parse_cpu_list("0") == {0}
    assert parse_cpu_list("0,2") == {0, 2}
    assert parse_cpu_list(" 1-3, 6 ") == {1, 2, 3, 6}
    assert format_cpu_list({6, 1, 2}) == "1,2,6"


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "expected CPU numbers"),
        ("a", "expected CPU numbers"),
        ("-1", "expected"),
        ("3-1", "runs backwards"),
        ("0,,1", "expected"),
        ("1.5", "expected"),
    ],
)
def test_bad_cpu_lists_are_one_line_errors(text: str, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment) as raised:
        parse_cpu_list(text)
    assert "--executor-cpus" in str(raised.value) and "\n" not in str(raised.value)


def test_only_cpus_this_process_may_use_are_accepted() -> None:
    assert usable_cpus(frozenset({1}), available=[0, 1]) == {1}
    with pytest.raises(ValueError, match=r"CPU 5 is not available here \(available: 0,1\)"):
        usable_cpus(frozenset({0, 5}), available=[0, 1])


def test_local_nodes_get_one_core_each_round_robin() -> None:
    cores = [0, 1]
    pins = [local_node_pin(f"n{i}", (), cores) for i in range(1, 7)]
    assert [p[1] for p in pins] == ["0", "1", "0", "1", "0", "1"]
    assert all(p[0] == "--executor-cpus" for p in pins)
    assert local_node_pin("n3", (), [2, 5, 7]) == ["--executor-cpus", "7"]
    # The caller's own choice wins; a node without an executor, or with more threads, is
    # left alone; so is a name without a number.
    assert local_node_pin("n1", ("--executor-cpus", "1"), cores) == []
    assert local_node_pin("n1", ("--inference-threads", "0"), cores) == []
    assert local_node_pin("n1", ("--inference-threads", "2"), cores) == []
    assert local_node_pin("lonely", (), cores) == []
