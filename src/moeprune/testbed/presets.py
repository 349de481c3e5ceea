"""Named build plans of the LM testbed: sizes, data counts and the two training phases (torch-free).

- `default`: a Qwen3-MoE-family model with 128 fine-grained routed experts per layer (Qwen3-MoE's
  count), top-4 of width 128: a thirty-second of the experts active per token (DeepSeek-V3's share,
  8 of 256), the same active expert width as the coarse preset's (4 x 128 = 2 x 256). Pretrained for
  600 steps on eight kinds of text in equal shares (word problems one of them, 1/8 of the rows of every
  batch) with the load-balancing loss at the stock Qwen3MoeConfig coefficient (0.001); then adapted to
  the GSM8K 5-shot format for 200 shorter steps (about a quarter of the pretraining tokens) without the
  balancing loss, as common fine-tuning recipes run (a batch of one task only would otherwise be pushed
  onto every expert, which undoes the specialisation pretraining produced). The default since
  2026-12-07; how it was chosen, and after which measurements, is in docs/testbed-history.md.
- `e64-top4`: 64 experts top-4 of width 128 (a sixteenth active), otherwise the same plan.
- `e64-top8`: 64 experts top-8 of width 64 (OLMoE's eighth active), the default until 2026-12-07.
- `long`: `e64-top8` with 1000 pretraining steps, the default before that (the dated study reports of
  2026-11-28 and 2026-12-06 used it). 600 replaced it because the 1000-step build took 19.5
  CPU-minutes on a 2-core Xeon with AVX-512 and 17.1 on a 2-core AMD EPYC, over the 15 the testbed is
  allowed (13 on the machine it was planned on).
- `mixtral-8x`: the coarse-expert case, 8 experts top-2 of width 256 (the first testbed's
  architecture), Mixtral family, the same data and training recipe.
- `quick`: tiny and a few steps, seconds to build (tests; accuracy does not matter).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from moeprune.errors import MoepruneError

FAMILIES = ("qwen3_moe", "mixtral", "olmoe", "deepseek_v3")  # the families `testbed.lm.model_config` builds
ROUTER_AUX_LOSS_COEF = 0.001  # transformers' Qwen3MoeConfig and MixtralConfig default


@dataclass
class TrainConfig:
    """Optimiser settings of one training phase."""

    steps: int
    batch_size: int
    lr: float
    warmup_steps: int = 20
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    seed: int = 0
    desc: str = "train"
    balance: bool = True  # add the model's router load-balancing loss (its `router_aux_loss_coef`)


@dataclass
class ModelSize:
    """Architecture sizes shared by every family (`intermediate` is one routed expert's width)."""

    hidden: int = 128
    layers: int = 4
    heads: int = 4
    kv_heads: int = 4
    intermediate: int = 128
    experts: int = 128
    top_k: int = 4
    max_positions: int = 1024


@dataclass
class Plan:
    """Everything a build does: family, sizes, data counts, and the two training phases.

    `rows_per_kind` rows of every kind make one pretraining batch (so `pretrain.batch_size` is
    `rows_per_kind` times the number of kinds); `adapt` is the task-adaptation phase on packed
    5-shot word problems.
    """

    family: str
    size: ModelSize
    n_train: int
    n_test: int
    docs_per_kind: int
    n_pretrain_sample: int
    pretrain_seq_len: int
    rows_per_kind: int
    pretrain: TrainConfig
    adapt: TrainConfig
    adapt_max_len: int = 640
    heldout_rows: int = 32
    router_aux_loss_coef: float = ROUTER_AUX_LOSS_COEF
    # torch threads: one does the same work in about a fifth less CPU time than two on a 2-core machine
    # (the default plan at 700 steps: 596 CPU-s / 607 s wall with one thread, 753 / 531 with two).
    threads: int = 1
    # transformers' experts kernel in training (its default since 5.x, named so that a release changing
    # the default still trains the same weights): one grouped matrix product per projection, half the CPU
    # time per pretraining step of the Python loop over experts ("eager": 0.97 against 1.87 s, 40 steps).
    experts_implementation: str = "grouped_mm"


DEFAULT = Plan(
    family="qwen3_moe",
    size=ModelSize(),
    n_train=20000,
    n_test=200,
    docs_per_kind=15000,
    n_pretrain_sample=2000,
    pretrain_seq_len=256,
    rows_per_kind=2,
    pretrain=TrainConfig(steps=600, batch_size=16, lr=2e-3, warmup_steps=30, desc="pretrain"),
    adapt=TrainConfig(steps=200, batch_size=8, lr=1e-3, warmup_steps=10, desc="adapt", balance=False),
)
E64_TOP4 = replace(DEFAULT, size=replace(DEFAULT.size, experts=64))
E64_TOP8 = replace(DEFAULT, size=replace(DEFAULT.size, experts=64, intermediate=64, top_k=8))
LONG = replace(E64_TOP8, pretrain=replace(E64_TOP8.pretrain, steps=1000))
MIXTRAL_8X = replace(DEFAULT, family="mixtral", size=ModelSize(intermediate=256, experts=8, top_k=2))
QUICK = Plan(
    family="qwen3_moe",
    size=ModelSize(hidden=64, layers=2, heads=2, kv_heads=2, intermediate=32, experts=8, top_k=2),
    n_train=300,
    n_test=20,
    docs_per_kind=200,
    n_pretrain_sample=200,
    pretrain_seq_len=128,
    rows_per_kind=1,
    pretrain=TrainConfig(steps=15, batch_size=8, lr=3e-3, warmup_steps=3, desc="pretrain"),
    adapt=TrainConfig(steps=10, batch_size=4, lr=3e-3, warmup_steps=3, desc="adapt"),
    heldout_rows=4,
)
PRESETS: dict[str, Plan] = {
    "default": DEFAULT,
    "e64-top4": E64_TOP4,
    "e64-top8": E64_TOP8,
    "long": LONG,
    "mixtral-8x": MIXTRAL_8X,
    "quick": QUICK,
}


def get_plan(preset: str) -> Plan:
    """The plan named `preset`.

    Raises:
        MoepruneError: for an unknown preset.
    """
    if preset not in PRESETS:
        raise MoepruneError(f"unknown testbed preset {preset!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[preset]
