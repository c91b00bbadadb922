"""The papers' own scale, priced: each family's published experiment in H100 GPU-hours by the
cost model's rate (``harness.costs``). ``python -m harness.paper_scale`` prints the README's
"Running at paper scale" table.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from harness.costs import Work

# Each family's published experiment, from claims/README.md and the papers: the network's
# multiply-adds at its resolution, the dataset size, epochs, and how many full training runs
# the claims need. "runs" counts networks × settings × seeds; a setting that trains longer
# counts as more runs (RigL-ITOP 2× steps = 2). Where the paper does not say, the row says
# what is assumed.

IMAGENET_TRAIN = 1_281_167
COCO_TRAIN = 118_287


@dataclass(frozen=True)
class PaperRun:
    family: str
    setup: str  # what is trained, in words (with the assumptions)
    gmacs: float  # forward multiply-adds per image (G), at the paper's resolution
    images: int  # training images per epoch
    epochs: int
    runs: float  # full training runs of that network the family's claims need

    @property
    def work(self) -> Work:
        return Work(self.gmacs * 1e9, self.images * self.epochs * self.runs)

    @property
    def gpu_hours(self) -> float:
        return self.work.gpu_seconds() / 3600


PAPER_RUNS = (
    PaperRun("scaling", "EfficientNet-B0, RegNetY-500MF, RegNetZ-500MF scaled to 4GF and 16GF by "
             "dwr, dWr and w (18 nets, mean ≈ 10 GMAC) plus the 3 bases (≈ 0.45 GMAC); "
             "ImageNet 224² → scaled r, 100 epochs (pycls), 1 seed",
             gmacs=(18 * 10 + 3 * 0.45) / 21, images=IMAGENET_TRAIN, epochs=100, runs=21),
    PaperRun("agc", "NF-ResNet-50 (4.1 GMAC) without and with AGC at λ ∈ {0.01 … 0.16}, and "
             "BN-ResNet-50, at batch 256 … 4096 (5 sizes × 7 = 35 runs); ImageNet 224², "
             "90 epochs (assumed), 1 seed",
             gmacs=4.1, images=IMAGENET_TRAIN, epochs=90, runs=35),
    PaperRun("itop", "ResNet-50 (4.1 GMAC; masks do not save dense-kernel time): dense, and at "
             "80% and 90% static, RigL, RigL-ITOP, RigL-ITOP 2× steps (1 + 2 × 5 = 11 "
             "runs); ImageNet 224², 100 epochs, 1 seed",
             gmacs=4.1, images=IMAGENET_TRAIN, epochs=100, runs=11),
    PaperRun("decompose", "YOLOv5x (103 GMAC at 640²) trained once, then decomposed and "
             "fine-tuned (assumed 10% of the training again); COCO 118k images, 300 epochs",
             gmacs=103, images=COCO_TRAIN, epochs=300, runs=1.1),
    PaperRun("nasvit", "NASViT and AlphaNet supernets, naive and projected sandwich (4 supernets, "
             "each step the largest ≈ 0.76, smallest ≈ 0.2 and 2 random ≈ 0.45 GMAC subnets = "
             "1.86 GMAC), plus 2 subnets trained alone (≈ 0.3 GMAC, counted as 0.16 of a "
             "sandwich run each); ImageNet 224², 360 epochs",
             gmacs=1.86, images=IMAGENET_TRAIN, epochs=360, runs=4 + 2 * 0.16),
)


def paper_scale_markdown(runs: Sequence[PaperRun] = PAPER_RUNS) -> str:
    """The README's table: GPU-hours per family on one H100 at ``H100_MACS_PER_SECOND``."""
    lines = ["| family | what the paper trains | GMAC/image | images × epochs | runs | "
             "H100 GPU-hours |", "| --- | --- | ---: | ---: | ---: | ---: |"]
    for r in runs:
        lines.append(f"| {r.family} | {r.setup} | {r.gmacs:.3g} | {r.images:,} × {r.epochs} | "
                     f"{r.runs:g} | {_hours(r.gpu_hours)} |")
    total = sum(r.gpu_hours for r in runs)
    lines.append(f"| **all** | | | | | **{_hours(total)}** |")
    return "\n".join(lines)


def _hours(h: float) -> str:
    """Two significant figures: the model is good to about ×2, no more."""
    if h <= 0:
        return "0"
    digits = max(0, 1 - int(math.floor(math.log10(h))))
    return f"{round(h, digits):,.{digits}f}"


if __name__ == "__main__":
    print(paper_scale_markdown())


if __name__ == "__main__":
    print(paper_scale_markdown())
