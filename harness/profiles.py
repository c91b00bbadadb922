"""Profiles and devices: which scale of an experiment runs, and where.

- ``smoke``: a 2-core CPU, each claim in about a minute and a half, on generated data.
- ``full``: one GPU at CIFAR scale, the whole suite in about 30 minutes on an H100.
- ``auto``: ``full`` when CUDA is available, else ``smoke``.

The device ``auto`` is CUDA when torch sees a GPU, else the CPU; but on a machine with an
NVIDIA driver (``nvidia-smi``) and a torch that sees no GPU it is an error, not the CPU.

A claim keeps one config per profile, as data; ``Profile.pick`` chooses it, and a dry run
shrinks it to one step on tiny inputs so the full profile's cells run in CI without a GPU.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

PROFILES = ("smoke", "full")
DEVICES = ("cpu", "cuda")


class UsageError(ValueError):
    """Bad input from the user (unknown profile, device, claim...)."""


class Shrinkable(Protocol):
    def dry_run(self) -> Any: ...


C = TypeVar("C")


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def nvidia_driver_present() -> bool:
    """Whether this machine has an NVIDIA driver: ``nvidia-smi`` is on PATH (what the noxfile
    reads to call it a GPU box)."""
    import shutil

    return shutil.which("nvidia-smi") is not None


def resolve_profile(name: str, *, cuda: bool | None = None) -> str:
    """``smoke``/``full`` as given; ``auto`` picks ``full`` with CUDA, ``smoke`` without."""
    if name == "auto":
        return "full" if (cuda_available() if cuda is None else cuda) else "smoke"
    if name not in PROFILES:
        raise UsageError(f"unknown profile {name!r}; choose one of: {', '.join(PROFILES)}, auto")
    return name


def resolve_device(name: str, *, cuda: bool | None = None, driver: bool | None = None) -> str:
    """``cpu``/``cuda`` as given (``cuda`` must exist); ``auto`` prefers CUDA.

    On a machine with an NVIDIA driver (``driver``; default: ``nvidia-smi`` on PATH) whose torch
    sees no GPU, ``auto`` is an error rather than the CPU: a broken CUDA install must not quietly
    run ``--profile full`` (or anything meant for the GPU) on the CPU. The CPU there is for who
    asks for it: ``--device cpu`` (a dry run never resolves the device: it runs on the CPU)."""
    has_cuda = cuda_available() if cuda is None else cuda
    if name not in (*DEVICES, "auto"):
        raise UsageError(f"unknown device {name!r}; choose one of: {', '.join(DEVICES)}, auto")
    if has_cuda:
        return "cuda" if name == "auto" else name
    if name == "cpu":
        return name
    has_driver = nvidia_driver_present() if driver is None else driver
    if name == "auto" and not has_driver:
        return "cpu"
    raise UsageError(no_gpu_message(f"--device {name}", has_driver))


def no_gpu_message(asked: str, driver: bool) -> str:
    """One true line on why ``asked`` cannot run: torch sees no GPU, and whether the machine
    has an NVIDIA driver (``nvidia-smi`` on PATH) at all."""
    import torch

    seen = f"torch {torch.__version__} (CUDA build: {torch.version.cuda}) sees no GPU"
    if not driver:
        return (f"{asked}: this machine has no NVIDIA driver (nvidia-smi not found) and {seen}; "
                f"run without --device for the smoke profile on the CPU")
    return (f"{asked}: this machine has an NVIDIA driver (nvidia-smi is on PATH) but {seen}, so "
            f"the run would fall back to the CPU; install a torch CUDA build that matches the "
            f"driver (README, 'On a GPU'), or ask for the CPU explicitly: --device cpu "
            f"(or --dry-run)")


@dataclass(frozen=True)
class Profile:
    """The profile a run uses: its name, the device, and whether it is a dry run."""

    name: str
    device: str
    dry_run: bool = False

    def pick(self, configs: Mapping[str, C]) -> C:
        """This profile's config from ``{"smoke": ..., "full": ...}``; shrunk on a dry run."""
        try:
            config = configs[self.name]
        except KeyError:
            raise UsageError(f"this claim defines no {self.name!r} profile") from None
        return config.dry_run() if self.dry_run else config  # type: ignore[attr-defined]

    @property
    def use_cache(self) -> bool:
        """Whether training runs may come from (and go to) the cache: a dry run trains each job
        for one step, a record that must never be stored or reused. (``--no-cache`` points the
        cache at a fresh folder instead, so claims sharing a run still train it once.)"""
        return not self.dry_run

    def unshrunk(self, configs: Mapping[str, C]) -> C:
        """This profile's config as defined, never shrunk: what a dry run's estimate prices."""
        return dataclasses.replace(self, dry_run=False).pick(configs)

    @property
    def device_class(self) -> str:
        """``cpu`` or ``cuda-<device name>``: the key under which references are stored."""
        return device_class(self.device)


def device_class(device: str) -> str:
    if device == "cpu":
        return "cpu"
    import torch

    name = torch.cuda.get_device_name(0)
    return "cuda-" + "".join(ch if ch.isalnum() else "-" for ch in name).strip("-").lower()
