"""Where and how a job's tensors run: its device, bfloat16 autocast and memory format, as one value
that the loaders, the feature pass and the training loop share."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

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
