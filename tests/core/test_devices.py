"""`--device`: resolution, refusals on this machine, and the stages honouring it (CPU here; GPU on the device box)."""

from __future__ import annotations

import pytest
import torch
from typer.testing import CliRunner

from moeprune.cli import app
from moeprune.devices import resolve_device
from moeprune.errors import MoepruneError


def test_auto_and_cpu_resolve():
    assert resolve_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else None
    if expected:
        assert resolve_device("auto").type == expected
    else:
        assert resolve_device("auto").type in ("cpu", "mps")
    assert resolve_device(None) == resolve_device("auto")


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("gpu", "unknown device 'gpu'; use auto, cpu, cuda, cuda:N or mps"),
        ("xla", "device 'xla' is not supported"),
    ],
)
def test_bad_device_names(spec, message):
    with pytest.raises(MoepruneError, match=message):
        resolve_device(spec)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")
def test_missing_cuda_is_refused_by_the_cli(tmp_path):
    out = tmp_path / "m.json"
    result = CliRunner().invoke(
        app, ["evaluate", "--model", str(tmp_path), "--task", "gsm8k", "--out", str(out), "--device", "cuda:1"]
    )
    assert result.exit_code != 0
    assert not out.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")
def test_cuda_refusal_message():
    with pytest.raises(MoepruneError, match="torch sees no CUDA GPU here; use --device cpu or auto"):
        resolve_device("cuda")


DEVICES = ["cpu", *(["cuda"] if torch.cuda.is_available() else [])]


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    from safetensors.torch import save_file

    from moeprune.testing import tiny_moe_model

    root = tmp_path_factory.mktemp("device")
    tiny_moe_model("mixtral").save_pretrained(root / "model")
    ids = torch.randint(3, 128, (8, 16), generator=torch.Generator().manual_seed(0))
    save_file({"input_ids": ids}, str(root / "calib.safetensors"))
    return root / "model", root / "calib.safetensors"


def _chain(model, calib, out, device):
    """profile -> naee -> sparsegpt on `device`; returns (profile summary, scores, pruned weights)."""
    from builders import unstructured_params
    from safetensors.torch import load_file

    from moeprune.params import ScoreSection
    from moeprune.stages import profile, prune_unstructured, score

    summary = profile.run(model=model, calib=calib, out=out / "profile", device=device)
    naee = ScoreSection(method="naee", expert_sparsity=0.5)
    scores = score.run(model=model, out=out / "s.json", params=naee, calib=calib, device=device)
    sparsegpt = unstructured_params("sparsegpt", sparsity=0.5)
    prune_unstructured.run(model=model, out=out / "pruned", params=sparsegpt, calib=calib, device=device)
    stats = load_file(str(out / "profile" / "profile.safetensors"))
    weights = load_file(str(out / "pruned" / "model.safetensors"))
    return summary, scores, stats, weights


@pytest.mark.parametrize("device", DEVICES)
def test_stages_run_on_the_device_and_agree_with_the_cpu(tmp_path, tiny_checkpoint, device):
    model, calib = tiny_checkpoint
    summary, scores, stats, weights = _chain(model, calib, tmp_path / device, device)
    assert summary["device"].startswith(device) and scores["device"].startswith(device)
    for name, tensor in weights.items():
        assert tensor.device.type == "cpu"
        if "experts" in name:
            assert abs(float((tensor == 0).float().mean()) - 0.5) < 0.02, name
    if device == "cpu":
        return
    _, cpu_scores, cpu_stats, cpu_weights = _chain(model, calib, tmp_path / "cpu", "cpu")
    keep_sets = {k: v["keep"] for k, v in scores["layers"].items()}
    assert keep_sets == {k: v["keep"] for k, v in cpu_scores["layers"].items()}
    for name, tensor in cpu_stats.items():
        torch.testing.assert_close(stats[name], tensor, rtol=1e-3, atol=1e-4, msg=name)
    for name, tensor in cpu_weights.items():
        agree = float(((weights[name] == 0) == (tensor == 0)).float().mean())
        assert agree > 0.97, (name, agree)  # the same weights pruned, up to float ties on the GPU


@pytest.mark.parametrize("device", DEVICES)
def test_streaming_on_the_device_matches_in_memory_on_the_cpu(tmp_path, tiny_checkpoint, device):
    from builders import unstructured_params
    from safetensors.torch import load_file

    from moeprune.checkpoint.shards import ShardReader
    from moeprune.checkpoint.source import open_model
    from moeprune.params import ProfileOptions
    from moeprune.stages import profile, prune_unstructured

    model, calib = tiny_checkpoint
    assert open_model(model, streaming=True, device=device).model.model.embed_tokens.weight.is_meta
    for streaming, where in ((True, device), (False, "cpu")):
        out = tmp_path / f"{streaming}"
        params = ProfileOptions(streaming=streaming)
        summary = profile.run(model=model, calib=calib, out=out / "profile", params=params, device=where)
        assert summary["streaming"] is streaming
        wanda = unstructured_params("wanda", sparsity=0.5, streaming=streaming)
        prune_unstructured.run(model=model, out=out / "pruned", params=wanda, calib=calib, device=where)
    streamed = load_file(str(tmp_path / "True" / "profile" / "profile.safetensors"))
    in_memory = load_file(str(tmp_path / "False" / "profile" / "profile.safetensors"))
    for name, tensor in in_memory.items():
        torch.testing.assert_close(streamed[name], tensor, rtol=1e-3, atol=1e-4, msg=name)
    reader = ShardReader(tmp_path / "True" / "pruned")
    memory_weights = load_file(str(tmp_path / "False" / "pruned" / "model.safetensors"))
    checked = 0
    for key in reader.files:
        if key in memory_weights:
            agree = float(((reader.read(key) == 0) == (memory_weights[key] == 0)).float().mean())
            assert agree > 0.97, (key, agree)
            checked += 1
    assert checked > 0
