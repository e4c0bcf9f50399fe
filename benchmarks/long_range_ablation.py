"""Long-range ablation: which 2-D attention layer lets a tiny network relate two far-apart regions?

Task (synthetic, generated on the fly): a 32 x 32 noisy image holds two 4 x 4 patterns, each one of two
random +-1 patterns, one in the left half and one in the right half, each at a random position of the
4-pixel patch grid. The label is whether the two patterns are the same: the XOR of two far-apart bits.
(With a bank of 4 or 8 patterns none of the variants left chance level within a few minutes of training.)
With 4 x 4 patches the map is 8 x 8 tokens, and with 2 x 2-token windows (a 4 x 4 grid of windows) the two
patterns never share a window: a network whose tokens only mix inside windows cannot solve the task (its pooled,
linearly classified features are a sum of per-window terms, and "same" cannot be written as g(left) + g(right) > 0),
so it stays at chance (50%).

Model: the same tiny backbone for every variant: a 4 x 4 patch-embedding conv with a learned position
embedding, `--depth` pre-norm blocks (attention layer from `fastvits.layers.create_attention2d`, then an
MLP), a final LayerNorm, mean pooling and a linear classifier. Only the attention layer changes:
- window: Swin window attention, window 2, no shift (window-only: no path between windows);
- hat: HAT (FasterViT), window 2, one carrier token per window, attention-only HAT block (the layer's
  defaults: no absolute position MLPs, the network has its own position embedding). HAT blocks are
  residual, so the block uses it as `x = hat(x)` instead of `x + attn(norm(x))`;
- hat_pos_mlp (optional): the same with FasterViT's absolute position MLPs in every block (`pos_embed=True`);
- hilo: HiLo (LITv2), window 2, alpha 0.9;
- global: global multi-head attention;
- sra (optional): PVT spatial-reduction attention, sr_ratio 2.
All variants train for the same number of steps on the same data stream from the same seed, with AdamW and
a cosine schedule, single process, `--threads` threads; accuracy is measured on a held-out set from
another seed.

Usage:
    OMP_NUM_THREADS=2 python benchmarks/long_range_ablation.py --out results/long_range_ablation
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from timm.layers import Mlp, trunc_normal_
from torch import nn

from fastvits.bench.measure import machine_info
from fastvits.layers import create_attention2d

# the attention layer of each variant: (registry kind, constructor arguments)
VARIANTS: dict[str, tuple[str, dict]] = {
    "window": ("window", {"window_size": 2}),
    "hat": ("hat", {"window_size": 2, "ct_size": 1}),
    "hat_pos_mlp": ("hat", {"window_size": 2, "ct_size": 1, "pos_embed": True}),
    "hilo": ("hilo", {"window_size": 2, "alpha": 0.9}),
    "global": ("global", {}),
    "sra": ("sra", {"sr_ratio": 2}),
}


@dataclass
class Task:
    """The synthetic same-or-different task."""

    image: int = 32  # image side in pixels
    patch: int = 4  # patch side of the stem (one token = 4 x 4 pixels)
    pattern: int = 4  # pattern side in pixels
    bank: int = 2  # number of distinct patterns: with 2, "same" is the XOR of two far-apart bits
    noise: float = 0.3  # std of the Gaussian background
    seed: int = 0

    def patterns(self) -> torch.Tensor:
        gen = torch.Generator().manual_seed(self.seed)
        return torch.randint(0, 2, (self.bank, self.pattern, self.pattern), generator=gen).float() * 2 - 1

    def sample(self, n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """n images (n, 1, S, S) and labels (n,): 1 if the left and right patterns are the same."""
        bank = self.patterns()
        S, p, half = self.image, self.pattern, self.image // 2
        y = torch.randint(0, 2, (n,), generator=gen)
        left = torch.randint(0, self.bank, (n,), generator=gen)
        other = (left + torch.randint(1, self.bank, (n,), generator=gen)) % self.bank
        right = torch.where(y.bool(), left, other)
        steps = lambda hi: torch.randint(0, hi // self.patch + 1, (n,), generator=gen) * self.patch
        rows_l, rows_r = steps(S - p), steps(S - p)
        cols_l, cols_r = steps(half - p), half + steps(half - p)
        x = torch.randn(n, 1, S, S, generator=gen) * self.noise
        for i in range(n):
            x[i, 0, rows_l[i] : rows_l[i] + p, cols_l[i] : cols_l[i] + p] += bank[left[i]]
            x[i, 0, rows_r[i] : rows_r[i] + p, cols_r[i] : cols_r[i] + p] += bank[right[i]]
        return x, y


class Block(nn.Module):
    """Pre-norm block: attention layer, then MLP; a residual attention layer (HAT) brings its own norm."""

    def __init__(self, kind: str, dim: int, heads: int, mlp_ratio: float, layer_kwargs: dict) -> None:
        super().__init__()
        self.attn = create_attention2d(kind, dim, heads, channels_last=True, **layer_kwargs)
        self.norm1 = nn.Identity() if self.attn.residual else nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, H, W, C)."""
        x = self.attn(x) if self.attn.residual else x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class TinyNet(nn.Module):
    def __init__(self, kind: str, layer_kwargs: dict, task: Task, dim: int, heads: int, depth: int, mlp_ratio: float):
        super().__init__()
        side = task.image // task.patch
        self.stem = nn.Conv2d(1, dim, task.patch, task.patch)  # non-overlapping: no mixing between windows
        self.pos = nn.Parameter(torch.zeros(1, side, side, dim))
        trunc_normal_(self.pos, std=0.02)
        self.blocks = nn.Sequential(*[Block(kind, dim, heads, mlp_ratio, layer_kwargs) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x).permute(0, 2, 3, 1) + self.pos  # (B, H/p, W/p, C)
        x = self.blocks(x)
        return self.head(self.norm(x).mean((1, 2)))  # per-token norm, mean pool, linear: (B, 2)


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 500) -> float:
    model.eval()
    correct = sum((model(x[i : i + batch]).argmax(1) == y[i : i + batch]).sum().item() for i in range(0, len(x), batch))
    model.train()
    return correct / len(x)


def train_variant(name: str, task: Task, test: tuple[torch.Tensor, torch.Tensor], args: argparse.Namespace) -> dict:
    kind, layer_kwargs = VARIANTS[name]
    torch.manual_seed(args.seed)
    model = TinyNet(kind, layer_kwargs, task, args.dim, args.heads, args.depth, args.mlp_ratio)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.05)
    warmup = max(1, args.steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, args.steps) / args.steps))
    )
    gen = torch.Generator().manual_seed(args.seed + 1000)  # the same training stream for every variant
    losses, data_s = [], 0.0
    start = time.perf_counter()
    for step in range(args.steps):
        t = time.perf_counter()
        x, y = task.sample(args.batch_size, gen)
        data_s += time.perf_counter() - t
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        if (step + 1) % max(1, args.steps // 10) == 0:
            print(f"  {name} step {step + 1}/{args.steps} loss {sum(losses[-50:]) / len(losses[-50:]):.3f}", flush=True)
    train_s = time.perf_counter() - start
    result = {
        "variant": name,
        "layer": kind,
        "layer_kwargs": layer_kwargs,
        "params": sum(p.numel() for p in model.parameters()),
        "steps": args.steps,
        "train_s": train_s,
        "data_s": data_s,
        "ms_per_step": 1e3 * (train_s - data_s) / args.steps,
        "final_train_loss": sum(losses[-100:]) / len(losses[-100:]),
        "test_acc": accuracy(model, *test),
    }
    print(f"{name}: test accuracy {result['test_acc']:.3f}, {train_s:.0f} s, {result['params']} params", flush=True)
    return result


def markdown(results: list[dict], args: argparse.Namespace, machine: dict) -> str:
    lines = [
        "| variant | attention layer | params | test accuracy | train time (s) | ms / step (model) |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in results:
        kwargs = ", ".join(f"{k}={v}" for k, v in r["layer_kwargs"].items())
        lines.append(
            f"| {r['variant']} | {r['layer']}({kwargs}) | {r['params']:,} | {r['test_acc']:.3f} | "
            f"{r['train_s']:.0f} | {r['ms_per_step']:.0f} |"
        )
    lines.append("")
    lines.append(
        f"{args.steps} steps x batch {args.batch_size}, dim {args.dim}, {args.heads} heads, depth {args.depth}, "
        f"held-out set {args.test_size}, seed {args.seed}; {machine['cpu']}, {machine['torch_threads']} threads, "
        f"torch {machine['torch']}, Python {platform.python_version()}."
    )
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=["window", "hat", "hilo", "global"])
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("-b", "--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--dim", type=int, default=32)
    p.add_argument("--heads", type=int, default=2)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--mlp-ratio", type=float, default=2.0)
    p.add_argument("--test-size", type=int, default=2000)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("results/long_range_ablation"))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    task = Task(seed=args.seed)
    test = task.sample(args.test_size, torch.Generator().manual_seed(args.seed + 2000))
    results = [train_variant(name, task, test, args) for name in args.variants]
    machine = machine_info("cpu")
    args.out.mkdir(parents=True, exist_ok=True)
    table = markdown(results, args, machine)
    (args.out / "results.md").write_text(table)
    (args.out / "results.json").write_text(
        json.dumps({"task": asdict(task), "args": vars(args) | {"out": str(args.out)}, "machine": machine,
                        "results": results}, indent=1) + "\n"
    )
    print(table)


if __name__ == "__main__":
    main()
