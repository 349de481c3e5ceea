"""One registry type for every named method: scorers, unstructured methods, evaluation tasks.

Torch-free: the entries (name, summary, needs, options with types and defaults, facts) are declared in
`catalog/scorers.py`, `catalog/unstructured.py` and `catalog/tasks.py`; the torch implementations attach
to them (`@REGISTRY.implements("name")`). params/models.py, the CLI help, flows/study_plan.py and README's
method tables read the declarations, so a method's name, needs and options are written once.

    SCORERS = Registry("scoring method", needs=("profile", "reference", "calibration"))
    SCORERS.declare("naee", "NAEE enumeration", needs=("calibration",),
                    options={"max_combinations": Option(int, 5000, "refuse above this many keep-sets")})

    @SCORERS.implements("naee")                    # in scoring/naee.py
    def score_naee(ctx): ...

    SCORERS.get("naee")(ctx)                       # MoepruneError listing the valid names if unknown
    SCORERS.get("naee").parse_options({"max_combinations": "100"})   # {"max_combinations": 100}
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from moeprune.errors import MoepruneError

_TRUE, _FALSE = ("true", "yes", "1", "on"), ("false", "no", "0", "off")


@dataclass(frozen=True)
class Option:
    """One declared method option: its type (bool, int, float or str), default and one line of help."""

    type: type
    default: Any
    help: str

    def parse(self, value: Any, name: str, owner: str) -> Any:
        """`value` (a CLI string or a YAML/Python value) as this option's type; MoepruneError (one line) if not."""
        if isinstance(value, str) and self.type is not str:
            value = self._from_text(value.strip(), name, owner)
        if self.type is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, self.type) or (self.type is not bool and isinstance(value, bool)):
            raise MoepruneError(
                f"{owner} option {name}={value!r} must be {self.type_name}; for example {name}={self.example}"
            )
        return value

    def _from_text(self, text: str, name: str, owner: str) -> Any:
        if self.type is bool:
            if text.lower() in _TRUE + _FALSE:
                return text.lower() in _TRUE
            return text
        try:
            return self.type(text)
        except ValueError:
            return text

    @property
    def type_name(self) -> str:
        return {bool: "true or false", int: "an integer", float: "a number"}.get(self.type, self.type.__name__)

    @property
    def example(self) -> str:
        return str(self.default).lower() if self.type is bool else str(self.default)


@dataclass(frozen=True, eq=False)
class Entry:
    """One registered method: what it is, what it needs, its options and facts, and its attached parts.

    Attributes:
        name: the registry key (the `--method` / `--task` value).
        summary: one line for help texts and README tables.
        needs: the inputs a run must supply (names from the registry's `needs`).
        options: option name -> `Option` (type, default, help); the only names a method may read.
        facts: the registry's facts (e.g. a task's metric prefix, a method's `needs_hessian`), every key
            the registry declares filled in; readable as attributes (`task.metrics`).
        parts: the implementation's functions, attached by the torch modules (`fn`, `prune_`, `evaluate`).
    """

    name: str
    summary: str
    needs: tuple[str, ...] = ()
    options: Mapping[str, Option] = field(default_factory=dict)
    facts: Mapping[str, Any] = field(default_factory=dict)
    parts: dict[str, Callable[..., Any]] = field(default_factory=dict, compare=False, repr=False)

    def __getattr__(self, key: str) -> Any:
        for store in ("facts", "parts"):
            values = self.__dict__.get(store, {})
            if key in values:
                return values[key]
        raise AttributeError(f"{type(self).__name__} {self.__dict__.get('name')!r} has no attribute {key!r}")

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Call the implementation attached as `fn`."""
        if "fn" not in self.parts:
            raise RuntimeError(f"{self.name!r} is declared but no implementation is attached (import its module)")
        return self.parts["fn"](*args, **kwargs)

    def defaults(self) -> dict[str, Any]:
        """Every declared option at its default."""
        return {name: option.default for name, option in self.options.items()}

    def default(self, name: str) -> Any:
        """The declared default of option `name`; an undeclared name is a programming error (KeyError)."""
        if name not in self.options:
            raise KeyError(f"{self.name!r} reads option {name!r}, which it does not declare; declare it in its catalog")
        return self.options[name].default

    def parse_options(self, given: Mapping[str, Any] | None, owner: str | None = None) -> dict[str, Any]:
        """The given options (`-` in names read as `_`) checked against the declaration and typed.

        Raises:
            MoepruneError: one line: an unknown option (naming the valid ones) or a value of the wrong type.
        """
        owner = owner or f"method {self.name!r}"
        parsed = {}
        for key, value in (given or {}).items():
            name = key.replace("-", "_")
            if name not in self.options:
                valid = ", ".join(self.options) or "none"
                raise MoepruneError(f"{owner} has no option {key!r}; valid options: {valid}")
            parsed[name] = self.options[name].parse(value, name, owner)
        return parsed


class Registry:
    """Name -> Entry, in declaration order; `get` fails with one line listing the valid names.

    Args:
        what: what an entry is, for messages ("scoring method").
        needs: the inputs entries may need (a typo in a declaration fails at import).
        facts: every fact an entry carries, with its default (a fact not listed here is refused).
        listing: how the unknown-name error introduces the valid names ("valid methods").
    """

    def __init__(
        self,
        what: str,
        needs: tuple[str, ...] = (),
        facts: Mapping[str, Any] | None = None,
        listing: str = "valid",
    ) -> None:
        self.what = what
        self.listing = listing
        self.valid_needs = tuple(needs)
        self.fact_defaults = dict(facts or {})
        self._entries: dict[str, Entry] = {}

    def declare(
        self,
        name: str,
        summary: str,
        needs: tuple[str, ...] = (),
        options: Mapping[str, Option] | None = None,
        **facts: Any,
    ) -> Entry:
        """Add an entry (no implementation yet); a duplicate name, unknown need or unknown fact is an error."""
        if name in self._entries:
            raise ValueError(f"{self.what} {name!r} is declared twice")
        unknown = set(needs) - set(self.valid_needs)
        if unknown:
            raise ValueError(f"unknown needs {sorted(unknown)} for {self.what} {name!r}; valid: {self.valid_needs}")
        stray = set(facts) - set(self.fact_defaults)
        if stray:
            raise ValueError(
                f"unknown facts {sorted(stray)} for {self.what} {name!r}; valid: {sorted(self.fact_defaults)}"
            )
        entry = Entry(name, summary, tuple(needs), dict(options or {}), {**self.fact_defaults, **facts})
        self._entries[name] = entry
        return entry

    def implements(self, name: str, part: str = "fn") -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Decorator attaching `fn` as `part` of the declared entry `name` (once)."""

        def decorator(fn: Callable[..., Any]) -> Callable[..., Any]:
            if name not in self._entries:
                raise ValueError(f"{self.what} {name!r} is implemented but not declared in its catalog")
            entry = self._entries[name]
            if part in entry.parts:
                raise ValueError(f"{self.what} {name!r} has its {part!r} attached twice")
            entry.parts[part] = fn
            return fn

        return decorator

    def get(self, name: str) -> Entry:
        """The entry `name`; MoepruneError (one line, the valid names sorted) when unknown."""
        if name not in self._entries:
            raise MoepruneError(f"unknown {self.what} '{name}'; {self.listing}: {', '.join(sorted(self._entries))}")
        return self._entries[name]

    def names(self) -> list[str]:
        """Every entry's name, in declaration order."""
        return list(self._entries)

    def entries(self) -> list[Entry]:
        return list(self._entries.values())

    def __getitem__(self, name: str) -> Entry:
        return self.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)


__all__ = ["Entry", "Option", "Registry"]
