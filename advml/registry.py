"""A small name -> factory registry shared by datasets, models, attacks and defenses."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Generic, TypeVar, cast

from advml.errors import ConfigError, UnknownNameError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to objects (classes or factories), with helpful errors for unknown names."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}
        self._help: dict[str, str] = {}
        self._titles: dict[str, str] = {}

    def register(self, name: str, help: str | None = None, *, title: str | None = None) -> Callable[[T], T]:
        """Decorator that adds an object under `name` (a class also gets it as its `name` attribute); `help`
        defaults to the first paragraph of its docstring, `title` is its display name in tables and reports."""

        def deco(obj: T) -> T:
            if isinstance(obj, type):
                obj.name = name  # type: ignore[attr-defined]  # the name lives in one place: here
            self.add(name, obj, help, title=title)
            return obj

        return deco

    def add(self, name: str, obj: T, help: str | None = None, *, title: str | None = None) -> None:
        """Add `obj` under `name`; `title` is its display name in tables and reports (default: `name`)."""
        if name in self._items:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._items[name] = obj
        paragraph = (getattr(obj, "__doc__", None) or "").strip().split("\n\n")[0]
        self._help[name] = help or " ".join(paragraph.split())
        if title:
            self.set_title(name, title)

    def set_title(self, name: str, title: str) -> None:
        """Give a registered name its display name in tables and reports."""
        self.get(name)
        self._titles[name] = title

    def get(self, name: str) -> T:
        """The object registered under `name`; an `UnknownNameError` listing valid names otherwise."""
        try:
            return self._items[name]
        except (KeyError, TypeError):  # TypeError: an unhashable value from a config file ({name: [1]})
            raise UnknownNameError(self.unknown_message(name)) from None

    def build(self, spec: str | Mapping[str, Any], **settings: Any) -> Any:
        """Call the object registered under a name with settings, or under spec['name'] with the rest of spec."""
        if isinstance(spec, Mapping):
            if "name" not in spec:
                raise ConfigError(f"{self.kind} settings need a 'name'")
            settings = {**spec, **settings}
            spec = cast(str, settings.pop("name"))
        return self.get(spec)(**settings)  # type: ignore[operator]

    def unknown_message(self, name: str) -> str:
        """The error text for an unknown name: the valid names and the closest one."""
        close = difflib.get_close_matches(str(name), self._items, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return f"unknown {self.kind} {name!r}{hint}; valid: {', '.join(self.names())}"

    def names(self) -> list[str]:
        """Registered names, in registration order."""
        return list(self._items)

    def title(self, name: str) -> str:
        """The display name of `name` (e.g. 'D-BR' for 'd-br'); `name` itself when none was given."""
        return self._titles.get(name, name)

    def describe(self) -> list[tuple[str, str]]:
        """(name, one-line description) pairs."""
        return [(n, self._help[n]) for n in self._items]

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)
