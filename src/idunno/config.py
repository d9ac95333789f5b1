"""One configuration file for a node (TOML), with environment overrides (pure but for reading
the file and the environment it is given).

    [node]        listen, advertise, join (list), name, data_dir, preset, inference_threads,
                  log_level
    [membership]  any field of MembershipConfig (probe_interval, suspicion_mult, ...), applied
                  on top of the preset
    [store]       replicas, min_replicas, keep_versions, sync_interval, transfer_rate,
                  busy_transfer_rate

Where a value comes from, strongest first: a command-line flag, the environment
(`IDUNNO_<SECTION>_<KEY>`, e.g. `IDUNNO_STORE_REPLICAS=3`), the file (`--config FILE` or
`$IDUNNO_CONFIG`), the built-in default. Unknown sections or keys and values of the wrong type
are one-line errors naming the key.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from idunno.membership.config import MembershipConfig
from idunno.store.config import StoreConfig

ENV_FILE = "IDUNNO_CONFIG"
ENV_PREFIX = "IDUNNO_"

NODE_DEFAULTS: dict[str, Any] = {
    "listen": "127.0.0.1:7100",
    "advertise": "",
    "join": [],
    "name": "",
    "data_dir": "",
    "preset": "lan",
    "inference_threads": 1,
    "log_level": "info",
}


def _defaults() -> dict[str, dict[str, Any]]:
    return {
        "node": dict(NODE_DEFAULTS),
        "membership": {
            f.name: getattr(MembershipConfig(), f.name) for f in fields(MembershipConfig)
        },
        "store": {f.name: getattr(StoreConfig(), f.name) for f in fields(StoreConfig)},
    }


class ConfigError(ValueError):
    """A bad configuration file or override; the message names the key and the fix."""


@dataclass(frozen=True)
class Setting:
    value: Any
    source: str  # "default", "file", "env"


Settings = dict[str, dict[str, Setting]]


def load(
    path: str | None = None, environ: Mapping[str, str] | None = None
) -> tuple[Settings, Path | None]:
    """The effective settings and the file they came from (None: no file)."""
    env = os.environ if environ is None else environ
    settings: Settings = {
        section: {k: Setting(v, "default") for k, v in values.items()}
        for section, values in _defaults().items()
    }
    file = Path(path) if path else (Path(env[ENV_FILE]) if env.get(ENV_FILE) else None)
    if file is not None:
        for section, key, value in _read_file(file):
            settings[section][key] = Setting(_typed(section, key, value, settings), "file")
    for section, values in settings.items():
        for key in values:
            name = f"{ENV_PREFIX}{section.upper()}_{key.upper()}"
            if name in env:
                text = env[name]
                settings[section][key] = Setting(_from_text(section, key, text, settings), "env")
    return settings, file


def values(settings: Settings, section: str) -> dict[str, Any]:
    return {k: s.value for k, s in settings[section].items()}


def _read_file(path: Path) -> list[tuple[str, str, Any]]:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(
            f"config file {path} does not exist: fix --config or ${ENV_FILE}"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    known = _defaults()
    out = []
    for section, table in data.items():
        if section not in known or not isinstance(table, dict):
            raise ConfigError(
                f"{path}: unknown section [{section}]: use {', '.join(f'[{s}]' for s in known)}"
            )
        for key, value in table.items():
            if key not in known[section]:
                raise ConfigError(f"{path}: unknown key {key!r} in [{section}]")
            out.append((section, key, value))
    return out


def _typed(section: str, key: str, value: Any, settings: Settings) -> Any:
    default = settings[section][key].value
    want: type = type(default)
    if want is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if want is list and isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()]
    if not isinstance(value, want) or (want is not bool and isinstance(value, bool)):
        raise ConfigError(f"[{section}] {key} must be a {want.__name__}, got {value!r}")
    if isinstance(value, int | float) and not isinstance(value, bool) and value < 0:
        raise ConfigError(f"[{section}] {key} must not be negative, got {value!r}")
    return value


def _from_text(section: str, key: str, text: str, settings: Settings) -> Any:
    want = type(settings[section][key].value)
    name = f"{ENV_PREFIX}{section.upper()}_{key.upper()}"
    try:
        if want is bool:
            value: Any = {"1": True, "true": True, "0": False, "false": False}[text.lower()]
        elif want is int:
            value = int(text)
        elif want is float:
            value = float(text)
        elif want is list:
            value = [v.strip() for v in text.split(",") if v.strip()]
        else:
            value = text
    except (KeyError, ValueError):
        raise ConfigError(f"{name}={text!r} is not a {want.__name__}") from None
    return _typed(section, key, value, settings)


def with_flags(settings: Settings, flags: Mapping[tuple[str, str], Any]) -> Settings:
    """Command-line flags (those given: not None) override everything."""
    out = {section: dict(values) for section, values in settings.items()}
    for (section, key), value in flags.items():
        if value is not None:
            out[section][key] = Setting(_typed(section, key, value, settings), "flag")
    return out


def membership(settings: Settings) -> tuple[MembershipConfig, dict[str, Setting]]:
    """The preset's timings with the settings that were set (file, env) on top, and each
    field's value and source ("preset NAME" when the preset gave it)."""
    from idunno.membership.config import preset

    name = settings["node"]["preset"].value
    try:
        base = preset(name)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    chosen = {k: s.value for k, s in settings["membership"].items() if s.source != "default"}
    try:
        cfg = base.with_overrides(**chosen)
    except TypeError as exc:
        raise ConfigError(f"[membership]: {exc}") from None
    shown = {
        f.name: settings["membership"][f.name]
        if f.name in chosen
        else Setting(getattr(cfg, f.name), f"preset {name}")
        for f in fields(MembershipConfig)
    }
    return cfg, shown


def store(settings: Settings) -> StoreConfig:
    return StoreConfig(**values(settings, "store"))
