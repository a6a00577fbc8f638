"""Read settings once: TOML file, then ``JOULEGATE_*`` environment, then CLI flags.

Later sources override earlier ones. Values from the environment and the CLI
are strings and are parsed by the field's type; TOML values must already have
the right type. Unknown keys and unparsable values raise :class:`ConfigError`
naming the key, so a typo stops start-up instead of being ignored.

The standard ``OTEL_*`` variables keep their names: they are captured whole
into ``telemetry.otel_env`` for the telemetry component to build exporters from.
"""

from __future__ import annotations

import dataclasses
import itertools
import tomllib
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, get_args, get_origin, get_type_hints

from config.errors import ConfigError
from config.settings import Settings

ENV_PREFIX = "JOULEGATE_"
OTEL_PREFIX = "OTEL_"
DEFAULT_CONFIG_FILE = Path("joulegate.toml")


def _sections(cls: type[Any]) -> dict[str, type[Any]]:
    hints = get_type_hints(cls)
    return {
        f.name: hints[f.name]
        for f in dataclasses.fields(cls)
        if dataclasses.is_dataclass(hints[f.name])
    }


def _allowed(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if origin is tuple:
        return f"a list of {_allowed(get_args(tp)[0])}"
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_allowed(a) for a in get_args(tp) if a is not type(None))
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(
        tp, str(tp)
    )


def _parse_str(raw: str, tp: Any, key: str) -> Any:
    """Parse an environment/CLI string as the field's type."""
    origin = get_origin(tp)
    if origin is tuple:
        item = get_args(tp)[0]
        parts = [p.strip() for p in raw.split(",") if p.strip()]
        if dataclasses.is_dataclass(item):
            # A list of tables from one string: each item fills the table's first field
            # (``JOULEGATE_BACKENDS=http://a:8080,http://b:8081``).
            first = dataclasses.fields(item)[0].name
            return tuple(_check({first: p}, tp=item, key=key) for p in parts)
        return tuple(_parse_str(p, item, key) for p in parts)
    if tp is bool:
        low = raw.strip().lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"setting {key!r}: {raw!r} is not {_allowed(tp)}")
    if tp in (int, float):
        try:
            return tp(raw)
        except ValueError:
            raise ConfigError(f"setting {key!r}: {raw!r} is not {_allowed(tp)}") from None
    return _check(raw, tp, key)


def _check(value: Any, tp: Any, key: str) -> Any:
    """Check a TOML (already typed) value against the field's type."""
    origin = get_origin(tp)
    bad = ConfigError(f"setting {key!r}: {value!r} is not {_allowed(tp)}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise ConfigError(f"setting {key!r}: must be a table of settings")
        return _check_table(tp, value, key + ".")  # type: ignore[arg-type]
    if origin is Literal:
        if value not in get_args(tp):
            raise bad
        return value
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise bad
        return tuple(_check(v, get_args(tp)[0], key) for v in value)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise bad
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad
        return value
    if tp is bool or tp is str:
        if not isinstance(value, tp):
            raise bad
        return value
    raise ConfigError(f"setting {key!r}: unsupported type {tp}")  # pragma: no cover


def _build(cls: type[Any], values: Mapping[str, Any]) -> Any:
    """Construct ``cls`` from checked values, sections and lists of tables included."""
    hints = get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for name, value in values.items():
        tp = hints[name]
        item = get_args(tp)[0] if get_origin(tp) is tuple else None
        if dataclasses.is_dataclass(tp):
            kwargs[name] = _build(tp, value)  # type: ignore[arg-type]
        elif item is not None and dataclasses.is_dataclass(item):
            kwargs[name] = tuple(_build(item, v) for v in value)  # type: ignore[arg-type]
        else:
            kwargs[name] = value
    return cls(**kwargs)


def _from_strings(cls: type[Any], raw: Mapping[str, str], origin: str) -> dict[str, Any]:
    """Map dotted keys (``carbon.provider``) with string values onto typed values."""
    hints = get_type_hints(cls)
    sections = _sections(cls)
    out: dict[str, Any] = {}
    for dotted, text in raw.items():
        section, _, name = dotted.rpartition(".")
        target_cls = sections.get(section) if section else cls
        if target_cls is None or name not in {f.name for f in dataclasses.fields(target_cls)}:
            raise ConfigError(f"unknown setting {dotted!r} (from {origin})")
        tp = get_type_hints(target_cls)[name] if section else hints[name]
        if dataclasses.is_dataclass(tp):
            raise ConfigError(f"setting {dotted!r} is a section; set its keys instead")
        value = _parse_str(text, tp, dotted)
        (out.setdefault(section, {}) if section else out)[name] = value
    return out


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
    _merge(data, _from_strings(Settings, env_to_dotted(env), "environment"))
    _merge(data, _from_strings(Settings, dict(overrides or {}), "command line"))
    # OTEL_* keep their standard names; the telemetry component reads them from here.
    otel_env = tuple(sorted((k, v) for k, v in env.items() if k.startswith(OTEL_PREFIX)))
    _merge(data, {"telemetry": {"otel_env": otel_env}})
    return _build_checked(data)


def _check_table(cls: type[Any], values: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    """Check one table's keys (unknown ones name the key) and each value's type."""
    hints = get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    out: dict[str, Any] = {}
    for key, value in values.items():
        if key not in names:
            known = ", ".join(sorted(names))
            raise ConfigError(f"unknown setting {prefix + key!r}; known keys: {known}")
        out[key] = _check(value, hints[key], prefix + key)
    return out


def _build_checked(data: Mapping[str, Any]) -> Settings:
    """Type-check every leaf, then construct (so ``__post_init__`` sees right types)."""
    return typing.cast(Settings, _build(Settings, _check_table(Settings, data, "")))


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
