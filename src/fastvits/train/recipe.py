"""Training recipes as data: optimisation and augmentation hyper-parameters, one frozen dataclass per preset.

The defaults of `Recipe` are the FasterViT ImageNet-1k recipe (the official YAML configs of FasterViT-0; see
`shared/research/fastervit_reference.md` section 4). Other presets are `dataclasses.replace` of it, so a
preset states only how it differs. The command line exposes every field as an override flag
(`--lr-base`, `--mixup`, ...), generated from the field list, so adding a field here is all it takes.

Learning rates follow timm's convention: the rate actually used is `lr_base * global_batch / lr_base_size`,
which keeps a recipe meaningful when the number of processes or the batch size changes.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

__all__ = ["PRESETS", "Recipe", "scaled_lr"]


def _opt(help_text: str, default: Any) -> Any:
    """A field with its command-line help attached, so the flag generator needs no second list."""
    return field(default=default, metadata={"help": help_text})


@dataclass(frozen=True)
class Recipe:
    """Optimisation and augmentation settings of one training run (defaults: FasterViT ImageNet-1k)."""

    # schedule
    epochs: int = _opt("training epochs, cosine-decayed after the warm-up; --cooldown-epochs more at min_lr "
                       "follow, so the fastervit preset with --epochs 2 trains 12", 310)
    warmup_epochs: float = _opt("linear warm-up length in epochs (fractions allowed)", 20.0)
    cooldown_epochs: int = _opt("epochs at min_lr after the cosine decay", 10)
    lr_base: float = _opt("learning rate for a global batch of lr_base_size (scaled linearly)", 5e-3)
    lr_base_size: int = _opt("global batch size that lr_base refers to", 4096)
    warmup_lr: float = _opt("learning rate at the start of the warm-up", 1e-6)
    min_lr: float = _opt("learning rate at the end of the cosine decay", 5e-6)
    # optimiser
    opt: str = _opt("timm optimizer name (adamw, lamb, sgd, ...)", "adamw")
    weight_decay: float = _opt("decoupled weight decay (biases, norms and no_weight_decay() excluded)", 0.05)
    layer_decay: float | None = _opt("layer-wise lr decay for fine-tuning, e.g. 0.75 (none: off)", None)
    clip_grad: float | None = _opt("clip the gradient norm to this value (none: off)", 5.0)
    # regularisation
    smoothing: float = _opt("label smoothing", 0.1)
    drop_path: float = _opt("stochastic depth rate passed to the model as drop_path_rate", 0.2)
    ema_decay: float | None = _opt("EMA decay of the weights (none: no EMA)", 0.9998)
    mixup: float = _opt("mixup alpha (0: off)", 0.8)
    cutmix: float = _opt("cutmix alpha (0: off)", 1.0)
    mixup_prob: float = _opt("probability of applying mixup or cutmix to a batch", 1.0)
    mixup_switch_prob: float = _opt("probability of cutmix instead of mixup when both are on", 0.5)
    # augmentation
    auto_augment: str | None = _opt("timm auto-augment policy (none: off)", "rand-m9-mstd0.5-inc1")
    scale: tuple[float, float] = _opt("RandomResizedCrop area range", (0.08, 1.0))
    ratio: tuple[float, float] = _opt("RandomResizedCrop aspect-ratio range", (3 / 4, 4 / 3))
    hflip: float = _opt("horizontal flip probability", 0.5)
    color_jitter: float = _opt("colour jitter strength (timm turns it off when auto_augment is set)", 0.4)
    train_interpolation: str = _opt("resize interpolation for training crops (random: pick per image)", "random")
    re_prob: float = _opt("random erasing probability", 0.25)
    re_mode: str = _opt("random erasing fill: const, rand or pixel", "pixel")


# Fashion-MNIST on a 2-core CPU in minutes: 28x28 grey images need gentle crops and no colour or mixing
# augmentation, and a few epochs are too short for an EMA with a long horizon.
_FASHION_MNIST = Recipe(
    epochs=4, warmup_epochs=0.3, cooldown_epochs=0, lr_base=2e-3, lr_base_size=128, min_lr=1e-5,
    drop_path=0.05, ema_decay=None, mixup=0.0, cutmix=0.0, auto_augment=None, scale=(0.7, 1.0),
    ratio=(0.8, 1.25), color_jitter=0.0, train_interpolation="bilinear", re_prob=0.0,
)

PRESETS: dict[str, Recipe] = {
    "fastervit": Recipe(),
    # Transfer from ImageNet weights to a new dataset: short, low lr; layer-wise decay protects early stages.
    "finetune": Recipe(
        epochs=30, warmup_epochs=2.0, cooldown_epochs=0, lr_base=1e-3, lr_base_size=1024, min_lr=1e-6,
        layer_decay=0.75, drop_path=0.1, ema_decay=None, mixup=0.2, cutmix=0.0, re_prob=0.0,
    ),
    "fashion-mnist": _FASHION_MNIST,
    # No augmentation, regularisation or clipping: runs can be compared step for step (tests, debugging).
    "plain": replace(
        _FASHION_MNIST, epochs=1, warmup_epochs=0.0, drop_path=0.0, smoothing=0.0, scale=(1.0, 1.0),
        ratio=(1.0, 1.0), hflip=0.0, clip_grad=None,
    ),
}


def scaled_lr(recipe: Recipe, global_batch: int) -> float:
    """The learning rate for `global_batch` under the linear scaling rule."""
    return recipe.lr_base * global_batch / recipe.lr_base_size
