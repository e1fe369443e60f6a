"""Typed settings: one dataclass per section, one loader for every job.

Each stage module defines its own section (`ExtractSettings` in extract.py, …), with every field's
default and meaning written once, through `setting(default, "meaning")`. A job's settings class
groups the sections it uses (`jobs.curate.CurateSettings`); `load_settings` fills it from an optional YAML
file and `KEY=VALUE` overrides (dotted keys: `langid.threshold=0.6`), checks every value's type,
choices and range, and raises `SettingsError` naming the key — before any Spark starts.
`python -m jobs.curate --print-settings` prints every setting with its default and meaning.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml


class SettingsError(ValueError):
    """A setting that does not exist, or a value of the wrong type, choice or range."""


def setting(default: Any, doc: str, *, minimum: float | None = None, maximum: float | None = None):
    """A documented field of a settings dataclass (a list default is copied per instance)."""
    metadata = {"doc": doc, "minimum": minimum, "maximum": maximum}
    if isinstance(default, list):
        return dataclasses.field(default_factory=lambda: list(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def section(cls):
    """A field that holds a whole section, with that section's defaults."""
    return dataclasses.field(default_factory=cls, metadata={"doc": (cls.__doc__ or "").strip()})


# ---- the sections that belong to no stage -------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class InputSettings:
    """What the curate job reads: a CommonCrawl snapshot, or paths/URLs."""
    snapshot: str | None = setting(None, "YYYY-WW or CC-MAIN-YYYY-WW; null: read `paths`")
    format: Literal["warc", "wet"] = setting("warc", "which listing of the snapshot to read")
    base_url: str = setting("https://data.commoncrawl.org", "mirror of CommonCrawl's layout")
    segments: str = setting("1", "N (the first N), A:B (a range), sample:N (seeded), or all")
    seed: int = setting(0, "for sample:N")
    paths: list[str] = setting([], "local paths, globs, http(s):// or s3:// URLs, when no snapshot")
    retries: int = setting(5, "HTTP retries on 429/5xx/timeouts, exponential backoff", minimum=0)
    backoff_seconds: float = setting(1.0, "first retry delay; doubles each time", minimum=0)


@dataclasses.dataclass(frozen=True)
class PartitionSettings:
    """How phase 2 cuts its work into tasks (never fewer than the cluster's cores)."""
    text_bytes: int = setting(128 * 2**20, "text per task of the row-wise stages (at most: tasks shrink towards a "
                              "stage's end) and target size of a shuffle partition, in bytes", minimum=1)


@dataclasses.dataclass(frozen=True)
class RunSettings:
    """How a run ends."""
    max_failed_share: float = setting(0.0, "exit non-zero when more than this share of segments failed",
                                      minimum=0, maximum=1)
    skip_after_failures: int = setting(0, "a segment that failed in this many runs in a row is skipped, not "
                                          "retried (0: always retried)", minimum=0)


# ---- the loader ----------------------------------------------------------------------------------

def load_settings(cls, path: str | Path | None = None, overrides: typing.Iterable[str] = ()):
    """An instance of the settings dataclass `cls` from the YAML file at `path` (any subset of the
    settings) and `KEY=VALUE` overrides (values parsed as YAML), checked against `cls`."""
    values: dict = {}
    if path is not None:
        try:
            values = yaml.safe_load(Path(path).read_text()) or {}
        except OSError as error:
            raise SettingsError(f"{path}: {error.strerror}") from None
        except yaml.YAMLError as error:
            raise SettingsError(f"{path}: {_one_line(error)}") from None
        if not isinstance(values, dict):
            raise SettingsError(f"{path}: expected a mapping of settings, got {type(values).__name__}")
    for override in overrides:
        key, sep, text = override.partition("=")
        if not sep or not key.strip():
            raise SettingsError(f"{override!r}: expected KEY=VALUE")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as error:
            raise SettingsError(f"{key}: {_one_line(error)}") from None
        *parents, leaf = key.strip().split(".")
        node = values
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise SettingsError(f"{key}: {part} is a setting, not a section")
        node[leaf] = value
    return _build(cls, values, "")


def _one_line(error: yaml.YAMLError) -> str:
    """PyYAML's message is several lines with a drawing of the spot; say what and where in one."""
    mark = getattr(error, "problem_mark", None)
    problem = getattr(error, "problem", None) or str(error).splitlines()[0]
    return f"{problem} (line {mark.line + 1}, column {mark.column + 1})" if mark else problem


def _build(cls, values: dict, prefix: str):
    if not isinstance(values, dict):
        raise SettingsError(f"{prefix.rstrip('.')}: a section, expected a mapping, got {values!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise SettingsError(f"unknown setting {prefix}{unknown[0]}; known in {prefix.rstrip('.') or 'settings'}: "
                            f"{', '.join(fields)}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in values.items():
        kind = hints[name]
        if dataclasses.is_dataclass(kind):
            kwargs[name] = _build(kind, value, f"{prefix}{name}.")
        else:
            kwargs[name] = _check(f"{prefix}{name}", value, kind, fields[name].metadata)
    return cls(**kwargs)


def _check(key: str, value, kind, metadata) -> Any:
    """`value` as a `kind`, or a SettingsError that says what was expected."""
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (kind,) = [a for a in args if a is not type(None)]
        return _check(key, value, kind, metadata)
    if origin is Literal:
        if value not in args:
            raise SettingsError(f"{key}={value!r}: expected one of {', '.join(map(str, args))}")
        return value
    if origin is list:
        items = value if isinstance(value, list) else [value]
        return [_check(key, item, args[0], {}) for item in items]
    if kind is bool:
        if not isinstance(value, bool):
            raise SettingsError(f"{key}={value!r}: expected true or false")
        return value
    if kind in (int, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and value != int(value)):
            raise SettingsError(f"{key}={value!r}: expected {'an integer' if kind is int else 'a number'}")
        value = kind(value)
        low, high = metadata.get("minimum"), metadata.get("maximum")
        if (low is not None and value < low) or (high is not None and value > high):
            raise SettingsError(f"{key}={value!r}: expected a value in [{low}, {high if high is not None else '∞'}]")
        return value
    if kind is str:
        if isinstance(value, (dict, list)) or value is None:
            raise SettingsError(f"{key}={value!r}: expected a string")
        return str(value)  # `segments=10` is read by YAML as a number
    raise TypeError(f"{key}: settings of type {kind} are not supported")


def as_dict(settings) -> dict:
    return dataclasses.asdict(settings)


def describe(cls, indent: str = "") -> str:
    """Every setting of `cls` as YAML with its default and meaning: a config file to start from."""
    lines = []
    for f in dataclasses.fields(cls):
        kind = typing.get_type_hints(cls)[f.name]
        if dataclasses.is_dataclass(kind):
            lines.append(f"{indent}{f.name}:{'  # ' + f.metadata['doc'] if f.metadata.get('doc') else ''}")
            lines.append(describe(kind, indent + "  "))
        else:
            default = f.default_factory() if f.default is dataclasses.MISSING else f.default
            value = yaml.safe_dump(default, default_flow_style=True, width=1000).strip().removesuffix("\n...")
            lines.append(f"{f'{indent}{f.name}: {value}':<40} # {f.metadata.get('doc', '')}".rstrip())
    return "\n".join(lines)
