"""What the study runs: the two studies of issue 6, their points and the `moeprune` commands of each.

Pure data and string building (no Prefect, no torch), so tests and the report can read the plan. Every
command line comes from `tasks/commands.py`, the builder whose commands dvc.yaml runs.

Study A (router-change paper, vision testbed): expert pruning only, every method at 25 / 50 / 75 %.
Study B (STUN paper, LM testbed): STUN expert pruning then Wanda or OWL+Wanda vs Wanda or OWL+Wanda
alone, at the same total sparsity; plus expert pruning only at 25 / 50 % for every LM method.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from moeprune.catalog.scorers import SCORERS
from moeprune.testbed.presets import PRESETS
from tasks import commands
from tasks.commands import shell

# The command-line flag (of `commands.score`) that supplies each input a scoring method may need.
INPUT_FLAGS = {"reference": "reference", "profile": "profile", "calibration": "calib"}
# The inputs each scoring method reads (the `needs` of its declaration in moeprune.catalog.scorers): only
# those are passed, so a method's `seconds` do not include loading what it does not use.
METHOD_INPUTS = {entry.name: tuple(INPUT_FLAGS[need] for need in entry.needs) for entry in SCORERS.entries()}
RANDOM = "random"


@dataclass(frozen=True)
class StudySpec:
    """One study: its testbed, data, evaluation and grid."""

    key: str
    testbed: str  # lm | vision
    title: str
    claim: str
    task: str  # evaluation task, `{data}` is the testbed's data folder
    metrics: tuple[str, ...]
    calib_source: str  # `{data}` as above
    calib_samples: int
    seq_len: int
    eval_limit: int | None
    eval_batch_size: int
    expert_methods: tuple[str, ...]
    expert_sparsity: tuple[float, ...]
    random_seeds: tuple[int, ...]
    combined_expert: tuple[str, float] | None = None  # (method, expert sparsity) before unstructured pruning
    routed_experts: int | None = None  # per MoE layer of the testbed (naee tractability); None: not checked
    unstructured: tuple[str, ...] = ()  # wanda | owl-wanda
    total_sparsity: tuple[float, ...] = ()
    comparisons: tuple[tuple[str, str, str], ...] = ()  # (name, first, second)


@dataclass
class Point:
    """One registered version the study makes."""

    id: str
    study: str
    label: str
    kind: str  # expert | unstructured | combined
    column: float
    model_dir: str
    expert_method: str = "none"
    expert_sparsity: float = 0.0
    seed: int | None = None
    scores: str | None = None  # the scores file whose cost the point reports (expert points)
    build: list[list[str]] = field(default_factory=list)  # commands that make model_dir
    evaluate: list[str] = field(default_factory=list)
    metrics: str = ""  # the metrics file registered (evaluation + study figures)
    parent: str | None = None  # id of the point whose model this one starts from

    @property
    def eval_json(self) -> str:
        """The evaluation output beside the metrics file."""
        return str(Path(self.metrics).with_name("eval.json"))


def study_specs(quick: bool = False) -> list[StudySpec]:
    """Study A and Study B; `quick` keeps every method and sparsity but shrinks data, seeds and limits."""
    vision = StudySpec(
        key="A",
        testbed="vision",
        title="Study A: router-change pruning of a fine-tuned V-MoE (vision testbed)",
        claim=(
            "router-change keeps accuracy up to the fraction of task-irrelevant experts and beats an "
            "importance baseline at high pruning ratios (Chowdhury et al., 2024)."
        ),
        task="imagenet:{data}/val",
        metrics=("imagenet.top1",),
        calib_source="imagefolder:{data}/train",
        calib_samples=32 if quick else 256,
        seq_len=1,
        eval_limit=8 if quick else None,
        eval_batch_size=64,
        expert_methods=("router-change", "router-change-diff", "frequency", "reap", "stun", RANDOM),
        expert_sparsity=(0.25, 0.5, 0.75),
        random_seeds=(0, 1) if quick else (0, 1, 2),
        comparisons=(
            ("router-change vs frequency", "router-change", "frequency"),
            ("router-change vs reap", "router-change", "reap"),
            ("router-change vs random", "router-change", RANDOM),
            ("router-change vs router-change-diff", "router-change", "router-change-diff"),
        ),
    )
    language = StudySpec(
        key="B",
        testbed="lm",
        title="Study B: STUN, expert pruning then unstructured pruning (LM testbed, GSM8K-local)",
        claim=(
            "expert pruning before unstructured pruning beats unstructured-only pruning at the same total "
            "sparsity, and STUN matches NAEE at O(1) cost (Lee et al., 2024)."
        ),
        task="gsm8k-local:{data}/test.jsonl",
        metrics=("gsm8k.exact_match_strict", "gsm8k.exact_match_flexible"),
        calib_source="gsm8k-local:{data}/train.jsonl",
        calib_samples=16 if quick else 64,
        seq_len=64 if quick else 128,
        eval_limit=8 if quick else 200,
        eval_batch_size=8 if quick else 32,
        expert_methods=("stun", "naee", "reap", "frequency", "soft-frequency", "router-change", RANDOM),
        expert_sparsity=(0.25, 0.5),
        random_seeds=(0,) if quick else (0, 1, 2),
        combined_expert=("stun", 0.25),
        routed_experts=PRESETS["quick" if quick else "default"].size.experts,
        unstructured=("wanda", "owl-wanda"),
        total_sparsity=(0.4, 0.65),
        comparisons=(
            ("stun+wanda vs wanda", "stun+wanda", "wanda"),
            ("stun+owl-wanda vs owl-wanda", "stun+owl-wanda", "owl-wanda"),
            ("stun vs naee", "stun", "naee"),
            ("stun vs random", "stun", RANDOM),
        ),
    )
    return [vision, language]


class Layout:
    """Where one study's files go under the study root."""

    def __init__(self, root: Path, spec: StudySpec):
        self.root, self.spec = Path(root), spec
        self.testbed = self.root / spec.testbed
        self.data = self.testbed / "data"
        self.model = self.testbed / "finetuned"
        self.reference = self.testbed / "pretrained"
        self.work = self.root / spec.key
        self.calib = self.work / "calib.safetensors"
        self.profile = self.work / "profile"
        self.base_metrics = self.work / "base" / "metrics.json"

    def point_dir(self, point_id: str) -> Path:
        """The folder of one point (scores, model, eval, metrics)."""
        return self.work / "points" / point_id

    def fill(self, template: str) -> str:
        """A task or source string with `{data}` replaced."""
        return template.format(data=self.data)


def pct(value: float) -> int:
    """A sparsity as a whole percentage for names (0.65 -> 65)."""
    return round(100 * value)


def evaluate_command(layout: Layout, model_dir: str | Path, out: str | Path) -> list[str]:
    """`moeprune evaluate` of one model with the study's task, limit and batch size."""
    spec = layout.spec
    return commands.evaluate(model_dir, layout.fill(spec.task), out, spec.eval_limit, spec.eval_batch_size)


def testbed_command(layout: Layout, quick: bool) -> list[str]:
    """`moeprune testbed` of the study's testbed."""
    return commands.testbed(layout.spec.testbed, layout.testbed, {"quick": quick})


def preparation_commands(layout: Layout) -> list[list[str]]:
    """Calibrate and profile once per model, and evaluate the base model."""
    spec, model = layout.spec, layout.model
    return [
        commands.calibrate(model, layout.fill(spec.calib_source), spec.calib_samples, spec.seq_len, 0, layout.calib),
        commands.profile(model, layout.calib, layout.profile),
        evaluate_command(layout, model, layout.base_metrics.with_name("eval.json")),
    ]


def expert_point(layout: Layout, method: str, sparsity: float, seed: int | None) -> Point:
    """Expert pruning only: score, prune-experts, evaluate."""
    spec = layout.spec
    point_id = f"{spec.key}-{method}-e{pct(sparsity)}" + (f"-s{seed}" if seed is not None else "")
    folder = layout.point_dir(point_id)
    inputs = {"reference": layout.reference, "profile": layout.profile, "calib": layout.calib}
    scores = folder / "scores.json"
    read = {name: inputs[name] for name in METHOD_INPUTS[method]}
    score = commands.score(layout.model, method, sparsity, seed or 0, scores, **read)
    prune = commands.prune_experts(layout.model, scores, folder / "model")
    return Point(
        id=point_id,
        study=spec.key,
        label=method,
        kind="expert",
        column=sparsity,
        model_dir=str(folder / "model"),
        expert_method=method,
        expert_sparsity=sparsity,
        seed=seed,
        scores=str(folder / "scores.json"),
        build=[score, prune],
        evaluate=evaluate_command(layout, folder / "model", folder / "eval.json"),
        metrics=str(folder / "metrics.json"),
    )


def unstructured_point(layout: Layout, method: str, total: float, parent: Point | None) -> Point:
    """Unstructured pruning to a total sparsity, from the base model or from an expert-pruned one."""
    spec = layout.spec
    label = method if parent is None else f"{parent.expert_method}+{method}"
    point_id = f"{spec.key}-{label.replace('+', '-then-')}-t{pct(total)}"
    folder = layout.point_dir(point_id)
    source = layout.model if parent is None else parent.model_dir
    options = {"total-sparsity": total, "owl": method.startswith("owl-")}
    prune = commands.prune_unstructured(source, method.removeprefix("owl-"), folder / "model", options, layout.calib)
    return Point(
        id=point_id,
        study=spec.key,
        label=label,
        kind="unstructured" if parent is None else "combined",
        column=total,
        model_dir=str(folder / "model"),
        expert_method="none" if parent is None else parent.expert_method,
        expert_sparsity=0.0 if parent is None else parent.expert_sparsity,
        build=[prune],
        evaluate=evaluate_command(layout, folder / "model", folder / "eval.json"),
        metrics=str(folder / "metrics.json"),
        parent=None if parent is None else parent.id,
    )


def intractable(spec: StudySpec, method: str, sparsity: float) -> str | None:
    """Why `method` cannot run at `sparsity` on the study's testbed, or None (its declared `refusal` rule)."""
    refusal = SCORERS.get(method).refusal
    if refusal is None or spec.routed_experts is None:
        return None
    from moeprune.scoring.base import keep_count

    return refusal(spec.routed_experts, keep_count(spec.routed_experts, sparsity))


def study_points(layout: Layout) -> list[Point]:
    """Every point of one study: expert-only points, then unstructured-only and combined ones."""
    spec = layout.spec
    points = []
    for method in spec.expert_methods:
        seeds = spec.random_seeds if SCORERS.get(method).seeded else (None,)
        columns = [s for s in spec.expert_sparsity if not intractable(spec, method, s)]
        points += [expert_point(layout, method, s, seed) for s in columns for seed in seeds]
    if spec.combined_expert:
        method, sparsity = spec.combined_expert
        parent = next(p for p in points if p.expert_method == method and p.expert_sparsity == sparsity)
        for total in spec.total_sparsity:
            for unstructured in spec.unstructured:
                points.append(unstructured_point(layout, unstructured, total, parent))
                points.append(unstructured_point(layout, unstructured, total, None))
    return points


def requested(spec: StudySpec) -> dict[str, dict[str, list[float]]]:
    """Every (method, sparsity) the study asks for, as the report checks it."""
    wanted = {
        "expert": {m: [s for s in spec.expert_sparsity if not intractable(spec, m, s)] for m in spec.expert_methods},
        "total": {},
    }
    if spec.combined_expert:
        for unstructured in spec.unstructured:
            wanted["total"][unstructured] = list(spec.total_sparsity)
            wanted["total"][f"{spec.combined_expert[0]}+{unstructured}"] = list(spec.total_sparsity)
    return wanted


def register_command(model_dir: str | Path, metrics: str | Path, tracking_uri: str) -> list[str]:
    """`moeprune register` into the study's own MLflow store."""
    return commands.register(model_dir, metrics, tracking_uri=tracking_uri)


def point_commands(point: Point, points: dict[str, Point], tracking_uri: str) -> list[str]:
    """Every command that makes the point from its testbed, as shell lines (parents first)."""
    chain: list[list[str]] = []
    if point.parent:
        chain += points[point.parent].build
    chain += point.build + [point.evaluate, register_command(point.model_dir, point.metrics, tracking_uri)]
    return [shell(args) for args in chain]


def spec_record(spec: StudySpec, layout: Layout) -> dict[str, Any]:
    """The study's entry in the results file (title, claim, metrics, what was requested)."""
    return {
        "title": spec.title,
        "claim": spec.claim,
        "testbed": str(layout.testbed),
        "metrics": list(spec.metrics),
        "evaluation": {"task": layout.fill(spec.task), "limit": spec.eval_limit},
        "calibration": {
            "source": layout.fill(spec.calib_source),
            "samples": spec.calib_samples,
            "seq_len": spec.seq_len,
        },
        "random_seeds": list(spec.random_seeds),
        "requested": requested(spec),
        "not_run": [
            {"method": m, "expert_sparsity": s, "reason": reason}
            for m in spec.expert_methods
            for s in spec.expert_sparsity
            if (reason := intractable(spec, m, s))
        ],
        "comparisons": [{"name": n, "a": a, "b": b} for n, a, b in spec.comparisons],
    }
