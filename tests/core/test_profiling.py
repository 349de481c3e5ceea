"""Activation profiling: the hook leaves outputs unchanged, statistics match a by-hand computation, files."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from moeprune.arch import get_adapter
from moeprune.errors import MoepruneError
from moeprune.params import ProfileOptions
from moeprune.profiling import STAT_NAMES, forward_batch, load_profile, profile_model, profiling
from moeprune.stages import profile as profile_stage
from moeprune.testing import tiny_moe_model, tiny_vmoe_model

IDS = torch.randint(3, 128, (6, 12), generator=torch.Generator().manual_seed(0))


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _eager_logits(model, batch):
    model.set_experts_implementation("eager")
    logits = forward_batch(model, batch).logits
    model.set_experts_implementation("grouped_mm")
    return logits


@pytest.mark.parametrize("family", ["mixtral", "qwen2_moe", "deepseek_v3", "phimoe"])
def test_profiling_keeps_eager_outputs_and_counts_every_routed_token(family):
    model = tiny_moe_model(family)
    batch = {"input_ids": IDS}
    expected = _eager_logits(model, batch)
    with profiling(model) as accumulators:
        assert model.get_experts_implementation() == {"": "moeprune_profile"}
        logits = forward_batch(model, batch).logits
    assert model.get_experts_implementation() == {"": "grouped_mm"}  # restored
    assert torch.equal(logits, expected)
    tokens = IDS.numel()
    for layer in get_adapter(model).layers:
        stats = accumulators[layer.index].result()
        assert int(stats["tokens"]) == tokens
        assert stats["frequency"].sum() == tokens * layer.top_k
        assert torch.equal(stats["coactivation"].diagonal(), stats["frequency"])
        assert torch.equal(stats["coactivation"], stats["coactivation"].T)


def test_statistics_match_a_by_hand_computation():
    model = tiny_moe_model("mixtral")
    layer = get_adapter(model).layers[1]
    captured = []
    handle = layer.block.register_forward_pre_hook(lambda m, args: captured.append(args[0].reshape(-1, 32)))
    profile = profile_model(model, [{"input_ids": IDS[:3]}, {"input_ids": IDS[3:]}])
    handle.remove()
    x = torch.cat(captured)
    stats = profile.layer(layer.index)
    with torch.no_grad():
        logits, weights, index = layer.route(x)
        for e in range(layer.num_experts):
            rows, slots = torch.where(index == e)
            out = layer.run_expert(e, x[rows])
            norms = out.double().norm(dim=-1)
            gates = weights[rows, slots].double()
            assert stats["frequency"][e] == rows.numel()
            assert torch.allclose(stats["soft_frequency"][e], gates.sum())
            assert torch.allclose(stats["reap"][e], (gates * norms).mean())
            assert torch.allclose(stats["output_norm"][e], norms.mean())
            assert torch.allclose(stats["wanda_in_sq"][e], x[rows].double().pow(2).sum(0))
            inner = layer.expert_intermediate(e, x[rows]).double()
            assert torch.allclose(stats["wanda_down_sq"][e], inner.pow(2).sum(0))
    assert torch.allclose(stats["router_logit_mean"], logits.double().mean(0))
    assert torch.allclose(stats["router_logit_std"], logits.double().std(0, unbiased=False), atol=1e-6)
    assert stats["wanda_in_sq"].shape == (8, 32) and stats["wanda_down_sq"].shape == (8, layer.intermediate_size)
    assert torch.allclose(stats["soft_frequency"].sum(), torch.tensor(float(IDS.numel()), dtype=torch.float64))


def test_vision_moe_is_profiled_from_pixel_values():
    model = tiny_vmoe_model()
    pixels = torch.randn(5, 1, 8, 8)
    expected = _eager_logits(model, {"pixel_values": pixels})
    with profiling(model):
        logits = forward_batch(model, {"pixel_values": pixels, "labels": torch.zeros(5, dtype=torch.long)}).logits
    assert torch.equal(logits, expected)
    profile = profile_model(model, [{"pixel_values": pixels}])
    assert sorted(profile.layers) == [1, 3]
    assert all(profile.layers[i]["frequency"].sum() == 5 * 5 * 2 for i in (1, 3))  # 4 patches + CLS, top-2


def _write_model_and_calib(tmp_path, family="mixtral"):
    model = tiny_moe_model(family)
    model_dir = tmp_path / "model"
    model.save_pretrained(model_dir)
    calib = tmp_path / "calib.safetensors"
    save_file({"input_ids": IDS.clone()}, str(calib))
    return model, model_dir, calib


def test_profile_stage_writes_tensors_summary_and_plots(tmp_path):
    model, model_dir, calib = _write_model_and_calib(tmp_path)
    out = tmp_path / "profile"
    summary = profile_stage.run(model=model_dir, calib=calib, out=out, params=ProfileOptions(**{"batch-size": 4}))
    tensors = load_file(str(out / "profile.safetensors"))
    assert {f"layers.{i}.{name}" for i in (0, 1) for name in STAT_NAMES} == set(tensors)
    written = json.loads((out / "profile.json").read_text())
    assert written["layers"] == [0, 1] and written["tokens"] == IDS.numel() and written["batches"] == 2
    assert len(written["calibration_sha256"]) == 64 and written["seconds"] >= 0
    assert summary["tokens"] == IDS.numel()
    for plot in ("expert_load.png", "coactivation.png"):
        assert (out / "plots" / plot).read_bytes()[:4] == b"\x89PNG"
    loaded = load_profile(out)
    expected = profile_model(model, [{"input_ids": IDS}])
    assert torch.allclose(loaded.layer(1)["frequency"], expected.layer(1)["frequency"])
    assert torch.allclose(loaded.layer(1)["reap"], expected.layer(1)["reap"])
    assert not list(tmp_path.glob(".profile.tmp-*"))


def test_profile_stage_errors(tmp_path):
    _, model_dir, calib = _write_model_and_calib(tmp_path)
    with pytest.raises(MoepruneError, match="does not exist"):
        profile_stage.run(model=model_dir, calib=tmp_path / "missing.safetensors", out=tmp_path / "p")
    bad = tmp_path / "bad.safetensors"
    save_file({"labels": torch.zeros(3, dtype=torch.long)}, str(bad))
    with pytest.raises(MoepruneError, match="input_ids or pixel_values"):
        profile_stage.run(model=model_dir, calib=bad, out=tmp_path / "p")
    with pytest.raises(MoepruneError, match="no profile.safetensors"):
        load_profile(tmp_path)
    assert not (tmp_path / "p").exists()
