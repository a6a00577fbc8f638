"""Read settings once: TOML file, then ``JOULEGATE_*`` environment, then CLI flags.

Later sources override earlier ones. The merged values are converted into
:class:`Settings` by ``msgspec.convert(..., strict=False)``, which parses the
strings the environment and the CLI give (``"5"``, ``"true"``), checks Literals
and builds the nested frozen dataclasses, running their ``__post_init__``. What
msgspec does not do is here: the ``JOULEGATE_*`` names, comma-separated lists,
rejecting unknown keys (msgspec ignores them), and turning its
``ValidationError`` into a one-line :class:`ConfigError` naming the dotted key,
so a typo stops start-up instead of being ignored.

The standard ``OTEL_*`` variables keep their names: they are captured whole
into ``telemetry.otel_env`` for the telemetry component to build exporters from.
"""

from __future__ import annotations

import dataclasses
import itertools
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, get_args, get_origin, get_type_hints

import msgspec

from config.errors import ConfigError
from config.settings import Settings

ENV_PREFIX = "JOULEGATE_"
OTEL_PREFIX = "OTEL_"
DEFAULT_CONFIG_FILE = Path("joulegate.toml")
# msgspec takes true/false/1/0 for a bool; these older spellings are kept working.
_BOOL_WORDS = {"yes": "true", "on": "true", "no": "false", "off": "false"}
_STEP = re.compile(r"\.(\w+)|\[(\d+)\]")


def _types(cls: type[Any]) -> dict[str, Any]:
    """Each field's name and resolved type."""
    hints = get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _sections(cls: type[Any]) -> dict[str, Any]:
    return {name: tp for name, tp in _types(cls).items() if dataclasses.is_dataclass(tp)}


def _table_item(tp: Any) -> Any:
    """The table type of a ``tuple[SomeTable, ...]`` field (``[[backends]]``), else None."""
    item = get_args(tp)[0] if get_origin(tp) is tuple else None
    return item if dataclasses.is_dataclass(item) else None


def _allowed(tp: Any) -> str:
    if get_origin(tp) is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if get_origin(tp) is tuple:
        return f"a list of {_allowed(get_args(tp)[0])}"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(
        tp, str(tp)
    )


def _from_strings(raw: Mapping[str, str], origin: str) -> dict[str, Any]:
    """Map dotted keys (``carbon.provider``) with string values onto nested tables.

    The strings stay strings for msgspec to parse, except that lists are split on
    commas; a list of tables takes one table per item, filling its first field
    (``JOULEGATE_BACKENDS=http://a:8080,http://b:8081``).
    """
    sections = _sections(Settings)
    out: dict[str, Any] = {}
    for dotted, text in raw.items():
        section, _, name = dotted.rpartition(".")
        cls = sections.get(section) if section else Settings
        tp = _types(cls).get(name) if cls is not None else None
        if tp is None:
            raise ConfigError(f"unknown setting {dotted!r} (from {origin})")
        value: Any = _BOOL_WORDS.get(text.strip().lower(), text) if tp is bool else text
        if get_origin(tp) is tuple:
            value = [p.strip() for p in text.split(",") if p.strip()]
            if (item := _table_item(tp)) is not None:
                value = [{dataclasses.fields(item)[0].name: p} for p in value]
        (out.setdefault(section, {}) if section else out)[name] = value
    return out


def _check_keys(cls: type[Any], values: Any, prefix: str = "") -> None:
    """Reject keys ``cls`` lacks, in nested tables too (msgspec would drop them)."""
    if not isinstance(values, Mapping):
        return  # not a table: msgspec reports the type
    types = _types(cls)
    for key, value in values.items():
        if key not in types:
            known = ", ".join(sorted(types))
            raise ConfigError(f"unknown setting {prefix + key!r}; known keys: {known}")
        tp, item = types[key], _table_item(types[key])
        if dataclasses.is_dataclass(tp):
            _check_keys(tp, value, f"{prefix}{key}.")  # type: ignore[arg-type]
        elif item is not None and isinstance(value, list):
            for table in value:
                _check_keys(item, table, f"{prefix}{key}.")


def _config_error(exc: msgspec.ValidationError, data: Mapping[str, Any]) -> ConfigError:
    """msgspec's ``Expected `int`, got `str` - at `$.carbon.ttl_s``` in joulegate's words."""
    _, at, path = str(exc).rpartition(" - at `$")
    if not at:  # pragma: no cover - every error is under some key of Settings
        return ConfigError(f"settings: {exc}")
    tp: Any = Settings
    value: Any = data
    names: list[str] = []
    for name, index in _STEP.findall(path.rstrip("`")):
        if name:
            names.append(name)
            tp, value = _types(tp)[name], value[name]
        else:
            tp, value = get_args(tp)[0], value[int(index)]
    key = ".".join(names)
    if dataclasses.is_dataclass(tp):
        return ConfigError(f"setting {key!r}: must be a table of settings")
    return ConfigError(f"setting {key!r}: {value!r} is not {_allowed(tp)}")


def env_to_dotted(env: Mapping[str, str]) -> dict[str, str]:
    """``JOULEGATE_CARBON_PROVIDER`` → ``carbon.provider``; top-level keys stay flat."""
    sections = sorted(_sections(Settings), key=len, reverse=True)
    out: dict[str, str] = {}
    for name, value in env.items():
        if not name.startswith(ENV_PREFIX):
            continue
        key = name[len(ENV_PREFIX) :].lower()
        if key == "config":
            continue
        for section in sections:
            if key.startswith(section + "_"):
                key = f"{section}.{key[len(section) + 1 :]}"
                break
        out[key] = value
    return out


def _merge(base: dict[str, Any], extra: Mapping[str, Any]) -> None:
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value


def load_settings(
    config_file: Path | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, str] | None = None,
) -> Settings:
    """Build :class:`Settings` from a TOML file, the environment and CLI overrides.

    ``config_file`` defaults to ``$JOULEGATE_CONFIG`` or ``./joulegate.toml`` if it
    exists. ``overrides`` take dotted keys (``carbon.provider``) with string values.
    """
    env = dict(env or {})
    if config_file is None:
        named = env.get(ENV_PREFIX + "CONFIG")
        if named:
            config_file = Path(named)
        elif DEFAULT_CONFIG_FILE.is_file():
            config_file = DEFAULT_CONFIG_FILE
    data: dict[str, Any] = {}
    if config_file is not None:
        try:
            data = tomllib.loads(config_file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"config file {str(config_file)!r} not found") from None
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"config file {str(config_file)!r}: {exc}") from exc
        _check_keys(Settings, data)
    _merge(data, _from_strings(env_to_dotted(env), "environment"))
    _merge(data, _from_strings(dict(overrides or {}), "command line"))
    # OTEL_* keep their standard names; the telemetry component reads them from here.
    otel_env = [(k, v) for k, v in sorted(env.items()) if k.startswith(OTEL_PREFIX)]
    _merge(data, {"telemetry": {"otel_env": otel_env}})
    try:
        return msgspec.convert(data, Settings, strict=False)
    except msgspec.ValidationError as exc:
        raise _config_error(exc, data) from exc


def settings_table() -> list[tuple[str, str, str, str]]:
    """(env var, key, default, doc) for every setting; the README's table is made from it."""
    import ast
    import inspect

    rows: list[tuple[str, str, str, str]] = []

    def docs(cls: type[Any]) -> dict[str, str]:
        tree = ast.parse(inspect.getsource(cls))
        body = tree.body[0].body  # type: ignore[attr-defined]
        out: dict[str, str] = {}
        for node, nxt in itertools.pairwise(body):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and isinstance(nxt, ast.Expr)
                and isinstance(nxt.value, ast.Constant)
            ):
                out[node.target.id] = " ".join(str(nxt.value.value).split())
        return out

    def walk(cls: type[Any], prefix: str) -> None:
        hints = get_type_hints(cls)
        doc = docs(cls)
        inst = cls()
        for f in dataclasses.fields(cls):
            if dataclasses.is_dataclass(hints[f.name]):
                walk(hints[f.name], f"{f.name}.")
                continue
            env = f.metadata.get("env") or ENV_PREFIX + (prefix.replace(".", "_") + f.name).upper()
            default = getattr(inst, f.name)
            shown = ",".join(map(str, default)) if isinstance(default, tuple) else repr(default)
            rows.append((env, prefix + f.name, shown, doc.get(f.name, "")))

    walk(Settings, "")
    return rows
