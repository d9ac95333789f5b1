"""The node configuration: TOML file, environment overrides, flags, `idunno config show`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from idunno import config
from tests.conftest import CliRunner

FILE = """
[node]
listen = "127.0.0.1:7300"
join = ["127.0.0.1:7301", "127.0.0.1:7302"]
inference_threads = 2

[membership]
probe_interval = 0.5

[store]
replicas = 3
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "idunno.toml"
    path.write_text(text)
    return path


def test_file_then_environment_then_flags(tmp_path: Path) -> None:
    path = write(tmp_path, FILE)
    settings, used = config.load(str(path), {"IDUNNO_STORE_REPLICAS": "5"})
    assert used == path
    node = config.values(settings, "node")
    assert node["listen"] == "127.0.0.1:7300"
    assert node["join"] == ["127.0.0.1:7301", "127.0.0.1:7302"]
    assert settings["store"]["replicas"] == config.Setting(5, "env")
    assert settings["store"]["keep_versions"].source == "default"
    flagged = config.with_flags(settings, {("store", "replicas"): 2, ("node", "name"): None})
    assert flagged["store"]["replicas"] == config.Setting(2, "flag")
    assert flagged["node"]["name"].source == "default"  # a flag not given changes nothing
    assert config.store(flagged).replicas == 2


def test_membership_is_the_preset_with_the_settings_on_top(tmp_path: Path) -> None:
    settings, _ = config.load(str(write(tmp_path, FILE)), {"IDUNNO_NODE_PRESET": "local"})
    cfg, shown = config.membership(settings)
    assert cfg.probe_interval == 0.5  # the file
    assert cfg.probe_timeout == 0.05  # preset "local", not the lan default 0.1
    assert shown["probe_timeout"].source == "preset local"
    assert shown["probe_interval"].source == "file"


def test_the_file_comes_from_the_environment_too(tmp_path: Path) -> None:
    path = write(tmp_path, FILE)
    _, used = config.load(None, {config.ENV_FILE: str(path)})
    assert used == path
    assert config.load(None, {})[1] is None


@pytest.mark.parametrize(
    ("text", "env", "fragment"),
    [
        ("[nodes]\nx = 1\n", {}, "unknown section [nodes]"),
        ("[store]\nreplica = 3\n", {}, "unknown key 'replica' in [store]"),
        ("[store]\nreplicas = 'three'\n", {}, "[store] replicas must be a int"),
        ("[store]\nreplicas = -1\n", {}, "must not be negative"),
        ("[store\n", {}, "not valid TOML"),
        ("", {"IDUNNO_MEMBERSHIP_PROBE_INTERVAL": "fast"}, "IDUNNO_MEMBERSHIP_PROBE_INTERVAL"),
        ("", {"IDUNNO_NODE_PRESET": "moon"}, "unknown membership preset 'moon'"),
    ],
)
def test_mistakes_are_one_line_errors_naming_the_key(
    tmp_path: Path, text: str, env: dict[str, str], fragment: str
) -> None:
    with pytest.raises(config.ConfigError) as info:
        settings, _ = config.load(str(write(tmp_path, text)), env)
        config.membership(settings)
    assert fragment in str(info.value)
    assert "\n" not in str(info.value)


def test_config_show_prints_values_and_sources(tmp_path: Path, idunno: CliRunner) -> None:
    path = write(tmp_path, FILE)
    r = idunno("config", "show", "--config", str(path), "--json",
               env={"IDUNNO_NODE_INFERENCE_THREADS": "4"})  # fmt: skip
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["file"] == str(path)
    assert data["node"]["inference_threads"] == 4
    assert data["sources"]["node"]["inference_threads"] == "env"
    assert data["store"]["replicas"] == 3 and data["sources"]["store"]["replicas"] == "file"
    assert data["membership"]["probe_interval"] == 0.5
    r = idunno("config", "show", "--config", str(path))
    assert r.returncode == 0 and "replicas = 3  # file" in r.stdout
    r = idunno("config", "show", "--config", str(tmp_path / "missing.toml"))
    assert r.returncode == 2 and "does not exist" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
