"""Where and how a job's tensors run: its device (resolved and checked), seeds, bfloat16 autocast and
memory format, as one value that the loaders, the feature pass and the training loop share; the loaders
of a run's splits; and the stopwatch of where a job's time goes."""
from __future__ import annotations

import contextlib
import random
import time
from dataclasses import dataclass
from typing import Iterable, NamedTuple

import numpy as np
import torch

from .errors import ConfigError


def autocast(device: torch.device, bf16: bool):
    # bf16 needs no loss scaling, unlike fp16; on the CPU autocast would be slower, not faster
    if bf16 and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    bf16: bool = False  # bfloat16 autocast; `of` keeps it only on CUDA
    channels_last: bool = False  # NHWC tensors and model

    @classmethod
    def of(cls, device: torch.device, bf16: bool, channels_last: bool) -> "Runtime":
        return cls(device, bool(bf16) and device.type == "cuda", bool(channels_last))

    def autocast(self):
        return autocast(self.device, self.bf16)

    def put(self, x: torch.Tensor) -> torch.Tensor:
        """A batch on the device, in the model's memory format."""
        x = x.to(self.device, non_blocking=True)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last and x.dim() == 4 else x


CPU = Runtime(torch.device("cpu"))


class Loaders(NamedTuple):
    """Batches (x, y) of each split a run reads: images or cached features, whichever the run uses."""
    train: Iterable
    val: Iterable
    select: Iterable | None = None  # held out of train for model selection, when the data has one


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    """`auto`: CUDA, then MPS, then the CPU. A device asked for by name must be there."""
    cuda, mps = torch.cuda.is_available(), torch.backends.mps.is_available()
    found = ", ".join(["cpu", *([f"cuda (x{torch.cuda.device_count()})"] if cuda else []), *(["mps"] if mps else [])])
    if name == "auto":
        return torch.device("cuda" if cuda else "mps" if mps else "cpu")
    device = torch.device(name)
    present = {"cpu": True, "cuda": cuda and (device.index or 0) < torch.cuda.device_count(), "mps": mps}
    if not present.get(device.type, False):
        raise ConfigError(f"device={name}: not on this machine (found: {found}); use device=auto or device=cpu")
    return device


class Stopwatch:
    """Seconds per part of a job (`with clock("data"): ...`), for the record of where its time goes.

    On CUDA it waits for the device at the end of each part, so that queued kernels count
    where they were launched; one sync per part, never per step.
    """

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self.device: torch.device | None = None

    @contextlib.contextmanager
    def __call__(self, part: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            if self.device is not None and self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            self.seconds[part] = self.seconds.get(part, 0.0) + time.perf_counter() - t0
