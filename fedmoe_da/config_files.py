"""Config files: a JSON or TOML table of config fields, or a run or compare folder's config.json.

``read_table`` parses the file and unwraps a run folder's ``{"config": {...}, "versions": {...}}``;
``config.read_config_file`` then checks the field names against ``ExperimentConfig``.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .rules import ConfigError

RUN_FILE_KEYS = ("config", "versions", "strategies", "seeds")   # a run or compare folder's config.json


def read_table(path: str | Path) -> tuple[dict[str, Any], dict[str, Any], str]:
    """(fields, extras, where) of a .json or .toml file; extras: a compare folder's 'strategies' and 'seeds'.

    ``where`` names the file for messages. The fields are not checked against the config's names here.
    """
    path = Path(path)
    where = f"config file {str(path)!r}"
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{where} cannot be read: {exc.strerror or exc}") from None
    if path.suffix == ".toml":
        try:
            import tomllib
        except ImportError:   # Python 3.10
            raise ConfigError(f"{where}: TOML needs Python >= 3.11; use a .json file") from None
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{where} is not valid TOML: {str(exc).splitlines()[0]}") from None
    elif path.suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{where} is not valid JSON: {str(exc).splitlines()[0]}") from None
    else:
        raise ConfigError(f"{where} is invalid: must end in .json or .toml")
    if not isinstance(data, dict):
        raise ConfigError(f"{where} is invalid: must hold a table of config fields")
    extras: dict[str, Any] = {}
    if isinstance(data.get("config"), dict):
        unknown = sorted(set(data) - set(RUN_FILE_KEYS))
        if unknown:
            raise ConfigError(f"{where}: unknown key {unknown[0]!r}: a run folder's file holds "
                              + ", ".join(RUN_FILE_KEYS))
        extras = {k: data[k] for k in ("strategies", "seeds") if k in data}
        data = data["config"]
    return data, extras, where
