"""The base of every schema type (`Spec`: immutable, unknown fields refused, problems carried
to their position in the Fleet), the shared field types, and `SecretRef`."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import PurePath
from typing import Annotated, Any, ClassVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from servekit.errors import FleetError, Problem, from_validation_error, invalid, user_site
from servekit.fields import (
    ControlPath,
    EnvName,
    control_character,
)

Name = Annotated[str, StringConstraints(pattern=r"^[a-z0-9]([a-z0-9-]{0,38}[a-z0-9])?$")]
Port = Annotated[int, Field(ge=1, le=65535)]


def _strings(value: object, path: str) -> Iterator[tuple[str, str]]:
    """Every string inside a field value (lists, dicts, paths), with its position."""
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, PurePath):
        yield path, str(value)
    elif isinstance(value, list | tuple | set | frozenset):
        for index, item in enumerate(value):
            yield from _strings(item, f"{path}[{index}]")
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _strings(key, path)
            yield from _strings(item, f"{path}.{key}")


class _Invalid:
    """Stands in for an invalid Spec while the enclosing object validates: its own problems are
    reported from the carrier, and the enclosing rules never read an invalid value."""


_INVALID = _Invalid()


def _without_carriers(value: Any) -> Any:
    if isinstance(value, Spec) and value.carried_problems:
        return _INVALID
    if isinstance(value, list | tuple):
        return type(value)(_without_carriers(item) for item in value)
    if isinstance(value, dict):
        return {key: _without_carriers(item) for key, item in value.items()}
    return value


def _carriers(value: object, path: str) -> Iterator[tuple[str, Spec]]:
    """Invalid Specs inside a field value, with their position."""
    if isinstance(value, Spec) and value.carried_problems:
        yield path, value
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            yield from _carriers(item, f"{path}[{index}]")
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _carriers(item, f"{path}.{key}")


class Spec(BaseModel):
    """Base of every schema type: unknown fields are errors, values are immutable, and no string
    anywhere (lists and paths included) holds a control character.

    An invalid Spec does not raise where it is built: it carries its problems, so that the Fleet
    it is part of reports them at their position (`serve[1].port`, not `Serve.port`) together
    with every other problem, and with the inventory line that declared it. A carrier used on its
    own (any field read, or `check()`) raises its FleetError then. `Fleet` itself raises at once.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    _raise_at_once: ClassVar[bool] = False

    def __init__(self, **data: Any) -> None:
        where = user_site()
        carriers = [found for key, value in data.items() for found in _carriers(value, key)]
        nested = [
            p.at(path, spec.declared_at) for path, spec in carriers for p in spec.carried_problems
        ]
        problems: list[Problem] = []
        try:
            super().__init__(**{key: _without_carriers(value) for key, value in data.items()})
        except ValidationError as error:
            problems = [
                p
                for p in from_validation_error(
                    error, known_fields=_known_fields(type(self))
                ).problems
                if not any(p.field == path for path, _spec in carriers)
            ]
        except FleetError as error:  # cross-field rules (Fleet) report several problems at once
            problems = error.problems
        problems = nested + problems
        if not problems:
            object.__setattr__(self, "__pydantic_private__", {"_where": where, "_problems": ()})
            return
        if self._raise_at_once:
            fleet = data.get("name") if isinstance(data.get("name"), str) else None
            raise FleetError(problems, fleet=fleet, where=where)
        # A carrier: only its discriminator is readable (tagged unions need it), nothing else.
        kind = type(self).model_fields.get("kind")
        state = {"kind": data.get("kind", kind.default)} if kind is not None else {}
        object.__setattr__(self, "__dict__", state)
        object.__setattr__(self, "__pydantic_fields_set__", set(state))
        object.__setattr__(self, "__pydantic_extra__", None)
        object.__setattr__(
            self, "__pydantic_private__", {"_where": where, "_problems": tuple(problems)}
        )

    # Plain dicts inside a Fleet are validated by pydantic itself (errors at their position), not
    # through this __init__: pydantic skips an __init__ marked as its own (pydantic/main.py).
    __init__.__pydantic_base_init__ = True  # type: ignore[attr-defined]

    @field_validator("*", mode="after")
    @classmethod
    def _one_line(cls, value: Any, info: ValidationInfo) -> Any:
        for path, text in _strings(value, ""):
            bad = control_character(text)
            if bad is not None:
                raise invalid(
                    f"{path.lstrip('.') + ' ' if path else ''}contains the control character "
                    f"{bad} (a newline or similar)",
                    "write the value on one line, without control characters",
                )
        return value

    @property
    def carried_problems(self) -> tuple[Problem, ...]:
        """The problems of an invalid Spec (empty when it is valid)."""
        private = object.__getattribute__(self, "__pydantic_private__") or {}
        return tuple(private.get("_problems", ()))

    @property
    def declared_at(self) -> str:
        """FILE:LINE of the statement that built this object (the inventory line)."""
        private = object.__getattribute__(self, "__pydantic_private__") or {}
        return str(private.get("_where", ""))

    def check(self) -> None:
        """Raise the FleetError an invalid Spec carries (its fields named from its class)."""
        if self.carried_problems:
            name = type(self).__name__
            raise FleetError([p.at(name) for p in self.carried_problems], where=self.declared_at)

    def __getattr__(self, name: str) -> Any:
        if name in type(self).model_fields and self.carried_problems:
            self.check()
        return super().__getattr__(name)  # type: ignore[misc]

    def model_dump(self, **kwargs: Any) -> dict[str, Any]:
        self.check()
        return super().model_dump(**kwargs)

    def model_dump_json(self, **kwargs: Any) -> str:
        self.check()
        return super().model_dump_json(**kwargs)

    def __eq__(self, other: object) -> bool:
        """Equal values are equal Specs, wherever they were declared."""
        if not isinstance(other, BaseModel):
            return NotImplemented
        return type(self) is type(other) and self.__dict__ == other.__dict__

    def __repr__(self) -> str:
        if self.carried_problems:
            return f"{type(self).__name__}(<invalid: {len(self.carried_problems)} problem(s)>)"
        return super().__repr__()


def _known_fields(model: type[BaseModel]) -> dict[str, list[str]]:
    return {"": list(model.model_fields)}


class SecretRef(Spec):
    """Where a secret lives on the machine that runs servekit: a file (0600) or an env variable.

    The secret itself never appears in an inventory, a command line or a rendered file that is
    not 0600.
    """

    file: ControlPath | None = None
    env: EnvName | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> SecretRef:
        if (self.file is None) == (self.env is None):
            raise invalid(
                "a secret comes from one place",
                "give exactly one: SecretRef(file='~/.config/x') or SecretRef(env='VAR')",
            )
        return self

    def describe(self) -> str:
        return f"file {self.file}" if self.file else f"environment variable {self.env}"
