"""Settings given as text (``--option``, ``--metric pose:unit=rad``, ``--method-option``):
parsed, converted and checked once, when the registry creates the object.

The constructor's signature is the declaration: its parameter names are the settings and
their annotations (or defaults) the types. An entry whose constructor takes ``**options``
declares them with a frozen dataclass in the class attribute ``OPTIONS`` instead.

Example:
    >>> from faceeval.options import parse_bool
    >>> parse_bool("yes", "detect")
    True
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import sys
import types
import typing
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from faceeval.errors import HarnessError

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")
_NONE = ("", "none", "default")


def parse_bool(value: object, name: str = "value", owner: str = "") -> bool:
    """The one text-to-bool rule: 1/true/yes/on and 0/false/no/off (any case); else an error."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    where = f" for {owner}" if owner else ""
    raise HarnessError(f"setting {name!r}{where} must be true or false (1/0, yes/no, on/off), got {value!r}")


def parse_pairs(items: Iterable[str], flag: str) -> dict[str, str]:
    """``key=value`` items (``-`` in keys read as ``_``); a malformed item is an error."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise HarnessError(f"{flag} expects key=value, got {item!r}")
        out[key.replace("-", "_")] = value
    return out


def suggest(name: str, known: Iterable[str]) -> str:
    """``; did you mean 'x'?`` for the closest known name, or nothing."""
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def setting(default: Any, help: str, *, flag: str | tuple[str, ...] = (), min: float | None = None,
            path: bool = False, required: bool = False) -> Any:
    """A dataclass field's default plus what a command that offers it (``harness train``,
    ``harness run``) shows for it: ``help``; ``flag``, the option's names when not
    ``--field-name``; ``min``, the smallest value accepted; ``path``, a string field the command
    line takes as a path; ``required``, no usable default (``dataclasses.MISSING``: none at all)."""
    flags = (flag,) if isinstance(flag, str) else tuple(flag)
    return dataclasses.field(default=default, metadata={"help": help, "flags": flags, "min": min, "path": path,
                                            "required": required})


def _types_of(annotation: Any) -> tuple[Any, ...]:
    """The member types of a (possibly union / Optional) annotation."""
    origin = typing.get_origin(annotation)
    if origin is typing.Union or (sys.version_info >= (3, 10) and origin is types.UnionType):
        return typing.get_args(annotation)
    return (annotation,)


def _convert(value: str, annotation: Any, default: Any, name: str, owner: str) -> Any:
    """Text -> the declared type. Unknown or unresolvable annotations: the default's type,
    else the text unchanged."""
    members = _types_of(annotation) if annotation is not inspect.Parameter.empty else ()
    if not members or all(isinstance(m, str) for m in members):
        members = (type(default),) if default not in (None, inspect.Parameter.empty) else (str,)
    if type(None) in members and str not in members and value.strip().lower() in _NONE:
        return None
    try:
        if bool in members:
            return parse_bool(value, name, owner)
        if int in members:
            return int(value.strip(), 10)
        if float in members:
            return float(value)
        if Path in members or inspect.isclass(members[0]) and issubclass(members[0], Path):
            return value if str in members else Path(value).expanduser()
    except ValueError:
        kind = "an integer" if int in members else "a number"
        raise HarnessError(f"setting {name!r} for {owner} must be {kind}, got {value!r}") from None
    return value


def _resolved_hints(func: Callable) -> dict[str, Any]:
    """Annotations evaluated one by one: an unresolvable forward reference is skipped."""
    raw = getattr(func, "__annotations__", {}) or {}
    scope = getattr(inspect.unwrap(func), "__globals__", {})
    hints = {}
    for key, ann in raw.items():
        if isinstance(ann, str):
            try:
                ann = eval(ann, dict(scope), {"Path": Path})  # the module's own annotation text
            except Exception:  # noqa: BLE001 - a name only a type checker knows: fall back to the default
                continue
        hints[key] = ann
    return hints


def _dataclass_fields(cls: type) -> dict[str, tuple[Any, Any]]:
    try:
        hints = typing.get_type_hints(cls)
    except Exception:  # noqa: BLE001 - unresolvable names: fall back to the defaults' types
        hints = {}
    return {f.name: (hints.get(f.name, inspect.Parameter.empty), f.default) for f in dataclasses.fields(cls)
            if f.init}


def declared(factory: Callable) -> dict[str, tuple[Any, Any]]:
    """``{setting: (annotation, default)}`` a factory accepts (a class: its ``__init__``)."""
    if dataclasses.is_dataclass(factory) and isinstance(factory, type):
        return _dataclass_fields(factory)
    func = factory.__init__ if inspect.isclass(factory) else factory
    sig = inspect.signature(func)
    hints = _resolved_hints(func)
    out: dict[str, tuple[Any, Any]] = {}
    for p in sig.parameters.values():
        if p.name == "self" or p.kind in (p.VAR_POSITIONAL, p.POSITIONAL_ONLY):
            continue
        if p.kind is p.VAR_KEYWORD:
            config = getattr(factory, "OPTIONS", None)
            if not (dataclasses.is_dataclass(config) and isinstance(config, type)):
                raise HarnessError(f"{getattr(factory, '__name__', factory)} takes **{p.name} but declares no "
                                   "OPTIONS dataclass: its settings cannot be checked")
            out.update(_dataclass_fields(config))
            continue
        out[p.name] = (hints.get(p.name, inspect.Parameter.empty), p.default)
    return out


def bind(factory: Callable, settings: dict[str, Any], owner: str) -> dict[str, Any]:
    """Check ``settings`` against what ``factory`` declares and convert text values.

    ``owner`` names the entry in messages, e.g. ``"metric 'pose'"``. An unknown key is an
    error with the closest known name; values that are not text pass through unchanged.
    """
    known = declared(factory)
    out = {}
    for key, value in settings.items():
        if key not in known:
            hint = suggest(key, known) or f" (known: {', '.join(known) or 'none'})"
            raise HarnessError(f"unknown setting {key!r} for {owner}{hint}")
        annotation, default = known[key]
        out[key] = _convert(value, annotation, default, key, owner) if isinstance(value, str) else value
    return out
