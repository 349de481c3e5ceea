"""The vision testbed: a V-MoE pretrained on one task and fine-tuned on another, from real handwritten digits.

It mirrors the setting of the router-change paper (Chowdhury et al., 2024: V-MoE pretrained, then fine-tuned
on a downstream classification task), at a size that trains in minutes on two CPU cores:

1. `data/`: sklearn's 1,797 handwritten digits as a 32x32 grayscale ImageFolder tree (stratified 80/20).
2. Pretraining task, "which way up?": every training image is shown rotated by 0, 90, 180 or 270 degrees
   (drawn anew each epoch) and the model predicts the rotation (4 classes). It sees upright and rotated
   digits alike and never sees a digit label.
3. Fine-tuning task: the 10-class digit label on upright images, starting from the pretrained weights
   (same architecture; the 4-way head is replaced by a fresh 10-way head).

Outputs, written atomically under `out/`: `data/`, `pretrained/`, `finetuned/` (safetensors, config with
id2label, ViT image processor) and `testbed.json` (sizes, seed, timings, accuracies, per-expert load).
Training is seeded and deterministic on CPU: AdamW, linear warm-up then cosine decay, gradient clipping,
and the load-balancing auxiliary loss on the routers.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from moeprune.arch.vmoe import VMoEConfig, VMoEForImageClassification, is_moe_layer
from moeprune.data.digits import DIGITS_IMAGE_SIZE, export_digits_imagefolder, load_imagefolder, read_image
from moeprune.outputs import atomic_dir, write_json
from moeprune.testbed.machine import machine_record

ROTATION_LABELS = ("rot0", "rot90", "rot180", "rot270")
# Model sizes: the default one is accurate enough for pruning damage to be measurable; quick is for tests.
MODEL_SIZES = {
    "default": dict(hidden_size=64, num_hidden_layers=6, num_attention_heads=4, intermediate_size=128),
    "quick": dict(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=32),
}


@dataclass(frozen=True)
class Schedule:
    """How long and how fast one training phase runs."""

    epochs: int
    lr: float
    batch_size: int = 64
    weight_decay: float = 0.05
    warmup_fraction: float = 0.1
    max_grad_norm: float = 1.0
    train_limit: int | None = None  # use only the first N training images (quick builds)


SCHEDULES = {
    "default": {"pretrain": Schedule(epochs=25, lr=2e-3), "finetune": Schedule(epochs=40, lr=1e-3)},
    "quick": {
        "pretrain": Schedule(epochs=1, lr=2e-3, train_limit=256),
        "finetune": Schedule(epochs=1, lr=2e-3, train_limit=256),
    },
}


def make_image_processor(size: int = DIGITS_IMAGE_SIZE):
    """The image processor saved beside both models: resize to `size`, scale to [0, 1], normalise to [-1, 1]."""
    from transformers import ViTImageProcessorPil

    return ViTImageProcessorPil(size={"height": size, "width": size}, do_resize=True, image_mean=[0.5], image_std=[0.5])


def load_pixels(directory: Path, processor, num_channels: int = 1) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Read an ImageFolder tree into `pixel_values [N, C, S, S]`, `labels [N]` and the class names."""
    paths, labels, classes = load_imagefolder(directory)
    images = [read_image(path, num_channels) for path in paths]
    pixel_values = processor(images=images, return_tensors="pt")["pixel_values"]
    return pixel_values, torch.tensor(labels), classes


def rotate_randomly(pixels: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate each image by a random multiple of 90 degrees; the label is the number of quarter turns."""
    turns = torch.randint(0, 4, (pixels.shape[0],), generator=generator)
    return rotate_by(pixels, turns), turns


def rotate_by(pixels: torch.Tensor, turns: torch.Tensor) -> torch.Tensor:
    """Rotate image i of `pixels [N, C, S, S]` by `turns[i]` quarter turns (counter-clockwise)."""
    rotated = pixels.clone()
    for k in range(1, 4):
        chosen = turns == k
        rotated[chosen] = torch.rot90(pixels[chosen], k, dims=(-2, -1))
    return rotated


def all_rotations(pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Every image at all four rotations: `[4N, C, S, S]` and the rotation labels `[4N]`."""
    turns = torch.arange(4).repeat_interleave(pixels.shape[0])
    return rotate_by(pixels.repeat(4, 1, 1, 1), turns), turns


def lr_at(step: int, total: int, schedule: Schedule) -> float:
    """Learning rate: linear warm-up, then cosine decay to 0."""
    warmup = max(1, int(total * schedule.warmup_fraction))
    if step < warmup:
        return schedule.lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return schedule.lr * 0.5 * (1.0 + math.cos(math.pi * progress))


def train_step(
    model: VMoEForImageClassification,
    optimizer: torch.optim.Optimizer,
    pixels: torch.Tensor,
    labels: torch.Tensor,
    lr: float,
    max_grad_norm: float,
) -> float:
    """One AdamW step on classification + load-balancing loss at learning rate `lr`; returns the loss."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    loss = model(pixels, labels=labels, output_router_logits=True).loss
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
    optimizer.step()
    return loss.item()


Batcher = Callable[[torch.Tensor, torch.Tensor, torch.Generator], tuple[torch.Tensor, torch.Tensor]]


def train(
    model: VMoEForImageClassification,
    pixels: torch.Tensor,
    labels: torch.Tensor,
    schedule: Schedule,
    generator: torch.Generator,
    make_batch: Batcher | None = None,
    desc: str = "train",
) -> list[float]:
    """Train `model` in place with AdamW and the router load-balancing loss.

    Args:
        model: The classifier to train.
        pixels: Training images `[N, C, S, S]`.
        labels: Their labels `[N]` (ignored by a `make_batch` that builds its own).
        schedule: Epochs, learning rate, batch size and friends.
        generator: Seeded generator for shuffling and for `make_batch`.
        make_batch: Optional `(pixels, labels, generator) -> (pixels, labels)` applied to each batch.
        desc: Label of the progress bar.

    Returns:
        The mean training loss of each epoch.
    """
    if schedule.train_limit:
        pixels, labels = pixels[: schedule.train_limit], labels[: schedule.train_limit]
    optimizer = torch.optim.AdamW(model.parameters(), lr=schedule.lr, weight_decay=schedule.weight_decay)
    steps_per_epoch = math.ceil(len(pixels) / schedule.batch_size)
    total = steps_per_epoch * schedule.epochs
    epoch_losses: list[float] = []
    model.train()
    step = 0
    with tqdm(total=total, desc=desc, disable=None) as bar:
        for _ in range(schedule.epochs):
            order = torch.randperm(len(pixels), generator=generator)
            running = 0.0
            for start in range(0, len(pixels), schedule.batch_size):
                batch = order[start : start + schedule.batch_size]
                x, y = pixels[batch], labels[batch]
                if make_batch is not None:
                    x, y = make_batch(x, y, generator)
                loss = train_step(model, optimizer, x, y, lr_at(step, total, schedule), schedule.max_grad_norm)
                running += loss * len(batch)
                step += 1
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.3f}")
            epoch_losses.append(running / len(pixels))
    model.eval()
    return epoch_losses


@torch.no_grad()
def predict(model: VMoEForImageClassification, pixels: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Arg-max class of every image `[N]`."""
    model.eval()
    return torch.cat([model(pixels[i : i + batch_size]).logits.argmax(-1) for i in range(0, len(pixels), batch_size)])


def accuracy(model: VMoEForImageClassification, pixels: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 accuracy of `model` on `(pixels, labels)`."""
    return float((predict(model, pixels) == labels).float().mean())


@torch.no_grad()
def routing_report(
    model: VMoEForImageClassification, pixels: torch.Tensor, labels: torch.Tensor, batch_size: int = 256
) -> dict[str, dict]:
    """Per MoE block: the share of top-k slots each expert takes, and how much routing tells the class.

    Returns:
        `{layer_idx: {"load": [E floats summing to 1], "class_nmi": float}}`. `class_nmi` is the mutual
        information between an image's class and the experts its tokens pick, divided by the entropy of
        the expert choice (0: routing ignores the class, 1: the experts determine it).
    """
    config = model.config
    num_experts, num_classes = config.num_local_experts, int(labels.max()) + 1
    counts = {
        idx: torch.zeros(num_classes, num_experts)
        for idx in range(config.num_hidden_layers)
        if is_moe_layer(config, idx)
    }
    for start in range(0, len(pixels), batch_size):
        x, y = pixels[start : start + batch_size], labels[start : start + batch_size]
        logits_per_layer = model(x, output_router_logits=True).router_logits
        for idx, router_logits in zip(counts, logits_per_layer, strict=True):
            chosen = router_logits.topk(config.num_experts_per_tok, dim=-1).indices.view(len(x), -1)  # [B, T*k]
            one_hot = torch.nn.functional.one_hot(chosen, num_experts).sum(1).float()  # [B, E]
            counts[idx].index_add_(0, y, one_hot)
    return {
        str(idx): {"load": _rounded(c.sum(0) / c.sum()), "class_nmi": round(_class_nmi(c), 4)}
        for idx, c in counts.items()
    }


def _class_nmi(counts: torch.Tensor) -> float:
    """I(class; expert) / H(expert) from a `[classes, experts]` table of routing counts."""
    joint = counts / counts.sum()
    p_class, p_expert = joint.sum(1, keepdim=True), joint.sum(0, keepdim=True)
    nonzero = joint > 0
    mutual = (joint[nonzero] * (joint[nonzero] / (p_class @ p_expert)[nonzero]).log()).sum()
    entropy = -(p_expert[p_expert > 0] * p_expert[p_expert > 0].log()).sum()
    return float(mutual / entropy) if entropy > 0 else 0.0


def _rounded(values: torch.Tensor) -> list[float]:
    return [round(float(v), 4) for v in values]


def make_config(size: str, num_labels: int, id2label: dict[int, str]) -> VMoEConfig:
    """The V-MoE configuration of the testbed: 32x32 grayscale, 8x8 patches, 8 experts, top-2."""
    return VMoEConfig(
        image_size=DIGITS_IMAGE_SIZE,
        patch_size=8,
        num_channels=1,
        num_local_experts=8,
        num_experts_per_tok=2,
        moe_layer_period=2,
        router_aux_loss_coef=0.01,
        num_labels=num_labels,
        id2label=id2label,
        label2id={name: idx for idx, name in id2label.items()},
        **MODEL_SIZES[size],
    )


def finetune_model_from(pretrained: VMoEForImageClassification, classes: list[str]) -> VMoEForImageClassification:
    """A 10-way classifier with every pretrained weight except the classification head."""
    config = pretrained.config.to_dict()
    for key in ("num_labels", "id2label", "label2id", "architectures", "model_type", "transformers_version"):
        config.pop(key, None)
    id2label = dict(enumerate(classes))
    model = VMoEForImageClassification(
        VMoEConfig(**config, id2label=id2label, label2id={name: idx for idx, name in id2label.items()})
    )
    body = {k: v for k, v in pretrained.state_dict().items() if not k.startswith("classifier.")}
    missing, unexpected = model.load_state_dict(body, strict=False)
    assert not unexpected and all(k.startswith("classifier.") for k in missing), (missing, unexpected)
    return model


def save_model(model: VMoEForImageClassification, processor, out: Path) -> None:
    """`save_pretrained` the model (safetensors) and its image processor into `out`."""
    model.save_pretrained(out, safe_serialization=True)
    processor.save_pretrained(out)


class Stopwatch:
    """Wall-clock and process CPU seconds of named phases (CPU time stays honest on a busy machine)."""

    def __init__(self) -> None:
        self.times: dict[str, float] = {}

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Time the block as `<name>_s` (wall) and `<name>_cpu_s` (process CPU, all threads)."""
        wall, cpu = time.perf_counter(), time.process_time()
        yield
        self.times[f"{name}_s"] = round(time.perf_counter() - wall, 2)
        self.times[f"{name}_cpu_s"] = round(time.process_time() - cpu, 2)


def describe_model(model: VMoEForImageClassification) -> dict:
    """Sizes of the testbed model for testbed.json."""
    config = model.config
    keys = (
        "image_size",
        "patch_size",
        "num_channels",
        "hidden_size",
        "num_hidden_layers",
        "num_attention_heads",
        "intermediate_size",
        "num_local_experts",
        "num_experts_per_tok",
        "moe_layer_period",
    )
    moe_layers = [i for i in range(config.num_hidden_layers) if is_moe_layer(config, i)]
    params = sum(p.numel() for p in model.parameters())
    return {**{key: getattr(config, key) for key in keys}, "moe_layers": moe_layers, "params": params}


def build_vision_testbed(out: Path, seed: int = 0, quick: bool = False) -> dict:
    """Build the vision testbed under `out/` (replaced atomically) and return its summary.

    Args:
        out: Directory to create: `data/`, `pretrained/`, `finetuned/`, `testbed.json`.
        seed: Seed of the data split, the initialisation and the training order.
        quick: A tiny model trained on a few batches (seconds; for tests, accuracy irrelevant).

    Returns:
        The content of `testbed.json`.
    """
    size = "quick" if quick else "default"
    schedules = SCHEDULES[size]
    clock = Stopwatch()
    with clock.phase("total"), atomic_dir(Path(out)) as tmp:
        with clock.phase("data"):
            export_digits_imagefolder(tmp / "data", seed=seed)
            processor = make_image_processor()
            train_x, train_y, classes = load_pixels(tmp / "data" / "train", processor)
            val_x, val_y, _ = load_pixels(tmp / "data" / "val", processor)
            val_rot_x, val_rot_y = all_rotations(val_x)

        torch.manual_seed(seed)
        generator = torch.Generator().manual_seed(seed)
        pretrained = VMoEForImageClassification(make_config(size, 4, dict(enumerate(ROTATION_LABELS))))
        with clock.phase("pretrain"):
            pretrain_losses = train(
                pretrained,
                train_x,
                train_y,
                schedules["pretrain"],
                generator,
                make_batch=lambda x, _y, g: rotate_randomly(x, g),
                desc="pretrain (rotation)",
            )
        save_model(pretrained, processor, tmp / "pretrained")

        finetuned = finetune_model_from(pretrained, classes)
        with clock.phase("finetune"):
            finetune_losses = train(
                finetuned, train_x, train_y, schedules["finetune"], generator, desc="fine-tune (digits)"
            )
        save_model(finetuned, processor, tmp / "finetuned")

        summary = {
            "kind": "vision",
            "seed": seed,
            "quick": quick,
            "model": describe_model(finetuned),
            "data": {"train": len(train_x), "val": len(val_x), "classes": classes, "image_mode": "L"},
            "pretrain": {
                "task": "rotation (0/90/180/270 degrees), all four rotations of every val image",
                "labels": list(ROTATION_LABELS),
                "schedule": asdict(schedules["pretrain"]),
                "val_top1": round(accuracy(pretrained, val_rot_x, val_rot_y), 4),
                "epoch_loss": _rounded(torch.tensor(pretrain_losses)),
            },
            "finetune": {
                "task": "digit class (10), upright images",
                "schedule": asdict(schedules["finetune"]),
                "val_top1": round(accuracy(finetuned, val_x, val_y), 4),
                "epoch_loss": _rounded(torch.tensor(finetune_losses)),
            },
            "routing": {
                "finetuned_on_val": routing_report(finetuned, val_x, val_y),
                "pretrained_on_rotated_val": routing_report(pretrained, val_rot_x, val_rot_y),
            },
            "paths": {"data": "data", "pretrained": "pretrained", "finetuned": "finetuned"},
            "torch_threads": torch.get_num_threads(),
            "machine": machine_record(),
        }
        summary["timings"] = clock.times  # filled in as phases end; "total" is added below
        write_json(tmp / "testbed.json", summary)
    write_json(Path(out) / "testbed.json", summary)
    return summary
