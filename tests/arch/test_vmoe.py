"""The V-MoE model: routing, experts, outputs, and a save -> reload through stock Auto classes."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch
from transformers import AutoConfig, AutoModelForImageClassification

from moeprune.arch.vmoe import (
    VMoEConfig,
    VMoEForImageClassification,
    VMoEMLP,
    VMoESparseMoeBlock,
    VMoETopKRouter,
    register_vmoe,
)
from moeprune.testing import tiny_vmoe_config as tiny_config
from moeprune.testing import tiny_vmoe_model as tiny_model


def test_module_tree_puts_moe_in_every_other_block():
    model = tiny_model()
    kinds = [type(layer.mlp) for layer in model.vmoe.layers]
    assert kinds == [VMoEMLP, VMoESparseMoeBlock, VMoEMLP, VMoESparseMoeBlock]
    block = model.vmoe.layers[1].mlp
    assert block.gate.weight.shape == (4, 16)
    assert block.experts.gate_up_proj.shape == (4, 16, 16)  # [E, 2I, H]
    assert block.experts.down_proj.shape == (4, 16, 8)  # [E, H, I]
    assert model.config.num_experts == 4  # alias of num_local_experts
    attention = model.vmoe.layers[0].attention
    assert all(hasattr(attention, name) for name in ("q_proj", "k_proj", "v_proj", "o_proj"))


def test_forward_shapes_and_router_outputs():
    model = tiny_model()
    pixels = torch.randn(5, 1, 8, 8)
    out = model(pixels, output_router_logits=True, output_hidden_states=True)
    assert out.logits.shape == (5, 3)
    assert len(out.router_logits) == 2  # two MoE blocks
    assert out.router_logits[0].shape == (5 * 5, 4)  # 4 patches + [CLS] per image, 4 experts
    assert len(out.hidden_states) == 5  # embeddings + each block
    assert out.aux_loss is not None and out.aux_loss.item() > 0


def test_router_is_softmax_topk_renormalised():
    torch.manual_seed(0)
    router = VMoETopKRouter(tiny_config())
    torch.nn.init.normal_(router.weight)
    hidden = torch.randn(10, 16)
    logits, weights, index = router(hidden)
    probs = torch.softmax(logits, dim=-1)
    expected_weights, expected_index = probs.topk(2, dim=-1)
    assert index.shape == (10, 2) and torch.equal(index, expected_index)
    assert torch.allclose(weights, expected_weights / expected_weights.sum(-1, keepdim=True))
    assert torch.allclose(weights.sum(-1), torch.ones(10))
    raw = VMoETopKRouter(tiny_config(norm_topk_prob=False))
    raw.weight.data.copy_(router.weight)
    assert torch.allclose(raw(hidden)[1], expected_weights)


def test_only_top_k_experts_contribute():
    """Zeroing an expert that no token picks leaves the block output unchanged; zeroing a picked one does not."""
    torch.manual_seed(0)
    block = VMoESparseMoeBlock(tiny_config(num_experts_per_tok=1))
    for param in block.parameters():
        torch.nn.init.normal_(param)
    hidden = torch.randn(1, 6, 16)
    picked = set(block.gate(hidden.view(-1, 16))[2].flatten().tolist())
    unused = sorted(set(range(4)) - picked)
    before = block(hidden)
    if unused:
        block.experts.down_proj.data[unused[0]] = 0
        assert torch.equal(block(hidden), before)
    block.experts.down_proj.data[sorted(picked)[0]] = 0
    assert not torch.allclose(block(hidden), before)


def test_experts_match_mixtral_and_backends_agree():
    from transformers import MixtralConfig
    from transformers.models.mixtral.modeling_mixtral import MixtralExperts

    config = tiny_config(hidden_act="silu")
    model = tiny_model(hidden_act="silu")
    experts = model.vmoe.layers[1].mlp.experts
    mixtral = MixtralExperts(MixtralConfig(hidden_size=16, intermediate_size=8, num_local_experts=4))
    mixtral.load_state_dict(experts.state_dict())
    hidden = torch.randn(12, 16)
    router = VMoETopKRouter(config).requires_grad_(False)
    torch.nn.init.normal_(router.weight)
    _, weights, index = router(hidden)
    ours = type(experts).forward.__wrapped__(experts, hidden, index, weights)
    theirs = type(mixtral).forward.__wrapped__(mixtral, hidden, index, weights)
    assert torch.allclose(ours, theirs, rtol=1e-5, atol=1e-8)  # same math; BLAS threading may reorder sums
    pixels = torch.randn(3, 1, 8, 8)
    grouped = model(pixels).logits
    model.set_experts_implementation("eager")
    assert torch.allclose(model(pixels).logits, grouped, atol=1e-5)


def test_training_step_reduces_loss():
    model = tiny_model().train()
    pixels, labels = torch.randn(16, 1, 8, 8), torch.randint(0, 3, (16,))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(20):
        loss = model(pixels, labels=labels, output_router_logits=True).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] * 0.5
    assert model.vmoe.layers[1].mlp.gate.weight.grad is not None  # the aux loss reaches the router


def test_config_validation_and_double_registration():
    with pytest.raises(ValueError, match="divisible"):
        tiny_config(num_attention_heads=3)
    with pytest.raises(ValueError, match="multiple of patch_size"):
        tiny_config(image_size=9)
    with pytest.raises(ValueError, match="num_experts_per_tok"):
        tiny_config(num_experts_per_tok=5)
    register_vmoe()  # a second registration is harmless
    assert AutoConfig.for_model("vmoe").__class__ is VMoEConfig
    model = tiny_model()
    with pytest.raises(ValueError, match="8x8"):
        model(torch.randn(1, 1, 12, 12))


def test_auto_class_loads_the_registered_model_in_process(tmp_path):
    model = tiny_model()
    model.save_pretrained(tmp_path)
    reloaded = AutoModelForImageClassification.from_pretrained(tmp_path, use_safetensors=True)
    assert isinstance(reloaded, VMoEForImageClassification)


RELOAD_SCRIPT = textwrap.dedent(
    """
    import sys, torch
    import moeprune.arch.vmoe  # registration only
    from transformers import AutoConfig, AutoModelForImageClassification
    model_dir, pixels_path, out_path = sys.argv[1:4]
    assert AutoConfig.from_pretrained(model_dir).model_type == "vmoe"
    model = AutoModelForImageClassification.from_pretrained(model_dir, use_safetensors=True).eval()
    with torch.no_grad():
        torch.save(model(torch.load(pixels_path)).logits, out_path)
    """
)


def test_save_and_reload_in_a_fresh_process_gives_identical_logits(tmp_path):
    model = tiny_model(seed=3)
    pixels = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        expected = model(pixels).logits
    model.save_pretrained(tmp_path / "model", safe_serialization=True)
    assert (tmp_path / "model" / "model.safetensors").is_file()
    torch.save(pixels, tmp_path / "pixels.pt")
    script = tmp_path / "reload.py"
    script.write_text(RELOAD_SCRIPT)
    subprocess.run(
        [sys.executable, str(script), str(tmp_path / "model"), str(tmp_path / "pixels.pt"), str(tmp_path / "out.pt")],
        check=True,
        timeout=120,
    )
    assert torch.allclose(torch.load(tmp_path / "out.pt"), expected, atol=1e-6, rtol=0)
