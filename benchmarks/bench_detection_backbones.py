"""Detection backbones at detection input sizes: FasterViT and LITv2 against timm's Swin-T and ConvNeXt-T.

The same measurement as `fastvits bench detection` (see `fastvits.downstream.bench`): each backbone's
four-level pyramid (with `--neck fpn`, also the 256-channel FPN of the R-CNN detectors), all models
round-robin on one input per size, samples taken while other processes kept more than `--max-load` cores
busy left out. Writes NAME.csv (timm's benchmark columns), NAME.json and NAME.png to `--out`.

    python benchmarks/bench_detection_backbones.py --threads 2 --out results/detection_backbones
    python benchmarks/bench_detection_backbones.py --neck fpn --threads 2 --out results/detection_backbones_fpn
    python benchmarks/bench_detection_backbones.py --device cuda --out results/detection_backbones_gpu
    python benchmarks/bench_detection_backbones.py fastervit_0_any_res convnext_atto --img-size 256x416 \\
        --rounds 1 --warmup 1                                                    # quick smoke run
"""

from __future__ import annotations

import argparse
import sys

from fastvits.downstream.bench import add_arguments, run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 2)[2],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
