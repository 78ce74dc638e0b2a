"""Component: the base of everything registered by name with settings (attacks, defenses, transfer methods)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from advml.config import Settings, validate
from advml.errors import ConfigError
from advml.registry import Registry

AnySettings = Settings  # the base type, for annotations inside classes whose `Settings` is a ClassVar


class Component:
    """A registered name (`name`, set by the registry's decorator) with pydantic `Settings`: built from a settings
    object or from keyword settings (validated, unknown keys named with the closest valid one); `describe()` is
    the name and every setting, defaults included, as recorded in run folders."""

    name: ClassVar[str]
    Settings: ClassVar[type[AnySettings]] = AnySettings
    settings: Any  # an instance of `Settings`; subclasses narrow the type

    def __init__(self, settings: AnySettings | None = None, **kwargs: Any) -> None:
        if settings is not None and kwargs:
            raise ConfigError("pass either a settings object or keyword settings, not both")
        if settings is not None and not isinstance(settings, self.Settings):
            raise ConfigError(f"{self.name} takes {self.Settings.__name__}, got {type(settings).__name__}")
        self.settings = settings if settings is not None else validate(self.Settings, kwargs)

    def describe(self) -> dict[str, Any]:
        """The component's name and every setting (defaults included)."""
        return {"name": self.name, **self.settings.model_dump(mode="json")}


def resolved(registry: Registry[Any], spec: Mapping[str, Any]) -> dict[str, Any]:
    """What `describe()` of the component `spec` names would return, from its settings alone (nothing is built:
    no trigger, no encoder)."""
    if "name" not in spec:
        raise ConfigError(f"{registry.kind} settings need a 'name'")
    rest = dict(spec)
    name = rest.pop("name")
    cls = registry.get(name)
    return {"name": name, **validate(cls.Settings, rest).model_dump(mode="json")}
