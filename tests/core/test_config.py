"""params.yaml validation: the repository's files load; each bad value names its key."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import yaml

from moeprune.errors import MoepruneError
from moeprune.params import load_params, parse_params

ROOT = Path(__file__).resolve().parents[2]
# README's "Reliability" table: (fault, inputs tested, outcome), rendered by tests/reliability_table.py.
RELIABILITY_ROWS = [
    (
        "bad params.yaml value",
        "out of range, unknown method / task / source / family / key, bad N:M or cron, strict types "
        "(bool or 2.5 for an int, `'yes'` / `'true'` / 1 for a bool, `'0.5'` / bool for a float, 7 for a string), "
        "negative seeds, a missing file, invalid YAML",
        "an error naming the file and the key (`params.yaml: score.seed: …`), or saying the file is missing or "
        "not valid YAML; types are not coerced (an int where a float is expected is fine)",
    ),
    (
        "null flag in a mapping dvc.yaml unpacks",
        "`preset:` left empty under `testbed.options` (DVC would run `--preset None`), likewise under `profile`, "
        "`prune_unstructured.options` and `evaluate.lm_eval`",
        "an error naming the file and the key, saying to delete the line, before any stage runs; a null elsewhere "
        "(`registry.tracking_uri`) keeps its meaning",
    ),
]


@pytest.fixture(scope="module")
def raw() -> dict:
    return yaml.safe_load((ROOT / "params.yaml").read_text())


def test_repository_params_load():
    params = load_params(ROOT / "params.yaml")
    assert params.kind == "lm"
    assert 0 <= params.score.expert_sparsity < 1
    assert params.prune_unstructured.options.total_sparsity == 0.4
    assert params.promote.objective[0] == "total_sparsity"


def test_vision_params_load():
    params = load_params(ROOT / "pipelines" / "vision" / "params.yaml")
    assert params.kind == "vision"
    assert params.evaluate.task.startswith("imagenet:")
    assert params.promote.metric == "imagenet.top1"


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        ("score.expert_sparsity", 1.5, "params.yaml: score.expert_sparsity: must be in [0, 1), got 1.5"),
        ("score.expert_sparsity", -0.1, "score.expert_sparsity: must be in [0, 1)"),
        ("score.method", "magic", "score.method: unknown score method 'magic'; valid: router-change"),
        ("kind", "audio", "kind: Input should be 'lm' or 'vision'"),
        ("prune_unstructured.method", "obs", "prune_unstructured.method: unknown unstructured method 'obs'"),
        ("prune_unstructured.options.nm", "4:2", "prune_unstructured.options.nm: needs 0 < N < M"),
        ("prune_unstructured.options.nm", "2-4", "prune_unstructured.options.nm: must look like N:M"),
        ("prune_unstructured.options.total-sparsity", 1.0, "options.total-sparsity: must be in [0, 1)"),
        ("prune_unstructured.options.sparsity", 0.3, "options: give exactly one of sparsity and total-sparsity"),
        ("calibrate.samples", 0, "calibrate.samples: Input should be greater than 0"),
        ("calibrate.source", "ftp:x", "calibrate.source: unknown calibration source 'ftp:x'"),
        ("evaluate.task", "mmlu", "evaluate.task: unknown evaluation task 'mmlu'"),
        ("promote.min_retention", 1.2, "promote.min_retention: must be in [0, 1], got 1.2"),
        ("promote.objective", ["speed"], "promote.objective: unknown objective key 'speed'"),
        ("sweep.expert_sparsity", [0.5, 1.0], "sweep.expert_sparsity.1: must be in [0, 1), got 1.0"),
        ("sweep.methods", ["stun", "nope"], "sweep.methods.1: unknown score method 'nope'"),
        ("schedules.sweep", "nightly", "schedules.sweep: must be a five-field cron expression"),
        ("testbed.options.family", "gpt2", "testbed.options.family: unknown family 'gpt2'"),
        ("score.bogus", 1, "score.bogus: unknown key"),
        ("device", "gpu", "device: must be auto, cpu, cuda, cuda:N or mps, got 'gpu'"),
        # strict types: YAML's bools, strings and numbers are not converted into each other
        ("calibrate.samples", True, "calibrate.samples: Input should be a valid integer, got True"),
        ("evaluate.limit", 2.5, "evaluate.limit: Input should be a valid integer, got 2.5"),
        ("testbed.options.quick", "yes", "testbed.options.quick: Input should be a valid boolean, got 'yes'"),
        ("profile.streaming", 1, "profile.streaming: Input should be a valid boolean, got 1"),
        ("prune_unstructured.options.owl", "true", "options.owl: Input should be a valid boolean, got 'true'"),
        ("score.expert_sparsity", "0.5", "score.expert_sparsity: Input should be a valid number, got '0.5'"),
        ("score.expert_sparsity", True, "score.expert_sparsity: Input should be a valid number, got True"),
        ("registry.model_name", 7, "registry.model_name: Input should be a valid string, got 7"),
        # seeds are >= 0
        ("score.seed", -1, "score.seed: Input should be greater than or equal to 0, got -1"),
        ("calibrate.seed", -3, "calibrate.seed: Input should be greater than or equal to 0"),
        ("testbed.options.seed", -1, "testbed.options.seed: Input should be greater than or equal to 0"),
        ("score.seed", False, "score.seed: Input should be a valid integer, got False"),
        # a misspelt key beside the real one (DVC would run with the old value)
        ("score.expert_sparsty", 0.25, "params.yaml: score.expert_sparsty: unknown key"),
        ("prune_unstructured.options.total_sparsity", 0.5, "options.total_sparsity: unknown key"),
        ("prune_unstructured.options", {"total_sparsity": 0.5}, "options.total_sparsity: unknown key"),
    ],
)
def test_bad_value_names_the_key(raw, path, value, expected):
    data = copy.deepcopy(raw)
    *parents, last = path.split(".")
    node = data
    for key in parents:
        node = node[key]
    node[last] = value
    with pytest.raises(MoepruneError) as error:
        parse_params(data)
    assert expected in str(error.value)


UNPACKED_FLAGS = [
    "testbed.options.preset",
    "profile.batch-size",
    "prune_unstructured.options.nm",
    "evaluate.lm_eval.backend",
]


@pytest.mark.parametrize("path", UNPACKED_FLAGS)
def test_a_null_flag_is_refused_before_dvc_passes_it_on_as_none(raw, path):
    data = copy.deepcopy(raw)
    *parents, last = path.split(".")
    node = data
    for key in parents:
        node = node.setdefault(key, {})
    node[last] = None
    with pytest.raises(MoepruneError, match=rf"params.yaml: {re.escape(path)}: null, .*delete the line"):
        parse_params(data)


def test_null_outside_the_unpacked_flags_keeps_its_meaning(raw):
    data = copy.deepcopy(raw)
    data["registry"]["tracking_uri"] = None
    assert parse_params(data).registry.tracking_uri is None


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(MoepruneError, match="params file not found"):
        load_params(tmp_path / "nope.yaml")
    bad = tmp_path / "params.yaml"
    bad.write_text("score: [unclosed\n")
    with pytest.raises(MoepruneError, match="params.yaml: not valid YAML"):
        load_params(bad)


def test_defaults_fill_missing_sections(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("kind: vision\nscore: {method: stun, expert_sparsity: 0.25}\n")
    params = load_params(path)
    assert params.score.method == "stun" and params.score.expert_sparsity == 0.25
    assert params.promote.min_retention == 0.9


def test_an_int_where_a_float_is_expected_is_fine(raw):
    data = copy.deepcopy(raw)
    data["score"]["expert_sparsity"] = 0
    data["promote"]["min_retention"] = 1
    params = parse_params(data)
    assert params.score.expert_sparsity == 0.0 and params.promote.min_retention == 1.0


def test_error_names_the_file_as_given(tmp_path):
    path = tmp_path / "vision" / "params.yaml"
    path.parent.mkdir()
    path.write_text("score: {seed: -1}\n")
    with pytest.raises(MoepruneError, match=f"^{path}: score.seed: Input should be greater than or equal to 0"):
        load_params(path)
