"""One registry mechanism for methods, protocols and metrics: the :class:`Registry` class.

Entries are lazy ``"package.module:Object"`` strings, so listing what exists never
imports torch or a model backend. Third-party packages add entries through the
entry-point groups ``codeswap_harness.methods``, ``codeswap_harness.protocols`` and
``codeswap_harness.metrics`` (value: ``"their_pkg.module:Object"``).

The registries themselves and the built-in entries are the application's
(``harness.registry``); each package declares its own built-ins (``methods.entries``,
``protocols.entries``, ``faceeval.metrics.entries``).

Example:
    >>> r = Registry("thing", "codeswap_harness.things")
    >>> _ = r.register("a", "pkg.mod:A", aliases=("x",))
    >>> r.resolve("x").target
    'pkg.mod:A'
"""

from __future__ import annotations

import difflib
import importlib
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any

from faceeval.errors import HarnessError


@dataclass(frozen=True)
class Entry:
    """A registered object, not imported until it is needed."""

    name: str
    target: str  # "package.module:Object"
    description: str = ""
    aliases: tuple[str, ...] = ()
    origin: str = "builtin"  # or the distribution that provided it through an entry point
    options: tuple[tuple[str, Any], ...] = ()  # keyword arguments bound at construction
    requires: tuple[str, ...] = ()  # weight-file names (faceeval.weights) it cannot run without; "a|b": either
    explicit_only: bool = False  # run only when named (it needs options): `--method all` skips it
    # "module:function" called with the entry's options: why `--method all` should skip it
    # (a string), or None when it can run; checked without importing the entry
    not_ready: str = ""
    kind: str = "entry"  # "method", "protocol", "metric": used in messages
    base: str = ""  # "module:Class" every loaded object must subclass (the registry's interface)

    def weight_problems(self) -> dict[str, HarnessError]:
        """Required weight files that cannot be used -> why (a one-line error): not found
        (``WeightNotFound``: where it was looked for) or refused for its checksum
        (``WeightMismatch``); checked without importing the entry."""
        from faceeval.weights import locate

        problems = {}
        for required in self.requires:
            for name in required.split("|"):  # "a|b": either file will do
                try:
                    locate(name)
                    break
                except HarnessError as exc:
                    problem = exc
            else:
                problems[name] = problem  # the last alternative's (the packaged one: names its fetch)
        return problems

    def missing_weights(self) -> list[str]:
        """Names of the required weight files that cannot be used (:meth:`weight_problems`)."""
        return list(self.weight_problems())

    def skip_reason(self) -> str | None:
        """Why ``--method all`` skips this entry (missing weights, or its ``not_ready`` check)."""
        missing = self.missing_weights()
        if missing:
            return f"weights missing: {', '.join(missing)}"
        if self.not_ready:
            module_name, _, attr = self.not_ready.partition(":")
            return getattr(importlib.import_module(module_name), attr)(**dict(self.options))
        return None

    def load(self) -> Any:
        """Import and return the registered object (a class or factory)."""
        module_name, _, attr = self.target.partition(":")
        try:
            module = importlib.import_module(module_name)
        except Exception as exc:  # a plugin may fail at import in any way (SyntaxError, RuntimeError...)
            text = " ".join(str(exc).split())[:300]
            raise HarnessError(f"{self.kind} {self.name}: cannot import {module_name} "
                               f"({type(exc).__name__}: {text})") from exc
        try:
            obj = getattr(module, attr)
        except AttributeError as exc:
            raise HarnessError(f"{self.name}: {module_name} has no attribute {attr!r}") from exc
        if self.base:
            base_module, _, base_name = self.base.partition(":")
            base = getattr(importlib.import_module(base_module), base_name)
            if not (isinstance(obj, type) and issubclass(obj, base)):
                raise HarnessError(f"{self.kind} {self.name!r}: {self.target} is not a subclass of "
                                   f"{base.__module__}.{base.__name__}, the interface every {self.kind} implements")
        return obj

    def broken(self) -> str | None:
        """Why a plugin (an entry-point entry) cannot be used: it fails at import or is not
        a subclass of its interface; None when it loads. Built-ins are not imported here
        (listing them must not load a model backend); their import errors surface when run."""
        if self.origin == "builtin":
            return None
        try:
            self.load()
        except HarnessError as exc:
            return f"broken: {exc}"
        return None

    def bind(self, **kwargs: Any) -> dict[str, Any]:
        """The entry's bound options overridden by ``kwargs``, checked against the class's
        declared settings and text values converted (:func:`faceeval.options.bind`): an
        unknown key is an error with the closest known name."""
        from faceeval.options import bind

        return bind(self.load(), {**dict(self.options), **kwargs}, f"{self.kind} {self.name!r}")

    def create(self, **kwargs: Any) -> Any:
        """Load and instantiate with :meth:`bind`'s settings."""
        return self.load()(**self.bind(**kwargs))


@dataclass
class Registry:
    """A named collection of lazy entries with aliases and close-name suggestions."""

    kind: str  # "method", "protocol", "metric": used in messages
    entry_point_group: str
    base: str = ""  # "module:Class" that every entry must subclass, checked when it loads
    _entries: dict[str, Entry] = field(default_factory=dict)
    _aliases: dict[str, str] = field(default_factory=dict)
    _plugins_loaded: bool = False

    def register(
        self,
        name: str,
        target: str,
        *,
        description: str = "",
        aliases: tuple[str, ...] = (),
        origin: str = "builtin",
        options: dict[str, Any] | None = None,
        requires: tuple[str, ...] = (),
        explicit_only: bool = False,
        not_ready: str = "",
    ) -> Entry:
        """Add an entry; validates the name and target form now, not at first use."""
        if not name or not name.replace("_", "").replace("-", "").replace(".", "").isalnum():
            raise ValueError(f"invalid {self.kind} name {name!r}: use letters, digits, '_', '-', '.'")
        if ":" not in target or target.startswith(":") or target.endswith(":"):
            raise ValueError(f"{self.kind} {name!r}: target must look like 'package.module:Object', got {target!r}")
        for key in (name, *aliases):
            if key in self._entries or key in self._aliases:
                raise ValueError(f"{self.kind} name {key!r} is registered twice")
        entry = Entry(name, target, description, tuple(aliases), origin, tuple(sorted((options or {}).items())),
                      tuple(requires), explicit_only, not_ready, self.kind, self.base)
        self._entries[name] = entry
        for alias in aliases:
            self._aliases[alias] = name
        return entry

    def _load_plugins(self) -> None:
        if self._plugins_loaded:
            return
        self._plugins_loaded = True
        for ep in entry_points(group=self.entry_point_group):
            if ep.name in self._entries or ep.name in self._aliases:
                continue  # a built-in name wins; the plugin stays reachable by its own other names
            dist = ep.dist.name if ep.dist is not None else "plugin"
            self.register(ep.name, ep.value, description=f"plugin from {dist}", origin=dist)

    def names(self) -> list[str]:
        """Registered canonical names, in registration order (built-ins first)."""
        self._load_plugins()
        return list(self._entries)

    def entries(self) -> list[Entry]:
        self._load_plugins()
        return list(self._entries.values())

    def resolve(self, name: str) -> Entry:
        """The entry for ``name`` or an alias; unknown names raise with a suggestion."""
        self._load_plugins()
        canonical = self._aliases.get(name, name)
        if canonical in self._entries:
            return self._entries[canonical]
        candidates = list(self._entries) + list(self._aliases)
        close = difflib.get_close_matches(name, candidates, n=1, cutoff=0.5)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise HarnessError(
            f"unknown {self.kind} {name!r}{hint} (known: {', '.join(self._entries)})"
        )

    def create(self, name: str, **kwargs: Any) -> Any:
        return self.resolve(name).create(**kwargs)
