"""The study flow's quick variant end to end, and the report's own logic on hand-made rows.

The module fixture runs `flows.study.study_flow(quick=True)` once in a temporary folder (quick testbeds,
every method and sparsity of both studies, evaluation limit 8, every point registered in the study's
sqlite MLflow store, then the report). The tests check that the report's tables hold every requested
method and sparsity, that its numbers are the registered versions' tags, and that the plots exist.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # flows/ lives beside src/

from flows.study_plan import Layout, requested, spec_record, study_points, study_specs  # noqa: E402
from moeprune.errors import MoepruneError  # noqa: E402
from moeprune.report.markdown import percent  # noqa: E402
from moeprune.report.rows import Cell, Group, Row, aggregate, comparison_rows, missing_requests, pareto_front  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def quick_study(tmp_path_factory, prefect_harness) -> tuple[Path, dict]:
    from flows.study import study_flow

    root = tmp_path_factory.mktemp("study")
    return root, study_flow(root=str(root), quick=True, workers=2)


def markdown_rows(report: str, label: str) -> list[str]:
    """The table lines of the report whose first cell is `label`."""
    return [line for line in report.splitlines() if line.startswith(f"| `{label}` |")]


def test_report_tables_hold_every_requested_method_and_sparsity(quick_study):
    root, _ = quick_study
    report = (root / "report" / "report.md").read_text()
    data = json.loads((root / "report" / "report.json").read_text())
    for spec in study_specs(quick=True):
        group = data["groups"][spec.key]
        assert group["missing"] == []
        for kind, wanted in requested(spec).items():
            for label, columns in wanted.items():
                assert markdown_rows(report, label), f"no table row for {label}"
                for metric in spec.metrics:
                    cells = group["cells"][metric][label]
                    assert {f"{c:g}" for c in columns} <= set(cells), (kind, label, metric)
                    assert all(0.0 <= cells[f"{c:g}"]["mean"] <= 1.0 for c in columns)
        for column in {c for wanted in requested(spec).values() for cs in wanted.values() for c in cs}:
            assert f"{percent(column)} " in report
    random_cells = data["groups"]["A"]["cells"]["imagenet.top1"]["random"]
    assert all(cell["n"] == 2 for cell in random_cells.values())  # two seeds in the quick variant


def test_every_point_is_registered_and_the_report_shows_its_tags(quick_study):
    from mlflow import MlflowClient

    root, record = quick_study
    client = MlflowClient(tracking_uri=record["tracking_uri"], registry_uri=record["tracking_uri"])
    data = json.loads((root / "report" / "report.json").read_text())
    expected = sum(len(study_points(Layout(root, spec))) for spec in study_specs(quick=True))
    assert len(record["points"]) == expected
    for point in record["points"]:
        version = client.get_model_version(point["registry"]["name"], point["registry"]["version"])
        metrics = json.loads(Path(point["metrics"]).read_text())
        rows = [r for r in data["groups"][point["study"]]["rows"] if r["point"] == point["id"]]
        assert len(rows) == 1 and rows[0]["version"] == str(version.version)
        for key in ("total_sparsity", *record["studies"][point["study"]]["metrics"]):
            assert float(version.tags[key]) == pytest.approx(metrics[key])
            assert rows[0]["values"][key] == pytest.approx(metrics[key])
        if point["kind"] == "expert":
            scores = json.loads((Path(point["model_dir"]).parent / "scores.json").read_text())
            assert point["scoring"]["seconds"] == pytest.approx(scores["seconds"])
            assert rows[0]["scoring"]["forward_passes"] == scores["forward_passes"]
            if json.loads(Path(point["metrics"]).with_suffix(".registry.json").read_text())["created"]:
                assert float(version.tags["scoring.seconds"]) == pytest.approx(scores["seconds"])


def test_plots_exist_and_every_figure_names_its_command(quick_study):
    root, record = quick_study
    report = (root / "report" / "report.md").read_text()
    for key, figures in json.loads((root / "report" / "report.json").read_text())["files"].items():
        expected = {"expert", "pareto", "cost"} | ({"total"} if key == "B" else set())
        assert set(figures) == expected
        for name in figures.values():
            path = root / "report" / name
            assert path.read_bytes()[:8] == PNG_MAGIC and path.stat().st_size > 5000
            after = report.split(f"]({name})", 1)[1].splitlines()[2]
            assert after.startswith("_Reproduce: `bash scripts/study.sh --quick` then `moeprune report")
    assert "Commands of each point" in report and "moeprune prune-unstructured" in report


def test_study_records_phase_times(quick_study):
    root, record = quick_study
    saved = json.loads((root / "study.json").read_text())
    assert [phase["name"] for phase in saved["phases"]] == ["testbeds", "prepare", "points", "register"]
    assert all(phase["wall_seconds"] > 0 and phase["cpu_seconds"] > 0 for phase in saved["phases"])
    assert saved["wall_seconds"] > 0
    assert "Study wall time (quick variant)" in (root / "report" / "report.md").read_text()


def test_report_from_the_registry_alone_groups_by_model(quick_study, tmp_path):
    from moeprune.stages.report import run

    _, record = quick_study
    result = run(out=tmp_path / "report", tracking_uri=record["tracking_uri"])
    assert sorted(result["groups"]) == ["lm-finetuned-pruned", "vision-finetuned-pruned"]
    assert (tmp_path / "report" / "report.md").is_file() and len(result["figures"]) == 7


def test_report_errors_name_the_fix(tmp_path):
    from moeprune.stages.report import run

    with pytest.raises(MoepruneError, match="scripts/study.sh"):
        run(out=tmp_path / "r", study=tmp_path / "missing.json")
    with pytest.raises(MoepruneError, match="no moeprune model is registered"):
        run(out=tmp_path / "r", tracking_uri=f"sqlite:///{tmp_path / 'empty.db'}")


def row(label: str, kind: str, column: float, value: float, sparsity: float, seed: int | None = None) -> Row:
    return Row(
        group="X",
        label=label,
        kind=kind,
        column=column,
        seed=seed,
        values={"imagenet.top1": value, "total_sparsity": sparsity},
    )


def test_aggregate_pareto_and_comparisons_on_hand_made_rows():
    rows = [
        row("base", "base", 0.0, 0.90, 0.0),
        row("random", "expert", 0.5, 0.50, 0.4, seed=0),
        row("random", "expert", 0.5, 0.70, 0.4, seed=1),
        row("router-change", "expert", 0.5, 0.85, 0.4),
        row("router-change", "expert", 0.75, 0.60, 0.6),
    ]
    cells = aggregate(rows, "imagenet.top1")
    assert cells[("random", 0.5)].mean == pytest.approx(0.6)
    assert cells[("random", 0.5)].std == pytest.approx(math.sqrt(0.02)) and cells[("random", 0.5)].n == 2
    assert cells[("router-change", 0.5)] == Cell(0.85, 0.0, 1)
    front = pareto_front(
        [
            (label, c, s, v)
            for label, c, s, v in [
                ("base", 0.0, 0.0, 0.9),
                ("random", 0.5, 0.4, 0.6),
                ("router-change", 0.5, 0.4, 0.85),
                ("router-change", 0.75, 0.6, 0.6),
            ]
        ]
    )
    assert [(p[0], p[1]) for p in front] == [("base", 0.0), ("router-change", 0.5), ("router-change", 0.75)]
    group = Group(
        key="X",
        title="X",
        rows=rows,
        metrics=("imagenet.top1",),
        comparisons=[{"name": "rc vs random", "a": "router-change", "b": "random"}],
        requested={"expert": {"router-change": [0.5, 0.75], "random": [0.5, 0.75]}},
    )
    (only,) = comparison_rows(group, "imagenet.top1")
    assert only["column"] == 0.5 and only["difference"] == pytest.approx(0.25)
    assert missing_requests(group) == ["random @ 0.75"]


def test_runner_stops_a_failed_chain_and_runs_the_next(tmp_path):
    from flows.study_runner import main

    chains = [
        {
            "id": "bad",
            "commands": [
                [
                    "evaluate",
                    "--model",
                    str(tmp_path / "none"),
                    "--task",
                    "perplexity:x",
                    "--out",
                    str(tmp_path / "m.json"),
                ],
                ["inspect", "--model", "never-run"],
            ],
        },
        {"id": "good", "commands": [["score", "--help"]]},
    ]
    (tmp_path / "chains.json").write_text(json.dumps(chains))
    assert main([str(tmp_path / "chains.json"), str(tmp_path / "status.json")]) == 1
    status = json.loads((tmp_path / "status.json").read_text())
    bad, good = status["chains"]
    assert not bad["ok"] and len(bad["commands"]) == 1 and bad["commands"][0]["code"] == 1
    assert good["ok"] and good["commands"][0]["code"] == 0 and status["process_cpu_seconds"] > 0


def test_naee_points_only_where_keep_sets_are_enumerable(tmp_path):
    full, quick = study_specs(quick=False)[1], study_specs(quick=True)[1]
    assert full.routed_experts == 128 and quick.routed_experts == 8
    full_points = study_points(Layout(tmp_path, full))
    assert not [p for p in full_points if p.expert_method == "naee"]
    assert "naee" in full.expert_methods and requested(full)["expert"]["naee"] == []
    record = spec_record(full, Layout(tmp_path, full))
    assert [(n["method"], n["expert_sparsity"]) for n in record["not_run"]] == [("naee", 0.25), ("naee", 0.5)]
    assert "C(128, 96)" in record["not_run"][0]["reason"]
    quick_points = study_points(Layout(tmp_path, quick))
    assert {p.expert_sparsity for p in quick_points if p.expert_method == "naee"} == {0.25, 0.5}


def test_report_shows_the_lm_testbed_diagnostics(quick_study):
    root, _ = quick_study
    report = (root / "report" / "report.md").read_text()
    section = report.split("### The LM testbed of this run", 1)[1].split("\n### ", 1)[0]
    testbed = json.loads((root / "lm" / "testbed.json").read_text())
    for kind in testbed["data"]["kinds"]:
        assert f"| {kind} | {testbed['unigram_perplexity'][kind]:.1f} |" in section
    nmi = testbed["diagnostics"]["finetuned"]["routing"]["layers"]["0"]["nmi"]
    assert f"| finetuned | {nmi:.3f} |" in section
    machine = testbed["machine"]
    assert f"Trained on {machine['cpu']} with torch's `{machine['torch_cpu_capability']}` kernels" in section
    for model in ("pretrained", "finetuned"):
        assert (root / "report" / f"testbed_routing_{model}.png").read_bytes()[:8] == PNG_MAGIC
