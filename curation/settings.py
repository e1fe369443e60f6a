"""Typed settings: one dataclass per section, one loader and one command line for every command.

Each stage module defines its own section (`ExtractSettings` in extract.py, …), with every field's
default and meaning written once, through `setting(default, "meaning")`. A command's settings class
groups the sections and fields it uses (`jobs.curate.CurateSettings`, `trainer.config.TrainConfig`, …);
`load_settings` fills it from an optional YAML file and `KEY=VALUE` overrides (dotted keys:
`langid.threshold=0.6`), checks every value's type, choices and range, and raises `SettingsError`
naming the key. `parse_command` is every command's front door: `--config FILE`, `KEY=VALUE`,
`--print-settings` (the settings it would run with, as YAML with each meaning) and the few flags a
command names as shortcuts for its settings (`--output DIR` for `output=DIR`); a wrong name, type,
choice or range is a one-line error and exit 2, before Spark or torch does any work.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import sys
import types
import typing
from pathlib import Path
from typing import Any, Literal, NoReturn

import yaml


class SettingsError(ValueError):
    """A setting that does not exist, or a value of the wrong type, choice or range."""


def setting(default: Any, doc: str, *, minimum: float | None = None, maximum: float | None = None,
            required: bool = False):
    """A documented field of a settings dataclass (a list or dict default is copied per instance). A
    `required` one has no default worth running with (an output directory): `parse_command` refuses
    to run without it, but `--print-settings` shows it."""
    metadata = {"doc": doc, "minimum": minimum, "maximum": maximum, "required": required}
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=metadata)
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
    max_failed_share: float = setting(0.0, "exit non-zero when more than this share of the inputs failed",
                                      minimum=0, maximum=1)
    skip_after_failures: int = setting(0, "an input that failed in this many runs in a row is skipped, not "
                                          "retried (0: always retried)", minimum=0)


# ---- the loader ----------------------------------------------------------------------------------

class _Loader(yaml.SafeLoader):
    """PyYAML's YAML 1.1 reads a number with an exponent and no dot (`3e-4`, `1e6`) as text; JSON and
    YAML 1.2 read it as the number a user means (the trainer's JSON configs hold `"lr": 3e-4`)."""


_Loader.add_implicit_resolver("tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9][0-9_]*(\.[0-9_]*)?[eE][-+]?[0-9]+$"),
                              list("-+0123456789"))


def load_settings(cls, path: str | Path | None = None, overrides: typing.Iterable[str] = ()):
    """An instance of the settings dataclass `cls` from the YAML file at `path` (any subset of the
    settings) and `KEY=VALUE` overrides (values parsed as YAML), checked against `cls`."""
    values: dict = {}
    if path is not None:
        try:
            values = yaml.load(Path(path).read_text(), Loader=_Loader) or {}
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
            value = yaml.load(text, Loader=_Loader)
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
    if origin is dict:  # `mix.en=0.7` or `mix={en: 0.7}`: the range applies to each value
        if not isinstance(value, dict):
            raise SettingsError(f"{key}={value!r}: expected a mapping")
        return {str(name): _check(f"{key}.{name}", item, args[1], metadata) for name, item in value.items()}
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


def part_of(settings, cls):
    """The `cls` part of `settings`, an instance of a subclass of `cls` (a command's settings that add
    its paths to a library's: `jobs.shards.ShardsCommand`), as a `cls`."""
    return cls(**{f.name: getattr(settings, f.name) for f in dataclasses.fields(cls)})


def as_dict(settings) -> dict:
    return dataclasses.asdict(settings)


def describe(settings, indent: str = "") -> str:
    """Every setting of `settings` (an instance, or a class for its defaults) as YAML with its value
    and meaning: a config file to start from."""
    cls = settings if isinstance(settings, type) else type(settings)
    lines = []
    for f in dataclasses.fields(cls):
        kind = typing.get_type_hints(cls)[f.name]
        if isinstance(settings, type):
            value = kind if dataclasses.is_dataclass(kind) else \
                f.default_factory() if f.default is dataclasses.MISSING else f.default
        else:
            value = getattr(settings, f.name)
        if dataclasses.is_dataclass(kind):
            lines.append(f"{indent}{f.name}:{'  # ' + f.metadata['doc'] if f.metadata.get('doc') else ''}")
            lines.append(describe(value, indent + "  "))
        else:
            text = yaml.safe_dump(value, default_flow_style=True, width=1000, allow_unicode=True)
            text = text.strip().removesuffix("\n...")
            lines.append(f"{f'{indent}{f.name}: {text}':<40} # {f.metadata.get('doc', '')}".rstrip())
    return "\n".join(lines)


# ---- the command line ----------------------------------------------------------------------------

def parse_command(cls, argv: list[str] | None = None, *, prog: str, description: str,
                  flags: dict[str, str] | None = None, arguments: str | None = None):
    """The settings a command runs with, from its command line: `--config FILE` (YAML, any subset),
    then the `flags` given ({"--output": "output"}: shortcuts for settings, read as their own
    `KEY=VALUE`) and the words that are not settings, as the list setting `arguments` when the
    command names one (`python -m curation.score FILE…`), then `KEY=VALUE` arguments.
    `--print-settings` prints them as YAML and exits 0; a wrong setting, a missing required one or a
    bad flag exits 2 with a one-line error. Nothing else (no Spark, no torch) happens before this
    returns."""
    flags = flags or {}
    parser = argparse.ArgumentParser(prog=prog, description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", metavar="FILE", help="YAML file of settings (any subset of --print-settings')")
    parser.add_argument("--print-settings", action="store_true",
                        help="print the settings this command would run with, as YAML, and exit")
    for flag, key in flags.items():
        kind, doc = _field_at(cls, key)
        if kind is bool:
            parser.add_argument(flag, dest=key, action="store_const", const="true", help=f"{key}=true: {doc}")
        else:
            many = typing.get_origin(kind) is list
            # A list flag takes several values, and a repeated one adds to them (`--wikipedia A --wikipedia B`).
            parser.add_argument(flag, dest=key, nargs="+" if many else None, action="extend" if many else "store",
                                metavar=key.rsplit(".")[-1].upper(), help=f"sets {key}: {doc}")
    parser.add_argument("overrides", nargs="*", metavar=f"{arguments.upper()}|KEY=VALUE" if arguments else "KEY=VALUE",
                        help=(f"{_field_at(cls, arguments)[1]}, and " if arguments else "") +
                        "settings, e.g. a.b=1 (see --print-settings)")
    args = parser.parse_intermixed_args(argv)  # flags before or after the KEY=VALUE settings
    for key in flags.values():  # `--input A B key=value`: the list flag took the settings after it
        values = getattr(args, key)
        if isinstance(values, list):
            setattr(args, key, [v for v in values if not _is_setting(cls, v)] or None)
            args.overrides += [v for v in values if _is_setting(cls, v)]
    if arguments:  # `FILE… key=value`: the words not shaped as KEY=VALUE (`./a=b` is a file) are `arguments`
        words, args.overrides = args.overrides, [w for w in args.overrides if _is_key_value(w)]
        setattr(args, arguments, [w for w in words if not _is_key_value(w)] or None)
    overrides = [_flag_override(key, getattr(args, key), _field_at(cls, key)[0])
                 for key in [*flags.values(), *filter(None, [arguments])] if getattr(args, key) is not None]
    try:
        settings = load_settings(cls, args.config, [*overrides, *args.overrides])
        if not args.print_settings:
            check_required(settings)
    except SettingsError as error:
        exit_with_error(str(error), flags)
    if args.print_settings:
        print_quietly(f"# The settings of `{prog}` (its --print-settings): each value and meaning. Use a copy of\n"
                      f"# the lines you change as --config FILE, or pass them as KEY=VALUE.\n{describe(settings)}")
        raise SystemExit(0)
    return settings


def _field_at(cls, key: str) -> tuple[Any, str]:
    """The type and meaning of the setting at dotted `key` of `cls`."""
    *sections, leaf = key.split(".")
    for name in sections:
        cls = typing.get_type_hints(cls)[name]
    field = {f.name: f for f in dataclasses.fields(cls)}[leaf]
    kind = typing.get_type_hints(cls)[leaf]
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        (kind,) = [a for a in typing.get_args(kind) if a is not type(None)]
    return kind, field.metadata.get("doc", "")


def _is_setting(cls, argument: str) -> bool:
    """Whether `argument` is a `KEY=VALUE` of a setting of `cls` (not a path that holds a `=`)."""
    key, sep, _ = argument.partition("=")
    try:
        return bool(sep) and not dataclasses.is_dataclass(_field_at(cls, key)[0])
    except (KeyError, TypeError):
        return False


def _is_key_value(word: str) -> bool:
    """Whether `word` is shaped as `KEY=VALUE` (a misspelt key is then named as unknown, not read as a file)."""
    key, sep, _ = word.partition("=")
    return bool(sep) and re.fullmatch(r"[A-Za-z_][\w.]*", key) is not None


def _flag_override(key: str, value, kind) -> str:
    """A flag's value as the `KEY=VALUE` it stands for: text stays text (a path such as `on` or `1e3`
    is not read as YAML), a list is written as a YAML list."""
    if isinstance(value, list):
        return f"{key}={yaml.safe_dump([str(v) for v in value], default_flow_style=True, width=10**6).strip()}"
    if kind is str:
        return f"{key}={yaml.safe_dump(str(value), default_style=chr(39), width=10**6).strip()}"
    return f"{key}={value}"


def check_required(settings, prefix: str = "") -> None:
    """A SettingsError for the first `required` setting left unset (None or empty)."""
    for f in dataclasses.fields(settings):
        value = getattr(settings, f.name)
        if dataclasses.is_dataclass(value):
            check_required(value, f"{prefix}{f.name}.")
        elif f.metadata.get("required") and value in (None, "", []):
            raise SettingsError(f"{prefix}{f.name} is required: {f.metadata.get('doc', '')}")


def exit_with_error(message: str, flags: dict[str, str] | None = None) -> NoReturn:
    """A command's one-line error on stderr, and exit status 2 (a usage error, as argparse's)."""
    for flag, key in (flags or {}).items():  # name the flag the user typed, not only its setting
        if message.startswith(f"{key} is required"):
            message = f"{flag} ({key}) is required"
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def print_quietly(text: str) -> None:
    """Prints to stdout; a reader that stops early (`| head`) ends it quietly, not with a
    BrokenPipeError (Python's documented way: stdout pointed at devnull for the exit's flush)."""
    try:
        print(text, flush=True)
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
