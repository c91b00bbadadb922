"""What a training run costs on a GPU, estimated from its work, before anyone runs it.

One rule: GPU-seconds = 3 × forward multiply-adds per image × images processed / throughput.
- Multiply-adds are pycls's "flops" (``harness.complexity``: convs and linears, no factor 2).
- 3: a backward pass costs about two forwards.
- Images processed: steps × batch size, times the forward/backward passes per step (a
  ``step_fn`` may declare ``forward_passes``: the sandwich rule runs four subnets a step).
- Throughput: ``H100_MACS_PER_SECOND``, the one calibration constant (below).

It ignores data loading, evaluation and activations' memory traffic (which the scaling paper
shows is what bounds runtime of low-flop, high-activation nets), so read an estimate as a
planning figure to about ×2, not a measurement. Used by ``--dry-run`` (each full-profile
claim's estimated GPU time) and for the README's "Running at paper scale" table
(``paper_scale_markdown``, checked against the README by tests/test_costs.py).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from harness.data import DatasetSplits, DataSpec
from harness.train import TrainJob, cache_key

# Calibration: a ResNet-50 (4.09 GMAC at 224²) trains at about 3,200 images/s on one H100 in
# bf16 with channels_last (of the order NVIDIA's DeepLearningExamples report, data loading not
# the bottleneck): 3 × 4.09e9 × 3,200 ≈ 40 TMAC/s, about 8% of the bf16 dense peak. Small CIFAR
# nets reach a smaller share of the peak, so their estimates are optimistic.
H100_MACS_PER_SECOND = 40e12
FORWARD_BACKWARD = 3  # forward + backward ≈ 3 forwards


@dataclass(frozen=True)
class Work:
    """What one run computes: forward multiply-adds per image and images processed."""

    macs_per_image: float
    images: float  # steps × batch size × forward/backward passes per step

    def gpu_seconds(self, macs_per_second: float = H100_MACS_PER_SECOND) -> float:
        return FORWARD_BACKWARD * self.macs_per_image * self.images / macs_per_second


def job_work(job: TrainJob) -> Work:
    """The work of ``job`` at its own size (its model built once, counted at its input size)."""
    from harness.complexity import measure

    images = job.train_set[0]
    _, channels, resolution, _ = images.shape
    with torch.device("meta"):  # counted without allocating or initialising weights
        model = job.model_fn()
    macs = measure(model, resolution, channels).flops
    steps = job.cfg.total_steps(len(images))
    passes = getattr(job.step_fn, "forward_passes", 1)
    return Work(macs, steps * job.cfg.batch_size * passes)


@dataclass
class Estimate:
    """GPU-seconds per distinct run (by cache key: runs shared between claims count once)."""

    seconds: dict[str, float] = field(default_factory=dict)

    def add(self, jobs: Sequence[TrainJob]) -> Estimate:
        for job in jobs:
            self.seconds.setdefault(cache_key(job.key, code="estimate"), job_work(job).gpu_seconds())
        return self

    def merged(self, other: Estimate) -> Estimate:
        return Estimate({**self.seconds, **other.seconds})

    @property
    def runs(self) -> int:
        return len(self.seconds)

    @property
    def gpu_hours(self) -> float:
        return sum(self.seconds.values()) / 3600


def estimate(jobs: Sequence[TrainJob]) -> Estimate:
    return Estimate().add(jobs)


def placeholder_data(spec: DataSpec, resolution: int, channels: int = 3) -> DatasetSplits:
    """Splits of ``spec``'s full size and ``resolution`` holding no data (one zero image,
    expanded): enough to build a study's full-size jobs and count their work without the
    dataset (a dry run has no CIFAR)."""
    def split(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        return (torch.zeros(1, channels, resolution, resolution).expand(n, -1, -1, -1),
                torch.zeros(1, dtype=torch.long).expand(n))

    classes = {"cifar10": 10, "cifar100": 100}.get(spec.name, spec.num_classes)
    test = spec.test_size or (10_000 if spec.name != "synthetic" else 2_000)
    return DatasetSplits(split(spec.train_count), split(test), classes, resolution,
                         f"placeholder for {spec.name} at {resolution} px (no data)")


# ------------------------------------------------------------------ the papers' own scale
# Each family's published experiment, from /work/shared/CLAIMS.md and the papers: the network's
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


def placeholder_jobs(cfg: Any, cells: Iterable[Any],
                     cell_job: Callable[[Any, Any, DatasetSplits, str], TrainJob]
                     ) -> list[TrainJob]:
    """A grid study's jobs, ``cell_job(cfg, cell, data, "cpu")`` per cell, built on
    ``placeholder_data`` for ``cfg.data`` at ``cfg.resolution``: what a dry run estimates at
    full size, without loading the data or training anything."""
    data = placeholder_data(cfg.data, cfg.resolution)
    return [cell_job(cfg, cell, data, "cpu") for cell in cells]
