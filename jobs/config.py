"""The YAML config of a job: documented defaults in config/, KEY=VALUE overrides (dotted keys)."""

from __future__ import annotations

from pathlib import Path

import yaml

CONFIG_DIR = Path(__file__).resolve().parent.parent / "config"


def load_config(path: str | Path, overrides: list[str] = ()) -> dict:
    config = yaml.safe_load(Path(path).read_text()) or {}
    for override in overrides:
        key, sep, value = override.partition("=")
        if not sep:
            raise ValueError(f"{override!r}: expected KEY=VALUE")
        set_key(config, key.strip(), yaml.safe_load(value))
    return config


def set_key(config: dict, dotted: str, value) -> None:
    *parents, leaf = dotted.split(".")
    node = config
    for i, part in enumerate(parents):
        if not isinstance(node.get(part), dict):
            raise KeyError(f"unknown setting {dotted!r} (no section {'.'.join(parents[:i + 1])!r})")
        node = node[part]
    if leaf not in node:
        raise KeyError(f"unknown setting {dotted!r}; known: {', '.join(sorted(node))}")
    node[leaf] = value if not isinstance(node[leaf], str) or value is None else str(value)
