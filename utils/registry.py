"""Name -> class registries that build objects from `{type, args}` config specs.

`check` validates a spec without building it: the name must be registered and
every argument must be a parameter of the class, of the annotated type. Arguments
the framework injects (for example `data_shape` for models) are not the user's
to set.
"""
from __future__ import annotations

import inspect
import types
import typing
from typing import Any, Callable, Iterable

from utils.errors import ConfigError


class Registry:
    """Maps config names to classes for one kind of object ('architecture', ...)."""

    def __init__(self, kind: str, injected: Iterable[str] = ()):
        self.kind = kind
        self.injected = frozenset(injected)
        self._classes: dict[str, type] = {}

    def register(self, name: str) -> Callable[[type], type]:
        """Class decorator: `@ARCHITECTURES.register("VAE")`."""

        def add(cls: type) -> type:
            if name in self._classes and self._classes[name] is not cls:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._classes[name] = cls
            return cls

        return add

    def add_classes(self, classes: dict[str, type]) -> None:
        for name, cls in classes.items():
            self.register(name)(cls)

    def names(self) -> list[str]:
        return sorted(self._classes)

    def get(self, name: str, path: str) -> type:
        if name not in self._classes:
            raise ConfigError(f"unknown {self.kind} {name!r} at '{path}'; valid names: {', '.join(self.names())}")
        return self._classes[name]

    def check(self, spec: dict, path: str) -> None:
        """Raise ConfigError unless `spec` names a registered class with valid args."""
        cls = self.get(spec["type"], f"{path}.type")
        args = spec.get("args") or {}
        params = inspect.signature(cls).parameters
        takes_kwargs = any(p.kind is p.VAR_KEYWORD for p in params.values())
        hints = _type_hints(cls)
        allowed = [n for n, p in params.items() if n not in self.injected and n != "self"
                   and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)]
        for key, value in args.items():
            if key in self.injected:
                raise ConfigError(f"config key '{path}.args.{key}' is set by the framework; remove it")
            if key not in params and not takes_kwargs:
                raise ConfigError(
                    f"unknown config key '{path}.args.{key}' for {self.kind} {spec['type']!r}; "
                    f"allowed: {', '.join(allowed)}"
                )
            if key in hints and not _matches(value, hints[key]):
                raise ConfigError(
                    f"config key '{path}.args.{key}' must be {_describe(hints[key])}, "
                    f"got {type(value).__name__} {value!r}"
                )
        missing = [n for n in allowed if params[n].default is inspect.Parameter.empty and n not in args]
        if missing:
            raise ConfigError(f"config key '{path}.args' misses required argument(s) {', '.join(missing)}")

    def build(self, spec: dict, path: str, *positional: Any, **injected: Any) -> Any:
        """Check and instantiate `spec`; errors from the constructor become ConfigErrors."""
        self.check(spec, path)
        cls = self.get(spec["type"], f"{path}.type")
        args = dict(spec.get("args") or {})
        params = inspect.signature(cls).parameters
        if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
            injected = {k: v for k, v in injected.items() if k in params}
        try:
            return cls(*positional, **args, **injected)
        except (TypeError, ValueError) as err:
            raise ConfigError(f"cannot build {self.kind} {spec['type']!r} from '{path}.args': {err}") from None


def _type_hints(cls: type) -> dict[str, Any]:
    target = cls.__init__ if isinstance(cls, type) else cls
    try:
        return typing.get_type_hints(target)
    except Exception:  # annotations that cannot be resolved are simply not checked
        return {}


def _matches(value: Any, hint: Any) -> bool:
    """Whether a config value fits a type annotation; unknown annotations pass."""
    origin = typing.get_origin(hint)
    if hint is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, h) for h in typing.get_args(hint))
    if origin is typing.Literal:
        return value in typing.get_args(hint)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin in (list, tuple) or hint in (list, tuple):
        if not isinstance(value, (list, tuple)):
            return False
        item_hints = typing.get_args(hint)
        if origin is list and item_hints:
            return all(_matches(v, item_hints[0]) for v in value)
        if origin is tuple and item_hints and item_hints[-1] is Ellipsis:
            return all(_matches(v, item_hints[0]) for v in value)
        return True
    if origin is dict or hint is dict:
        return isinstance(value, dict)
    return True


def _describe(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(h) for h in typing.get_args(hint))
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(hint))
    if hint is type(None):
        return "null"
    if origin is not None:
        return str(hint).replace("typing.", "")
    return getattr(hint, "__name__", str(hint))
