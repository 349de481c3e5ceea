"""The results report: tables and plots built from registered model versions, never from typed numbers.

Two sources, one shape of row:
- the MLflow registry alone (`load_registry_results`): every version of every moeprune model, grouped
  by registered model; method, sparsities and metrics are the version's tags;
- a study results file (`load_study_results`, written by `flows/study.py`): the points of each study
  with the registered version each one became; the figures are still read from the registry (the study
  file only says which version belongs to which point, with the commands that made it and the cost of
  its scoring method).

`aggregate` turns rows into mean / spread over seeds per (method, sparsity); `moeprune.report.markdown`
and `moeprune.report.plots` turn those into markdown and PNG files (`stages/report.py` writes them).
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from moeprune.errors import MoepruneError
from moeprune.registry import numeric_tags

PRIMARY_METRICS = ("imagenet.top1", "gsm8k.exact_match_strict", "perplexity")
TABLE_METRICS = {
    "imagenet.top1": ("imagenet.top1",),
    "gsm8k.exact_match_strict": ("gsm8k.exact_match_strict", "gsm8k.exact_match_flexible"),
    "perplexity": ("perplexity",),
}
PERCENT_METRICS = {"imagenet.top1", "imagenet.top5", "gsm8k.exact_match_strict", "gsm8k.exact_match_flexible"}
# lm-eval task metrics (`--task lm-eval:NAME`, written `<task>.<metric>[.<filter>]`) a report tabulates
# when no primary metric is there; the first three are fractions shown in percent.
LM_EVAL_METRICS = ("acc", "acc_norm", "exact_match", "f1", "mcc", "pass_at_1")
SCORING_KEYS = ("scoring.seconds", "scoring.forward_passes", "scoring.block_evaluations")
KINDS = ("base", "expert", "unstructured", "combined")


@dataclass
class Row:
    """One registered version as one point of a study (or of the registry)."""

    group: str  # the study ("A", "B") or, from the registry alone, the registered model
    label: str  # method as the tables show it: "reap", "stun+owl-wanda", "wanda", "base"
    kind: str  # base | expert (expert pruning only) | unstructured (only) | combined (expert, then unstructured)
    column: float  # the sparsity the row is filed under: expert sparsity (expert) or total sparsity (others)
    values: dict[str, float]  # the version's numeric tags: metrics, sparsities, sizes
    model: str = ""
    version: str = ""
    seed: int | None = None
    expert_method: str = "none"
    scoring: dict[str, float] = field(default_factory=dict)  # seconds, forward_passes of the scoring step
    commands: list[str] = field(default_factory=list)
    point: str = ""


@dataclass
class Cell:
    """Mean and spread of one metric over the seeds of one (method, sparsity)."""

    mean: float
    std: float
    n: int

    @classmethod
    def of(cls, values: list[float]) -> Cell:
        """Mean, sample standard deviation (0 for one value) and count."""
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        return cls(statistics.fmean(values), std, len(values))


@dataclass
class Group:
    """Everything the report says about one study (or one registered model)."""

    key: str
    title: str
    rows: list[Row]
    metrics: tuple[str, ...]
    claim: str = ""
    comparisons: list[dict[str, Any]] = field(default_factory=list)
    requested: dict[str, Any] = field(default_factory=dict)  # {"expert": {label: [s...]}, "total": {...}}
    not_run: list[dict[str, Any]] = field(default_factory=list)  # [{"method", "expert_sparsity", "reason"}]
    testbed_dir: str | None = None  # the study's testbed folder (its testbed.json feeds the testbed section)
    testbed_heatmaps: dict[str, str] = field(default_factory=dict)  # model -> heat map file beside the report

    @property
    def metric(self) -> str:
        """The metric plots and the Pareto front use."""
        return self.metrics[0]


def row_kind(tags: dict[str, str]) -> str:
    """base, expert, unstructured or combined, from the version's role and method tags."""
    if tags.get("role") == "base":
        return "base"
    expert = tags.get("expert_method", "none") != "none"
    unstructured = tags.get("unstructured_method", "none") != "none"
    if expert and unstructured:
        return "combined"
    return "unstructured" if unstructured else "expert"


def filed_under(kind: str, values: dict[str, float]) -> float:
    """The column of a registry row: expert sparsity for expert-only rows, total sparsity otherwise."""
    if kind == "base":
        return 0.0
    key = "expert_sparsity" if kind == "expert" else "total_sparsity"
    return round(values.get(key, math.nan), 2)


def row_from_version(version: Any, group: str) -> Row:
    """A registry row from one MLflow model version (labels from its tags)."""
    tags = version.tags or {}
    values = numeric_tags(tags or {})
    kind = row_kind(tags)
    seed = values.get("seed")
    return Row(
        group=group,
        label="base" if kind == "base" else tags.get("method", "?"),
        kind=kind,
        column=filed_under(kind, values),
        values=values,
        model=version.name,
        version=str(version.version),
        seed=None if seed is None else int(seed),
        expert_method=tags.get("expert_method", "none"),
        scoring={key.split(".", 1)[1]: values[key] for key in SCORING_KEYS if key in values},
    )


def lm_eval_metric(key: str) -> str | None:
    """`acc` for an lm-eval metric name such as `my_mc.acc` or `my_gen.exact_match.strict-match`, else None."""
    task, _, rest = key.partition(".")
    metric = rest.split(".")[0]
    return metric if task and metric in LM_EVAL_METRICS else None


def is_percent(metric: str) -> bool:
    """Whether a metric is an accuracy shown in percent."""
    return metric in PERCENT_METRICS or lm_eval_metric(metric) in ("acc", "acc_norm", "exact_match")


def detect_metrics(rows: list[Row]) -> tuple[str, ...]:
    """The table metrics of the first primary metric any row carries, else every lm-eval task metric."""
    for metric in PRIMARY_METRICS:
        if any(metric in row.values for row in rows):
            return TABLE_METRICS[metric]
    lm_eval = sorted({key for row in rows for key in row.values if lm_eval_metric(key)})
    if lm_eval:
        return tuple(lm_eval)
    raise MoepruneError(
        "no registered version carries a task metric (imagenet.top1, gsm8k.exact_match_strict, perplexity "
        "or an lm-eval <task>.acc / .exact_match); register models with `moeprune register --metrics` "
        "from `moeprune evaluate`"
    )


def registry_client(tracking_uri: str | None) -> tuple[Any, str]:
    """(MlflowClient, resolved URI), with the registry's own resolution rules."""
    from moeprune.registry import mlflow_client, resolve_tracking_uri

    uri = resolve_tracking_uri(tracking_uri)
    return mlflow_client(uri), uri


def load_registry_results(tracking_uri: str | None = None, model_names: list[str] | None = None) -> list[Group]:
    """One group per registered moeprune model: every version as a row.

    Args:
        tracking_uri: the MLflow tracking URI (None: resolved like `moeprune register`).
        model_names: registered models to report (None: every model moeprune registered).

    Raises:
        MoepruneError: nothing is registered there, or a named model is missing.
    """
    from moeprune.registry import moeprune_models, registered_model_exists

    client, uri = registry_client(tracking_uri)
    names = model_names or moeprune_models(client)
    if not names:
        raise MoepruneError(f"no moeprune model is registered at {uri}; run the study or `moeprune register` first")
    groups = []
    for name in names:
        if not registered_model_exists(client, name):
            raise MoepruneError(f"registered model {name!r} not found at {uri}; check the name or --tracking-uri")
        versions = client.search_model_versions(f"name = '{name}'")
        rows = sorted((row_from_version(v, name) for v in versions), key=lambda r: int(r.version))
        groups.append(Group(key=name, title=f"Registered model `{name}`", rows=rows, metrics=detect_metrics(rows)))
    return groups


def read_study(path: Path) -> dict[str, Any]:
    """The study results file written by `flows/study.py`."""
    path = Path(path)
    if not path.is_file():
        raise MoepruneError(f"{path}: study results not found; run `bash scripts/study.sh` (or --quick) first")
    return json.loads(path.read_text())


def study_row(point: dict[str, Any], version: Any) -> Row:
    """A row for one study point: labels from the study, figures from its registered version."""
    values = numeric_tags(version.tags or {})
    return Row(
        group=point["study"],
        label=point["label"],
        kind=point["kind"],
        column=float(point["column"]),
        values=values,
        model=version.name,
        version=str(version.version),
        seed=point.get("seed"),
        expert_method=point.get("expert_method", "none"),
        scoring=dict(point.get("scoring") or {}),
        commands=list(point.get("commands") or []),
        point=point.get("id", ""),
    )


def load_study_results(study: dict[str, Any], tracking_uri: str | None = None) -> list[Group]:
    """One group per study of the results file; each point's figures come from its registered version.

    Raises:
        MoepruneError: a point has no registered version, or the version is gone from the registry.
    """
    client, _ = registry_client(tracking_uri or study.get("tracking_uri"))
    groups = []
    for key, spec in study["studies"].items():
        points = [spec["base"], *(p for p in study["points"] if p["study"] == key)]
        rows = []
        for point in points:
            record = point.get("registry")
            if not record:
                raise MoepruneError(
                    f"study point {point.get('id')} has no registered version; rerun the study "
                    f"(`bash scripts/study.sh`) so every point is evaluated and registered"
                )
            rows.append(study_row(point, client.get_model_version(record["name"], str(record["version"]))))
        groups.append(
            Group(
                key=key,
                title=spec["title"],
                rows=rows,
                metrics=tuple(spec.get("metrics") or detect_metrics(rows)),
                claim=spec.get("claim", ""),
                comparisons=list(spec.get("comparisons") or []),
                requested=dict(spec.get("requested") or {}),
                not_run=list(spec.get("not_run") or []),
                testbed_dir=spec.get("testbed"),
            )
        )
    return groups


def aggregate(rows: list[Row], metric: str) -> dict[tuple[str, float], Cell]:
    """(label, column) -> mean / spread of `metric` over the rows (seeds) that carry it."""
    samples: dict[tuple[str, float], list[float]] = {}
    for row in rows:
        if metric in row.values:
            samples.setdefault((row.label, row.column), []).append(row.values[metric])
    return {key: Cell.of(values) for key, values in samples.items()}


def rows_of(group: Group, *kinds: str) -> list[Row]:
    """The group's rows of these kinds (the base row always included)."""
    return [row for row in group.rows if row.kind in kinds or row.kind == "base"]


def labels_and_columns(rows: list[Row]) -> tuple[list[str], list[float]]:
    """Labels in first-seen order (base first) and sorted columns."""
    labels = list(dict.fromkeys(["base", *(row.label for row in rows if row.kind != "base")]))
    labels = [label for label in labels if any(row.label == label for row in rows)]
    columns = sorted({row.column for row in rows if row.kind != "base" and not math.isnan(row.column)})
    return labels, columns


def sparsity_of(rows: list[Row], label: str, column: float) -> float:
    """Mean measured total sparsity of the rows of one (label, column)."""
    values = [r.values.get("total_sparsity", 0.0) for r in rows if r.label == label and r.column == column]
    return statistics.fmean(values) if values else math.nan


def pareto_front(points: list[tuple[str, float, float, float]]) -> list[tuple[str, float, float, float]]:
    """The points (label, column, total sparsity, accuracy) no other point beats on both axes.

    A point is dominated when another has at least its sparsity and its accuracy, and more of one.
    """
    front = []
    for point in points:
        _, _, sparsity, accuracy = point
        dominated = any(s >= sparsity and a >= accuracy and (s > sparsity or a > accuracy) for _, _, s, a in points)
        if not dominated:
            front.append(point)
    return sorted(front, key=lambda p: p[2])


def configuration_points(group: Group) -> list[tuple[str, float, float, float]]:
    """Every (label, column) of the group as (label, column, mean total sparsity, mean metric)."""
    cells = aggregate(group.rows, group.metric)
    return [
        (label, column, sparsity_of(group.rows, label, column), cell.mean) for (label, column), cell in cells.items()
    ]


def scoring_costs(group: Group) -> dict[str, dict[str, Cell]]:
    """Expert method -> {"seconds": Cell, "forward_passes": Cell, ...} over the expert-only rows.

    (Combined rows reuse an expert-only row's scores file: counting them would count one scoring twice.)
    """
    samples: dict[str, dict[str, list[float]]] = {}
    for row in group.rows:
        if row.kind != "expert" or not row.scoring:
            continue
        for key in ("seconds", "forward_passes", "block_evaluations"):
            if key in row.scoring:
                samples.setdefault(row.expert_method, {}).setdefault(key, []).append(float(row.scoring[key]))
    return {method: {key: Cell.of(v) for key, v in figures.items()} for method, figures in samples.items()}


def comparison_rows(group: Group, metric: str) -> list[dict[str, Any]]:
    """For each requested comparison and shared column: the difference of the two methods' means."""
    cells = aggregate(group.rows, metric)
    results = []
    for comparison in group.comparisons:
        first, second = comparison["a"], comparison["b"]
        for (label, column), cell in sorted(cells.items(), key=lambda item: item[0][1]):
            other = cells.get((second, column))
            if label != first or other is None:
                continue
            results.append(
                {
                    "name": comparison.get("name", f"{first} vs {second}"),
                    "a": first,
                    "b": second,
                    "column": column,
                    "a_mean": cell.mean,
                    "b_mean": other.mean,
                    "difference": cell.mean - other.mean,
                }
            )
    return results


def missing_requests(group: Group) -> list[str]:
    """Requested (method, sparsity) pairs with no row carrying the group's metric."""
    cells = aggregate(group.rows, group.metric)
    missing = []
    for _, wanted in group.requested.items():
        for label, columns in wanted.items():
            missing += [f"{label} @ {c:g}" for c in columns if (label, float(c)) not in cells]
    return missing
