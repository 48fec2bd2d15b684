"""A small typed schema for TOML tables, standard library only (pydantic cost every process
~10 MB RSS: bench/README.md "Memory").

A table is a keyword-only `Table` dataclass: each field's annotation is its type (`str`, `int`,
`float`, `bool`, `Path`, a `Literal`, `X | None`, `list[X]`, `dict[str, X]`, another `Table`,
`Annotated[X, check, ...]`) and `setting()` gives its default, bounds and checks; the line
under a field is its documentation (`field_docs`). `build()` turns a TOML table into a Table
and constructing one validates it too: unknown keys are errors, and every problem becomes one
line naming its dotted key (`services.camera.upstream: ...`), all raised in one `ConfigError`.
Messages keep pydantic's wording, which the configuration's tests and users know.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import types
import typing
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, TypeVar, Union, get_args, get_origin

from yarl import URL

from peerproxyd.errors import ConfigError

__all__ = ["Table", "build", "environment", "field_docs", "merge", "parse_url", "setting"]

T = TypeVar("T", bound="Table")
Check = Callable[[Any], Any]
"""Returns the value, normalized, or raises ValueError with the problem."""

_MISSING: Any = dataclasses.MISSING


class _Reported(Exception):
    """A nested value failed; its problems are already in the list."""


def setting(
    default: Any = _MISSING,
    *,
    factory: Callable[[], Any] | None = None,
    gt: float | None = None,
    ge: float | None = None,
    le: float | None = None,
    min_length: int | None = None,
    before: Check | None = None,
    check: Check | None = None,
    repr: bool = True,
) -> Any:
    """A field: its default (or `factory`), bounds, and checks run before (`before`, on the raw
    value) and after (`check`, on the typed value) conversion to the annotated type."""
    metadata = {"gt": gt, "ge": ge, "le": le, "min_length": min_length,
                "before": before, "check": check}
    metadata = {key: value for key, value in metadata.items() if value is not None}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=metadata, repr=repr)
    return dataclasses.field(default=default, metadata=metadata, repr=repr)


@dataclasses.dataclass(kw_only=True)
class Table:
    """A TOML table. Constructing one validates and normalizes every field (`ConfigError`)."""

    removed_keys: ClassVar[Mapping[str, str]] = {}
    """Keys of earlier releases: key -> why it is refused (instead of "unknown key")."""

    def __post_init__(self) -> None:
        problems: list[str] = []
        _check_fields(self, "", problems)
        if problems:
            raise ConfigError(problems)

    def cross_check(self, valid: set[str]) -> Iterator[tuple[str, str]]:
        """Rules between fields, as (key, problem), given the keys whose values are valid."""
        return iter(())


def build(cls: type[T], data: Mapping[str, Any]) -> T:
    """`data` (a TOML table) as a `cls`; `ConfigError` with every problem."""
    problems: list[str] = []
    table = _table(cls, data, "", problems)
    if table is None:
        raise ConfigError(problems)
    return table


@functools.cache
def _fields(cls: type[Table]) -> list[tuple[dataclasses.Field[Any], Any]]:
    hints = typing.get_type_hints(cls, include_extras=True)
    return [(field, hints[field.name]) for field in dataclasses.fields(cls)]


def _key(loc: str, name: object) -> str:
    return f"{loc}.{name}" if loc else str(name)


def _table(cls: type[T], data: object, loc: str, problems: list[str]) -> T | None:
    if isinstance(data, cls):
        return data
    if not isinstance(data, Mapping):
        problems.append(f"{loc}: Input should be a valid dictionary or instance of {cls.__name__}")
        return None
    table = cls.__new__(cls)
    for field, _ in _fields(cls):
        if field.name in data:
            value = data[field.name]
        elif field.default_factory is not _MISSING:
            value = field.default_factory()
        else:
            value = field.default
        setattr(table, field.name, value)
    before = len(problems)
    _check_fields(table, loc, problems)
    names = {field.name for field, _ in _fields(cls)}
    for key in data:
        if key in cls.removed_keys:
            problems.append(f"{_key(loc, key)}: {cls.removed_keys[key]}")
        elif key not in names:
            problems.append(f"unknown key: {_key(loc, key)}")
    return table if len(problems) == before else None


def _check_fields(table: Table, loc: str, problems: list[str]) -> None:
    """Convert and check each field of `table` in place; then its `cross_check`."""
    valid = set()
    for field, kind in _fields(type(table)):
        key = _key(loc, field.name)
        value = getattr(table, field.name)
        if value is _MISSING:
            problems.append(f"{key}: required")
            continue
        try:
            setattr(table, field.name, _value(value, kind, key, problems, field.metadata))
        except ValueError as exc:
            problems.append(f"{key}: {exc}")
        except _Reported:
            pass
        else:
            valid.add(field.name)
    for name, problem in table.cross_check(valid):
        problems.append(f"{_key(loc, name) if name else loc}: {problem}")


def _value(value: Any, kind: Any, key: str, problems: list[str], rules: Mapping[str, Any]) -> Any:
    """`value` converted to `kind` and checked by `rules`; ValueError for a problem of this
    value, `_Reported` once nested values have added theirs to `problems`."""
    if "before" in rules:
        value = rules["before"](value)
    value = _convert(value, kind, key, problems)
    if value is not None:
        _bounds(value, rules)
    if "check" in rules:
        value = rules["check"](value)
    return value


def _convert(value: Any, kind: Any, key: str, problems: list[str]) -> Any:
    origin, args = get_origin(kind), get_args(kind)
    if origin is Annotated:
        value = _convert(value, args[0], key, problems)
        for check in args[1:]:
            value = check(value)
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        [kind] = [arg for arg in args if arg is not type(None)]
        return _convert(value, kind, key, problems)
    if origin is Literal:
        if isinstance(value, str) and value in args:
            return value
        choices = [repr(arg) for arg in args]
        raise ValueError(f"Input should be {', '.join(choices[:-1])} or {choices[-1]}")
    if origin is list:
        if not isinstance(value, list | tuple):
            raise ValueError("Input should be a valid list")
        return _items(list(enumerate(value)), None, args[0], key, problems)
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ValueError("Input should be a valid dictionary")
        return dict(_items(list(value.items()), args[0], args[1], key, problems))
    if isinstance(kind, type) and issubclass(kind, Table):
        table = _table(kind, value, key, problems)
        if table is None:
            raise _Reported
        return table
    return _SCALARS[kind](value)


def _items(items: list[tuple[Any, Any]], key_kind: Any, kind: Any, loc: str,
           problems: list[str]) -> Any:
    """The converted values of a list (`key_kind` None) or (key, value) pairs of a dict."""
    out, failed = [], False
    for name, item in items:
        key = _key(loc, name)
        try:
            if key_kind is not None:
                name = _convert(name, key_kind, key, problems)
            item = _convert(item, kind, key, problems)
        except ValueError as exc:
            problems.append(f"{key}: {exc}")
            failed = True
        except _Reported:
            failed = True
        out.append(item if key_kind is None else (name, item))
    if failed:
        raise _Reported
    return out


def _bounds(value: Any, rules: Mapping[str, Any]) -> None:
    if "gt" in rules and not value > rules["gt"]:
        raise ValueError(f"Input should be greater than {rules['gt']}")
    if "ge" in rules and not value >= rules["ge"]:
        raise ValueError(f"Input should be greater than or equal to {rules['ge']}")
    if "le" in rules and not value <= rules["le"]:
        raise ValueError(f"Input should be less than or equal to {rules['le']}")
    least = rules.get("min_length")
    if least is not None and len(value) < least:
        if isinstance(value, str):
            raise ValueError(f"String should have at least {least} characters")
        items = "item" if least == 1 else "items"
        raise ValueError(f"List should have at least {least} {items} after validation, "
                         f"not {len(value)}")


def _str(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError("Input should be a valid string")
    return value


def _int(value: object) -> int:
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        if not value.is_integer():
            raise ValueError("Input should be a valid integer, got a number with a fractional part")
        return int(value)
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            raise ValueError(
                "Input should be a valid integer, unable to parse string as an integer"
            ) from None
    raise ValueError("Input should be a valid integer")


def _float(value: object) -> float:
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            raise ValueError(
                "Input should be a valid number, unable to parse string as a number"
            ) from None
    raise ValueError("Input should be a valid number")


_BOOLS = {"1": True, "on": True, "t": True, "true": True, "y": True, "yes": True,
          "0": False, "off": False, "f": False, "false": False, "n": False, "no": False}


def _bool(value: object) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _BOOLS:
        return _BOOLS[value.strip().lower()]
    if isinstance(value, int | float) and value in (0, 1):
        return bool(value)
    if isinstance(value, str | int):
        raise ValueError("Input should be a valid boolean, unable to interpret input")
    raise ValueError("Input should be a valid boolean")


def _path(value: object) -> Path:
    if isinstance(value, str | Path):
        return Path(value)
    raise ValueError(f"Input is not a valid path for {Path!r}")


_SCALARS: dict[Any, Check] = {str: _str, int: _int, float: _float, bool: _bool, Path: _path}


def parse_url(value: str, schemes: tuple[str, ...]) -> URL:
    """`value` as an absolute URL with a host and one of `schemes`, normalized as browsers do
    (lowercase scheme and host, IDNA, no default port, at least `/` as its path)."""
    message = ""
    try:
        url = URL(value)
    except ValueError as exc:
        message = ", invalid port number" if "port" in str(exc).lower() else f", {exc}"
    else:
        if not value:
            message = ", input is empty"
        elif not url.scheme:
            message = ", relative URL without a base"
        elif url.scheme in schemes and not url.raw_host:
            message = ", empty host"
        elif url.raw_host and any(c.isspace() for c in url.raw_host):
            message = ", invalid international domain name"
    if message:
        raise ValueError(f"Input should be a valid URL{message}")
    if url.scheme not in schemes:
        names = [repr(scheme) for scheme in schemes]
        raise ValueError(f"URL scheme should be {' or '.join(names)}")
    if len(value) > 2083:
        raise ValueError("URL should have at most 2083 characters")
    return url.with_path(url.raw_path or "/", encoded=True, keep_query=True, keep_fragment=True)


def environment(cls: type[Table], prefix: str, environ: Mapping[str, str]) -> dict[str, Any]:
    """The `<prefix><KEY>[__<KEY>...]` variables of `environ` as a table for `cls`, names
    case-insensitive: values for a list or a table are JSON, others strings. Variables whose
    first key is not one of `cls` are ignored (as pydantic-settings did)."""
    table: dict[str, Any] = {}
    tops = {field.name for field in dataclasses.fields(cls)}
    prefix = prefix.lower()
    for name, value in sorted((name.lower(), value) for name, value in environ.items()):
        if not name.startswith(prefix):
            continue
        keys = name[len(prefix):].split("__")
        if keys[0] not in tops:
            continue
        if _is_complex(_kind_at(cls, keys)) and value:
            try:
                value = json.loads(value)
            except ValueError as exc:
                raise ConfigError([
                    f"environment: {name.upper()}: not JSON ({exc}); lists and tables are JSON"
                ]) from None
        for key in reversed(keys):
            value = {key: value}
        table = merge(table, value)
    return table


def _kind_at(kind: Any, keys: list[str]) -> Any:
    """The type at `keys` under `kind`; None when it is no key of the schema."""
    for key in keys:
        kind = _bare(kind)
        if isinstance(kind, type) and issubclass(kind, Table):
            kind = dict((field.name, hint) for field, hint in _fields(kind)).get(key)
        elif get_origin(kind) is dict:
            kind = get_args(kind)[1]
        else:
            return None
    return kind


def _bare(kind: Any) -> Any:
    """`kind` without `Annotated` and `| None`."""
    if get_origin(kind) is Annotated:
        return _bare(get_args(kind)[0])
    if get_origin(kind) in (Union, types.UnionType):
        return _bare(next(arg for arg in get_args(kind) if arg is not type(None)))
    return kind


def _is_complex(kind: Any) -> bool:
    kind = _bare(kind)
    return get_origin(kind) in (list, dict) or (isinstance(kind, type) and issubclass(kind, Table))


def merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """`base` with `over`'s values, tables merged key by key."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            value = merge(out[key], value)
        out[key] = value
    return out


def field_docs(cls: type) -> dict[str, str]:
    """Each field's documentation: the string literal under it in the class body (read from the
    source, so it costs nothing at run time)."""
    import ast
    import inspect
    import textwrap

    body = ast.parse(textwrap.dedent(inspect.getsource(cls))).body[0]
    assert isinstance(body, ast.ClassDef)
    docs = {}
    for node, after in zip(body.body, body.body[1:]):
        if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                and isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant)
                and isinstance(after.value.value, str)):
            docs[node.target.id] = inspect.cleandoc(after.value.value)
    return docs
