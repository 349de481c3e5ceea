"""The scores file's one schema (`moeprune.scoring.scores_file`): what is written is what was given, in
`moeprune score`'s order; every bad file is one line naming the file; nothing invalid is written."""

from __future__ import annotations

import json

import pytest

from moeprune.errors import MoepruneError
from moeprune.scoring.base import LayerScores
from moeprune.scoring.scores_file import layer_record, read_scores, write_scores

LAYER = {"scores": [0.5, 0.25, 1.0, 0.0], "keep": [0, 2]}
RECORD = {  # the keys in the order `moeprune score` writes them, then method details
    "method": "stun",
    "expert_sparsity": 0.5,
    "num_experts": 4,
    "keep_per_layer": {"0": 2, "1": 3},
    "layers": {"0": LAYER, "1": {"scores": [1.0, 2.0, 3.0, 4.0], "keep": [1, 2, 3], "merge": {"1": [0, 1]}}},
    "forward_passes": 0,
    "device": "cpu",
    "seconds": 0.01,
    "seed": 0,
    "options": {"global_budget": True},
    "family": "mixtral",
    "model": "m",
    "model_sha256": "0" * 64,
    "profile": None,
    "profile_sha256": None,
    "reference": None,
    "calibration_sha256": None,
    "notes": [],
    "stun": {"mode": "global", "tau": float("inf"), "keep_per_layer": {0: 2, 1: 3}},
}


def test_write_then_read_keeps_the_format(tmp_path):
    path = tmp_path / "scores.json"
    written = write_scores(path, RECORD)
    assert path.read_text() == json.dumps(RECORD, indent=2) + "\n"  # key order, Infinity, int keys as before
    assert json.dumps(written) == json.dumps(RECORD)
    scores = read_scores(path)
    assert scores.method == "stun" and scores.expert_sparsity == 0.5 and scores.model_sha256 == "0" * 64
    assert scores.keep_sets() == {0: [0, 2], 1: [1, 2, 3]} and scores.merges() == {1: {1: [0, 1]}}


def test_a_hand_written_file_gains_no_keys(tmp_path):
    path = tmp_path / "s.json"
    minimal = {"method": "mine", "expert_sparsity": 0.5, "layers": {"0": {"keep": [1, 3]}}}
    path.write_text(json.dumps(minimal))
    assert read_scores(path).record() == minimal


def test_layer_record_writes_merge_only_when_merged():
    assert layer_record(LayerScores([1.0, 2.0], [1])) == {"scores": [1.0, 2.0], "keep": [1]}
    merged = layer_record(LayerScores([1.0, 2.0], [1], merge={1: [0, 1]}))
    assert merged["merge"] == {"1": [0, 1]}


def test_nothing_invalid_is_written(tmp_path):
    path = tmp_path / "scores.json"
    bad = {**RECORD, "layers": {"0": {**LAYER, "scores": [float("nan")] * 4}}}
    with pytest.raises(MoepruneError, match=f"scores file '{path}': layer 0 'scores' must be finite"):
        write_scores(path, bad)
    assert not path.exists()


@pytest.mark.parametrize(
    "content, message",
    [
        ("[1, 2]", "holds a JSON list, not an object"),
        ('{"method": "m"}', r"lacks \['expert_sparsity', 'layers'\]"),
        ('{"method": "m", "expert_sparsity": 0.5, "layers": {}}', r"lacks \['layers'\]"),
        ('{"method": "m", "expert_sparsity": "0.5", "layers": {"0": {"keep": [0]}}}', "'expert_sparsity': input"),
        ('{"method": "m", "expert_sparsity": 0.5, "layers": {"0": {"keep": [0]}}, "seed": true}', "'seed': input"),
        ('{"method": "m", "expert_sparsity": 0.5, "layers": {"0": {"scores": [1]}}}', "layer 0 has no 'keep' list"),
        ('{"method": "m", "expert_sparsity": 0.5, "layers": {"01": {"keep": [0]}}}', "'01' is not a layer index"),
        ('{"method": "m", "method": "n", "expert_sparsity": 0.5, "layers": {}}', "appear twice"),
    ],
)
def test_bad_files_are_one_line_naming_the_file(tmp_path, content, message):
    path = tmp_path / "s.json"
    path.write_text(content)
    with pytest.raises(MoepruneError, match=message) as caught:
        read_scores(path)
    assert str(path) in str(caught.value) and "\n" not in str(caught.value)
