"""The `idunno` command line, run as a subprocess the way a user runs it."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from idunno.client import Client
from idunno.localcluster import HOST, NodeProc, free_ports, is_running, port_is_free
from idunno.node.logs import read_events
from idunno.testing.procs import wait_for
from idunno.transport import keys
from tests.conftest import IDUNNO, CliRunner, assert_one_line_error, cli_env, stop_popen

HEX64 = re.compile(r"[0-9a-f]{64}")
MEMBER_FIELDS = {"id", "address", "status", "incarnation", "changed_at", "role"}


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "cluster.key"
    keys.write_key_file(path, keys.generate())
    return path


def free_base_port(n: int) -> int:
    """A port P such that P..P+n-1 are all free for TCP and UDP right now."""
    for _ in range(100):
        base = free_ports(1)[0]
        if base + n < 65536 and all(port_is_free(base + i) for i in range(n)):
            return base
    raise AssertionError(f"no run of {n} free ports found")


# --- keygen -------------------------------------------------------------------------------------


def test_keygen_prints_a_fresh_64_hex_key(idunno: CliRunner) -> None:
    first, second = idunno("keygen"), idunno("keygen")
    for r in (first, second):
        assert r.returncode == 0, r.stderr
        assert r.stderr == ""
        assert HEX64.fullmatch(r.stdout.strip()), r.stdout
        assert keys.parse(r.stdout, "stdout")  # a key the nodes accept
    assert first.stdout != second.stdout


def test_keygen_out_writes_0600_and_refuses_to_overwrite(idunno: CliRunner, tmp_path: Path) -> None:
    out = tmp_path / "sub" / "cluster.key"
    r = idunno("keygen", "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert str(out) in r.stdout
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    text = out.read_text()
    assert HEX64.fullmatch(text.strip())
    assert text.strip() not in r.stdout  # the key goes to the file only

    r = idunno("keygen", "--out", str(out))
    assert_one_line_error(r, str(out), "--force")
    assert out.read_text() == text  # untouched

    r = idunno("keygen", "--out", str(out), "--force")
    assert r.returncode == 0, r.stderr
    assert HEX64.fullmatch(out.read_text().strip())
    assert out.read_text() != text
    assert stat.S_IMODE(out.stat().st_mode) == 0o600


def test_keygen_force_over_a_readable_file_makes_it_0600(idunno: CliRunner, tmp_path: Path) -> None:
    out = tmp_path / "cluster.key"
    out.write_text("old\n")
    out.chmod(0o644)
    r = idunno("keygen", "--out", str(out), "--force")
    assert r.returncode == 0, r.stderr
    assert oct(stat.S_IMODE(out.stat().st_mode)) == oct(0o600)


# --- up / members / self / down -----------------------------------------------------------------


def _cluster_pids(directory: Path) -> list[NodeProc]:
    try:
        data = json.loads((directory / "cluster.json").read_text())
    except (OSError, ValueError):
        return []
    return [NodeProc(**n) for n in data["nodes"]]


@pytest.fixture
def cluster_dir(tmp_path: Path, idunno: CliRunner) -> Iterator[Path]:
    """A directory for `idunno up`; whatever runs from it is stopped at the end, pass or fail."""
    directory = tmp_path / "cluster"
    recorded: list[NodeProc] = []

    def remember() -> None:
        recorded.extend(n for n in _cluster_pids(directory) if n not in recorded)

    directory.mkdir()
    try:
        yield directory
    finally:
        remember()
        idunno("down", "--dir", str(directory), timeout=30)
        for nd in recorded:  # `down` failed or the file was lost: stop them by pid
            if is_running(nd):  # checks the pid is still that node, not a recycled one
                os.kill(nd.pid, signal.SIGKILL)


@pytest.mark.process
def test_up_members_self_down(idunno: CliRunner, cluster_dir: Path) -> None:
    d = str(cluster_dir)
    base = free_base_port(3)
    r = idunno("up", "--nodes", "3", "--base-port", str(base), "--dir", d, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "3 nodes up and converged" in r.stdout

    data = json.loads((cluster_dir / "cluster.json").read_text())
    nodes = data["nodes"]
    assert [n["name"] for n in nodes] == ["n1", "n2", "n3"]
    assert [n["address"] for n in nodes] == [f"{HOST}:{base + i}" for i in range(3)]
    for n in nodes:
        assert set(n) >= {"name", "address", "pid", "data_dir"}
        assert Path(n["data_dir"]).is_dir()
        assert Path(n["data_dir"]).resolve().is_relative_to(cluster_dir.resolve())
        assert is_running(NodeProc(n["name"], n["address"], n["pid"], n["data_dir"]))
    key_path = cluster_dir / "cluster.key"
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    key = keys.load(str(key_path))

    # `up` returned only once converged: every node already lists all three alive.
    for n in nodes:
        rows = Client(n["address"], key).members()["members"]
        assert [(m["id"], m["status"]) for m in rows] == [
            ("n1", "alive"),
            ("n2", "alive"),
            ("n3", "alive"),
        ]

    # A second `up` from the same directory is refused, and starts nothing.
    r = idunno("up", "--nodes", "3", "--base-port", str(base), "--dir", d)
    assert_one_line_error(r, "already running", "idunno down")

    r = idunno("members", "--dir", d, "--json")
    assert r.returncode == 0, r.stderr
    members = json.loads(r.stdout)
    assert members["self"] == "n1"
    assert len(members["members"]) == 3
    for row in members["members"]:
        assert set(row) == MEMBER_FIELDS
        assert row["status"] == "alive"
        assert row["role"] in {"coordinator", "standby", "worker"}
        assert isinstance(row["incarnation"], int)
        assert isinstance(row["changed_at"], float | int)

    r = idunno("members", "--dir", d)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split() == ["ID", "ADDRESS", "STATUS", "ROLE", "INCARNATION", "SINCE"]
    assert len(lines) == 4
    assert lines[1].startswith("n1 (self)")
    assert all(" alive " in ln for ln in lines[1:])

    # IDUNNO_DIR works in place of --dir.
    r = idunno("members", "--json", env={"IDUNNO_DIR": d})
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["self"] == "n1"

    r = idunno("self", "--dir", d)
    assert r.returncode == 0, r.stderr
    table = dict(ln.split(None, 1) for ln in r.stdout.splitlines()[1:] if " " in ln)
    assert r.stdout.splitlines()[0].split() == ["FIELD", "VALUE"]
    assert table["id"].strip() == "n1"
    assert table["status"].strip() == "alive"
    assert table["address"].strip() == nodes[0]["address"]

    r = idunno("self", "--dir", d, "--json", "--at", nodes[2]["address"])
    assert r.returncode == 0, r.stderr
    me = json.loads(r.stdout)
    assert (me["id"], me["pid"], me["live_members"]) == ("n3", nodes[2]["pid"], 3)

    r = idunno("down", "--dir", d, timeout=30)
    assert r.returncode == 0, r.stderr
    assert "stopped 3 nodes" in r.stdout
    for n in nodes:
        nd = NodeProc(n["name"], n["address"], n["pid"], n["data_dir"])
        wait_for(lambda nd=nd: not is_running(nd), 5, f"{nd.name} (pid {nd.pid}) to stop")
        assert read_events(Path(nd.data_dir))[-1]["event"] == "node_stopped"  # a clean leave
    assert not (cluster_dir / "cluster.json").exists()

    # With the cluster gone there is nothing to talk to.
    assert_one_line_error(idunno("members", "--dir", d), "no node to talk to")


def test_up_refuses_a_busy_port(idunno: CliRunner, tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:
        holder.bind((HOST, 0))
        holder.listen()
        port = holder.getsockname()[1]
        r = idunno("up", "--nodes", "1", "--base-port", str(port), "--dir", str(tmp_path / "d"))
    assert_one_line_error(r, f"port {port}", "already in use", "--base-port")
    assert not (tmp_path / "d" / "cluster.json").exists()


# --- one-line errors ----------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["members", "self", "leave"])
def test_no_cluster_is_a_one_line_error(idunno: CliRunner, command: str) -> None:
    assert_one_line_error(idunno(command), "no node to talk to", "--at", "idunno up")


@pytest.mark.parametrize("command", ["members", "self", "leave"])
def test_closed_port_is_a_one_line_error(idunno: CliRunner, key_file: Path, command: str) -> None:
    at = f"{HOST}:{free_ports(1)[0]}"
    r = idunno(command, "--at", at, "--key-file", str(key_file))
    assert_one_line_error(r, "cannot reach", at, "connection refused")


def test_bad_at_value_is_a_one_line_error(idunno: CliRunner, key_file: Path) -> None:
    r = idunno("members", "--at", "nonsense", "--key-file", str(key_file))
    assert_one_line_error(r, "--at", "'nonsense'", "HOST:PORT")


def test_bad_key_file_is_a_one_line_error(idunno: CliRunner, tmp_path: Path) -> None:
    bad = tmp_path / "bad.key"
    bad.write_text("not hex at all\n")
    r = idunno("members", "--at", f"{HOST}:1", "--key-file", str(bad))
    assert_one_line_error(r, str(bad), "not hex", "idunno keygen")
    r = idunno("members", "--at", f"{HOST}:1", "--key-file", str(tmp_path / "missing"))
    assert_one_line_error(r, "cannot read key file")


@pytest.mark.parametrize("holder_kind", [socket.SOCK_STREAM, socket.SOCK_DGRAM], ids=["tcp", "udp"])
def test_node_on_a_busy_port_is_a_one_line_error(
    idunno: CliRunner, key_file: Path, tmp_path: Path, holder_kind: int
) -> None:
    with socket.socket(socket.AF_INET, holder_kind) as holder:
        holder.bind((HOST, 0))
        if holder_kind == socket.SOCK_STREAM:
            holder.listen()
        port = holder.getsockname()[1]
        r = idunno(
            "node",
            "--listen",
            f"{HOST}:{port}",
            "--key-file",
            str(key_file),
            "--data-dir",
            str(tmp_path / "data"),
            timeout=30,
        )
    assert_one_line_error(r, f"port {port}", "already in use", "--listen")


def test_node_without_a_key_is_a_one_line_error(idunno: CliRunner, tmp_path: Path) -> None:
    port = free_ports(1)[0]
    r = idunno(
        "node", "--listen", f"{HOST}:{port}", "--data-dir", str(tmp_path / "data"), timeout=30
    )
    assert_one_line_error(r, "no cluster key", "--key-file", "IDUNNO_CLUSTER_KEY", "keygen")


@pytest.mark.parametrize(
    ("listen", "fragment"),
    [
        ("nonsense", "is not HOST:PORT"),
        ("127.0.0.1", "is not HOST:PORT"),
        ("127.0.0.1:", "is not HOST:PORT"),
        ("127.0.0.1:99999", "is not HOST:PORT"),
        ("127.0.0.1:0", "is not HOST:PORT"),
        (":7000", "is not HOST:PORT"),
        ("0.0.0.0:7000", "needs --advertise"),
    ],
)
def test_node_bad_listen_is_a_one_line_error(
    idunno: CliRunner, key_file: Path, tmp_path: Path, listen: str, fragment: str
) -> None:
    r = idunno(
        "node",
        "--listen",
        listen,
        "--key-file",
        str(key_file),
        "--data-dir",
        str(tmp_path / "data"),
        timeout=30,
    )
    assert_one_line_error(r, fragment)


@pytest.mark.parametrize(
    ("flag", "value", "fragments"),
    [
        ("--join", "127.0.0.1:7000,oops", ("--join", "'oops'")),
        ("--executor-cpus", "x", ("--executor-cpus", "expected CPU numbers")),
        ("--executor-cpus", "4096", ("--executor-cpus", "CPU 4096 is not available")),
    ],
)
def test_a_bad_node_flag_is_a_one_line_error(
    idunno: CliRunner,
    key_file: Path,
    tmp_path: Path,
    flag: str,
    value: str,
    fragments: tuple[str, ...],
) -> None:
    port = free_ports(1)[0]
    r = idunno(
        "node",
        "--listen",
        f"{HOST}:{port}",
        flag,
        value,
        "--key-file",
        str(key_file),
        "--data-dir",
        str(tmp_path / "data"),
        timeout=30,
    )
    assert_one_line_error(r, *fragments)


@pytest.mark.parametrize("command", ["node", "up"])
def test_unknown_preset_is_rejected(idunno: CliRunner, key_file: Path, command: str) -> None:
    args = ["--listen", f"{HOST}:{free_ports(1)[0]}"] if command == "node" else []
    r = idunno(command, *args, "--key-file", str(key_file), "--preset", "bogus", timeout=30)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    assert r.stdout == ""
    # argparse prints its usage lines first, then exactly one error line.
    errors = [ln for ln in r.stderr.splitlines() if "error:" in ln]
    assert len(errors) == 1, r.stderr
    assert "--preset" in errors[0] and "'bogus'" in errors[0]
    assert all(p in errors[0] for p in ("lan", "local", "wan"))


# --- a node that cannot join keeps running ------------------------------------------------------


@pytest.mark.process
def test_node_with_unreachable_join_logs_and_keeps_running(key_file: Path, tmp_path: Path) -> None:
    port, dead_port = free_ports(2)
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    stderr_path = data_dir / "stderr.log"
    seed = f"{HOST}:{dead_port}"
    argv = [str(IDUNNO), "node", "--listen", f"{HOST}:{port}", "--join", seed]
    argv += ["--name", "lonely", "--key-file", str(key_file), "--data-dir", str(data_dir)]
    with open(stderr_path, "wb") as err:
        proc = subprocess.Popen(
            argv,
            cwd=tmp_path,
            env=cli_env(),
            stdin=subprocess.DEVNULL,
            stdout=err,
            stderr=err,
            start_new_session=True,
        )
    try:
        # It keeps retrying, with a warning each time, instead of exiting.
        failures = wait_for(
            lambda: len(found := read_events(data_dir, "join_failed")) >= 2 and found,
            15,
            "two join_failed events",
        )
        assert proc.poll() is None, "the node exited after a failed join"
        for ev in failures:
            assert ev["level"] == "warning"
            assert ev["addr"] == seed
            assert ev["reason"] == "connection refused"
            assert ev["retry_in_s"] > 0
        me = Client(f"{HOST}:{port}", keys.load(str(key_file))).self_info()
        assert (me["id"], me["status"], me["live_members"]) == ("lonely", "alive", 1)

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    finally:
        stop_popen(proc)
    text = stderr_path.read_text()
    assert "WARNING join_failed" in text
    assert f"addr={seed}" in text
    assert "Traceback" not in text
