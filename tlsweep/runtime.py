"""Where and how a job's tensors run: its device, bfloat16 autocast and memory format, as one value
that the loaders, the feature pass and the training loop share; and the loaders of a run's splits."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterable, NamedTuple

import torch


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
