"""One helper per validation rule, shared by the pydantic validators of `models` and the stages. No torch.

`from_flags` builds a `models` model from a command's flags (the CLI does this; the stages take the model
and do not check its values again).

A rule is checked in two places with one wording each:
- a params.yaml field (`what` left empty): a ValueError with the bare rule, `must be in [0, 1), got 1.5`;
  pydantic puts the field's location in front (`score.expert_sparsity: must be ...`).
- a stage or function argument (`what` names it): a one-line MoepruneError naming the value and the fix,
  `sparsity 1.2 is outside [0, 1); pass a fraction such as 0.5`.
"""

from __future__ import annotations

import re
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from moeprune.errors import MoepruneError

M = TypeVar("M", bound=BaseModel)

_NM = re.compile(r"(\d+):(\d+)")


def check_fraction(value: float, what: str = "", hint: str = "pass a fraction such as 0.5") -> float:
    """`value` as a float when it lies in [0, 1) (a sparsity), else the error of the rule.

    Args:
        value: the fraction to check.
        what: the name the user knows it by ("sparsity", "expert sparsity"); empty for a config field.
        hint: the fix the MoepruneError suggests (only with `what`).
    """
    if not 0.0 <= float(value) < 1.0:
        if not what:
            raise ValueError(f"must be in [0, 1), got {value}")
        raise MoepruneError(f"{what} {value} is outside [0, 1); {hint}")
    return float(value)


def check_nm(n: int, m: int, in_features: int | None = None) -> None:
    """MoepruneError unless N:M is a valid pattern (integers, 1 <= n < m) whose M divides `in_features`."""
    if not (isinstance(n, int) and isinstance(m, int)) or n < 1 or n >= m:
        raise MoepruneError(f"N:M pattern {n}:{m} needs integers with 1 <= N < M; use e.g. 2:4")
    if in_features is not None and in_features % m != 0:
        raise MoepruneError(
            f"N:M pattern {n}:{m} needs in_features divisible by {m}, got {in_features}; pick another M"
        )


def parse_nm(text: str, what: str = "") -> tuple[int, int]:
    """'2:4' -> (2, 4), checked by `check_nm`; `what` names the flag (e.g. "--nm"), empty for a config field."""
    match = _NM.fullmatch(str(text))
    if not match:
        if not what:
            raise ValueError(f"must look like N:M (e.g. 2:4), got {text!r}")
        raise MoepruneError(f"{what} '{text}' is not an N:M pattern; write it like 2:4")
    n, m = int(match.group(1)), int(match.group(2))
    if not what and not 0 < n < m:
        raise ValueError(f"needs 0 < N < M, got {text!r}")
    check_nm(n, m)
    return n, m


def validation_problems(error: ValidationError) -> list[tuple[tuple[str | int, ...], str]]:
    """(location, message) of every problem of a pydantic error, in the wording moeprune prints."""
    problems = []
    for item in error.errors():
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "unknown key (check the spelling against params.yaml's documented sections)"
        elif item["type"] == "missing":
            message = "required key is missing"
        if "input" in item and item["type"] not in ("value_error", "extra_forbidden", "missing"):
            message += f", got {item['input']!r}"
        problems.append((tuple(item["loc"]), message))
    return problems


_GROUPS = ("options", "lm_eval")  # sub-models whose keys are flags themselves


def from_flags(model: type[M], **values: Any) -> M:
    """A params model built from a command's flags (`values` keyed by field name or alias).

    Raises:
        MoepruneError: one line naming each bad flag, `--samples: Input should be greater than 0, got 0`;
            a rule spanning several flags (`give exactly one of ...`) is named by its message alone.
    """
    try:
        return model.model_validate(values)
    except ValidationError as error:
        lines = []
        for loc, message in validation_problems(error):
            name = str(loc[-1]) if loc else ""
            lines.append(message if not name or name in _GROUPS else f"--{name.replace('_', '-')}: {message}")
        raise MoepruneError("; ".join(lines)) from None
