"""Pydantic models for `params.yaml`: one model per section, unknown keys and bad values rejected.

Only this module and the orchestration code (stages register/promote/serve/sweep, `flows/`) read
params.yaml; every other stage receives its values as CLI flags from `dvc.yaml`. The whole file is
validated first everywhere: every dvc.yaml stage runs `moeprune check-params` before its command, and
every flow calls `load_params` before it does anything. Types are strict (`samples: true` and
`quick: "yes"` are errors, not 1 and True), unknown keys are errors, seeds are >= 0.

Example (the repository's params.yaml is the full, commented version)::

    kind: lm
    score: {method: stun, expert_sparsity: 0.5, seed: 0}
    prune_unstructured: {method: wanda, options: {total-sparsity: 0.6, owl: true}}
    promote: {metric: gsm8k.exact_match_strict, min_retention: 0.9}
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from moeprune.catalog.scorers import SCORERS
from moeprune.catalog.tasks import TASKS, task_prefixes, usage
from moeprune.catalog.unstructured import unstructured_choices
from moeprune.errors import MoepruneError
from moeprune.evaluation.lm_eval_tasks import BACKENDS as LM_EVAL_BACKENDS
from moeprune.params.rules import check_fraction, parse_nm, validation_problems
from moeprune.testbed.presets import FAMILIES as TESTBED_FAMILIES
from moeprune.testbed.presets import PRESETS

# The method and task names come from their registries (`moeprune.catalog`), never typed here.
SCORE_METHODS = tuple(SCORERS.names())
UNSTRUCTURED_METHODS = unstructured_choices()  # the methods, then "none" (copy)
CALIBRATION_SOURCES = ("gsm8k-local:", "text:", "imagefolder:", "hf:")
EVALUATION_TASKS = task_prefixes()  # `gsm8k`, `gsm8k-local:`, ...
OBJECTIVE_KEYS = (
    "total_sparsity",
    "expert_sparsity",
    "weight_sparsity",
    "metric",
    "size_bytes",
    "nonzero_params",
    "active_params_per_token",
)
_CRON_FIELD = re.compile(r"^[\d*/,\-A-Za-z?LW#]+$")


def check_choice(value: str, choices: tuple[str, ...], what: str) -> str:
    """`value` must be one of `choices` (the message lists them)."""
    if value not in choices:
        raise ValueError(f"unknown {what} {value!r}; valid: {', '.join(choices)}")
    return value


def check_prefixed(value: str, prefixes: tuple[str, ...], what: str) -> str:
    """`value` must be one of the bare names or start with one of the `NAME:` prefixes."""
    if value in prefixes or any(p.endswith(":") and value.startswith(p) for p in prefixes):
        return value
    valid = ", ".join(p + ("PATH" if p.endswith(":") else "") for p in prefixes)
    raise ValueError(f"unknown {what} {value!r}; valid: {valid}")


def check_cron(value: str) -> str:
    """A five-field cron expression ("0 2 * * *")."""
    fields = value.split()
    if len(fields) != 5 or not all(_CRON_FIELD.match(f) for f in fields):
        raise ValueError(f"must be a five-field cron expression such as '0 2 * * *', got {value!r}")
    return value


def one_of(choices: tuple[str, ...], what: str) -> AfterValidator:
    """The rule of a name field: one of `choices` (`check_choice`), for `Annotated[str, one_of(...)]`."""
    return AfterValidator(lambda value: check_choice(value, choices, what))


# One type per named choice, shared by every field (and list item) that takes it.
ScoreMethod = Annotated[str, one_of(SCORE_METHODS, "score method")]
UnstructuredMethod = Annotated[str, one_of(UNSTRUCTURED_METHODS, "unstructured method")]
TestbedFamily = Annotated[str, one_of(TESTBED_FAMILIES, "family")]
TestbedPreset = Annotated[str, one_of(tuple(PRESETS), "preset")]
LmEvalBackend = Annotated[str, one_of(tuple(LM_EVAL_BACKENDS), "lm-eval backend")]
Fraction = Annotated[float, AfterValidator(check_fraction)]


class Section(BaseModel):
    """Base of every section: unknown keys are errors, values are validated on assignment too.

    Strict: no coercion between YAML types (a bool is not an int, a string is not a bool or a number);
    an int is still accepted where a float is expected. A field with an alias takes only the alias
    (`total-sparsity`, the flag dvc.yaml passes on), never its Python name.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True, strict=True)


class Flags(Section):
    """A section dvc.yaml unpacks into command flags (`${testbed.options}`): its keys are the flag names."""


class TestbedOptions(Flags):
    """Flags of `moeprune testbed` as dvc.yaml unpacks them (`--preset`, `--family`, `--seed`, `--quick`)."""

    preset: TestbedPreset | None = None
    family: TestbedFamily | None = None
    seed: int = Field(0, ge=0)
    quick: bool = False


class TestbedSection(Section):
    """The embedded demo models: `moeprune testbed <kind> --out <out>`."""

    out: str = "runs/testbed/lm"
    options: TestbedOptions = Field(default_factory=TestbedOptions)


class ModelSection(Section):
    """The model to prune, the checkpoint it was fine-tuned from (router-change) and the data folder.

    `data` holds the calibration and evaluation files; dvc.yaml tracks it as a dependency.
    """

    path: str = "runs/testbed/lm/finetuned"
    reference: str = "runs/testbed/lm/pretrained"
    data: str = "runs/testbed/lm/data"


class CalibrateSection(Section):
    """Calibration data: `moeprune calibrate --source --samples --seq-len --seed`."""

    source: str = "gsm8k-local:runs/testbed/lm/data/train.jsonl"
    samples: int = Field(64, gt=0)
    seq_len: int = Field(128, gt=0)
    seed: int = Field(0, ge=0)

    @field_validator("source")
    @classmethod
    def _source(cls, value: str) -> str:
        return check_prefixed(value, CALIBRATION_SOURCES, "calibration source")


class ProfileOptions(Flags):
    """Flags of `moeprune profile` as dvc.yaml unpacks them (`--streaming` when true, `--batch-size`)."""

    streaming: bool = False
    batch_size: int = Field(8, gt=0, alias="batch-size")


class ScoreSection(Section):
    """Expert scoring: `moeprune score --method --expert-sparsity --seed`."""

    method: ScoreMethod = "router-change"
    expert_sparsity: Fraction = 0.5
    seed: int = Field(0, ge=0)


class UnstructuredOptions(Flags):
    """Flags of `moeprune prune-unstructured` as dvc.yaml unpacks them (keys are the flag names).

    Exactly one of `sparsity` (per layer, on what remains) and `total-sparsity` (over the original
    model, removed experts counting as zeros), or `nm` (its sparsity is 1 - N/M, optionally repeated in
    `sparsity`); method `none` needs none of them (`UnstructuredSection`).
    """

    sparsity: Fraction | None = None
    total_sparsity: Fraction | None = Field(None, alias="total-sparsity")
    owl: bool = False
    nm: str | None = None
    targets: Literal["all", "experts"] = "all"
    calibrate_all_experts: bool = Field(False, alias="calibrate-all-experts")
    streaming: bool = False
    batch_size: int = Field(8, gt=0, alias="batch-size")

    @field_validator("nm")
    @classmethod
    def _nm(cls, value: str | None) -> str | None:
        if value is not None:
            parse_nm(value)
        return value

    def check_target(self) -> None:
        """ValueError unless the options name one sparsity target (what every method but `none` needs)."""
        if self.nm is not None:
            if self.owl or self.total_sparsity is not None:
                raise ValueError("nm fixes the sparsity at 1 - N/M; it cannot be combined with owl or total-sparsity")
        elif (self.sparsity is None) == (self.total_sparsity is None):
            raise ValueError("give exactly one of sparsity and total-sparsity")


class UnstructuredSection(Section):
    """Unstructured pruning after expert pruning; method `none` copies the model unchanged."""

    method: UnstructuredMethod = "wanda"
    options: UnstructuredOptions = Field(default_factory=lambda: UnstructuredOptions(**{"total-sparsity": 0.6}))

    @field_validator("options")
    @classmethod
    def _one_target(cls, value: UnstructuredOptions, info: ValidationInfo) -> UnstructuredOptions:
        if info.data.get("method", "none") != "none":  # "none" copies (and a bad method is reported alone)
            value.check_target()
        return value


class LmEvalOptions(Flags):
    """Flags of `moeprune evaluate` for `lm-eval:` tasks, as dvc.yaml unpacks them (keys are the flag names).

    Leave `include-path` out rather than null: dvc.yaml would pass a null on as the text "None".
    """

    backend: LmEvalBackend = "hf"
    include_path: str | None = Field(None, alias="include-path")


class EvaluateSection(Section):
    """Evaluation: `moeprune evaluate --task --limit --batch-size` (base and pruned model)."""

    task: str = "gsm8k-local:runs/testbed/lm/data/test.jsonl"
    limit: int | None = Field(200, gt=0)  # None: every example (the CLI's default)
    batch_size: int = Field(32, gt=0)
    lm_eval: LmEvalOptions = Field(default_factory=LmEvalOptions)

    @field_validator("task")
    @classmethod
    def _task(cls, value: str) -> str:
        for task in filter(None, (part.strip() for part in value.split(","))):  # comma-separated
            if task.partition(":")[0] not in TASKS.names():  # its argument is checked by the stage (files)
                valid = ", ".join(usage(entry) for entry in TASKS.entries())
                raise ValueError(f"unknown evaluation task {task!r}; valid tasks: {valid}")
        return value


class RegistrySection(Section):
    """MLflow: tracking URI (null: MLFLOW_TRACKING_URI, else sqlite under the repo) and model name."""

    tracking_uri: str | None = None
    model_name: str | None = None


class PromoteSection(Section):
    """Promotion policy: pass if metric >= min_retention * base metric; rank passing ones by objective.

    `objective` lists keys compared in order, higher first; a leading "-" means lower is better
    ("metric" is the policy's metric).
    """

    metric: str = "gsm8k.exact_match_strict"
    min_retention: float = 0.9
    objective: list[str] = Field(default_factory=lambda: ["total_sparsity", "metric"])

    @field_validator("min_retention")
    @classmethod
    def _retention(cls, value: float) -> float:
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"must be in [0, 1], got {value}")
        return value

    @field_validator("objective")
    @classmethod
    def _objective(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("must list at least one key")
        for key in value:
            check_choice(key.removeprefix("-"), OBJECTIVE_KEYS, "objective key")
        return value


class SweepSection(Section):
    """The grid the sweep flow runs as DVC experiments (every combination)."""

    methods: list[ScoreMethod] = Field(default_factory=lambda: ["router-change", "stun", "reap", "random"])
    expert_sparsity: list[Fraction] = Field(default_factory=lambda: [0.25, 0.5])
    unstructured_methods: list[UnstructuredMethod] = Field(default_factory=lambda: ["none", "wanda"])
    total_sparsity: list[Fraction] = Field(default_factory=lambda: [0.6])
    max_workers: int = Field(2, gt=0)


class SchedulesSection(Section):
    """Cron schedules of the Prefect deployments served by `moeprune serve`."""

    timezone: str = "UTC"
    sweep: str = "0 2 * * *"
    promote: str = "0 6 * * *"

    @field_validator("sweep", "promote")
    @classmethod
    def _cron(cls, value: str) -> str:
        return check_cron(value)


DEVICE_PATTERN = re.compile(r"auto|cpu|mps|cuda(:\d+)?")


class Params(Section):
    """The whole params.yaml."""

    kind: Literal["lm", "vision"] = "lm"
    device: str = "auto"
    testbed: TestbedSection = Field(default_factory=TestbedSection)
    model: ModelSection = Field(default_factory=ModelSection)
    calibrate: CalibrateSection = Field(default_factory=CalibrateSection)
    profile: ProfileOptions = Field(default_factory=ProfileOptions)
    score: ScoreSection = Field(default_factory=ScoreSection)
    prune_unstructured: UnstructuredSection = Field(default_factory=UnstructuredSection)
    evaluate: EvaluateSection = Field(default_factory=EvaluateSection)
    registry: RegistrySection = Field(default_factory=RegistrySection)
    promote: PromoteSection = Field(default_factory=PromoteSection)
    sweep: SweepSection = Field(default_factory=SweepSection)
    schedules: SchedulesSection = Field(default_factory=SchedulesSection)

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        if not DEVICE_PATTERN.fullmatch(value):
            raise ValueError(f"must be auto, cpu, cuda, cuda:N or mps, got {value!r}")
        return value


def format_validation_error(error: ValidationError, source: str) -> str:
    """One line per problem: `<file>: <dotted.key>: <message>`."""
    problems = validation_problems(error)
    return "; ".join(f"{source}: {'.'.join(map(str, loc)) or '(top level)'}: {message}" for loc, message in problems)


def flag_sections(model: type[Section] = Params, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """The key paths of every `Flags` section in `model` (`("testbed", "options")`, `("profile",)`...)."""
    paths = []
    for name, field in model.model_fields.items():
        kind, path = field.annotation, (*prefix, field.alias or name)
        if isinstance(kind, type) and issubclass(kind, Flags):
            paths.append(path)
        elif isinstance(kind, type) and issubclass(kind, Section):
            paths += flag_sections(kind, path)
    return paths


def null_flags(data: dict[str, Any]) -> list[str]:
    """The dotted keys of the `Flags` sections whose value is null: DVC renders a null flag as the word
    None (`--preset None`), so it is refused before any stage runs."""
    found = []
    for path in flag_sections():
        node: Any = data
        for key in path:
            node = node.get(key) if isinstance(node, dict) else None
        if isinstance(node, dict):
            found += [".".join((*path, str(key))) for key, value in node.items() if value is None]
    return found


def parse_params(data: dict[str, Any], source: str = "params.yaml") -> Params:
    """Validate an already-parsed mapping; `MoepruneError` names every bad key."""
    if not isinstance(data, dict):
        raise MoepruneError(f"{source}: must be a mapping of sections, got {type(data).__name__}")
    if nulls := null_flags(data):
        raise MoepruneError(
            f"{source}: {', '.join(nulls)}: null, which dvc.yaml would pass on as the word None; "
            "delete the line (or comment it out) to use the default"
        )
    try:
        return Params.model_validate(data)
    except ValidationError as error:
        raise MoepruneError(format_validation_error(error, source)) from None


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate a params file.

    Args:
        path: the YAML file (the repository's `params.yaml` by default).

    Returns:
        The validated parameters.

    Raises:
        MoepruneError: the file is missing, not YAML, or a value is invalid (the message names the key).
    """
    path = Path(path)
    if not path.is_file():
        raise MoepruneError(f"{path}: params file not found; pass --params PATH or copy the repository's params.yaml")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise MoepruneError(f"{path}: not valid YAML ({str(error).splitlines()[0]}); fix the syntax") from None
    return parse_params(data, source=str(path))


def registry_section(path: str | Path | None) -> RegistrySection | None:
    """The validated `registry` section of the params file at `path`; None when no file is named.

    Raises:
        MoepruneError: as `load_params`.
    """
    return load_params(path).registry if path is not None else None
