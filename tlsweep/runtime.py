"""Where and how a job's tensors run: its device (resolved and checked), seeds, bfloat16 autocast (where the
device has native bf16 units) and memory format, as one value that the loaders, the feature pass and the
training loop share; the loaders of a run's splits; and the stopwatch of where a job's time goes."""
from __future__ import annotations

import contextlib
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, NamedTuple

import numpy as np
import torch
from torch import nn

from .config.errors import ConfigError


def autocast(device: torch.device, bf16: bool):
    """bfloat16 autocast on `device` when `bf16` (a choice `resolve_bf16` made), else nothing.

    Autocast runs the matmul-like ops (convolutions, linear layers, attention) in bf16; parameters, their
    gradients and the optimizer's state stay fp32, as do BatchNorm's running statistics (fp32 buffers), and
    LayerNorm and the loss run in fp32 (checked on the CPU: BatchNorm itself normalizes the bf16 activations it
    gets). tlsweep adds two casts of its own: the loss is taken on fp32 logits, and cached features are stored in
    fp32 (features/cache.py), and on the CPU a depthwise conv that backpropagates runs in fp32
    (`train_depthwise_in_fp32`). bf16 keeps fp32's exponent range, so unlike fp16 it needs no loss scaling.
    """
    if bf16:
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


# oneDNN's native bf16 kernels on x86 (its avx512_core_amx and avx512_core_bf16 ISAs), by the names
# torch.cpu.get_capabilities() and /proc/cpuinfo give them. A CPU without them still runs bf16, emulated in fp32
# with conversions around it (torch's mkldnn "bf16 support" counts AVX-512BW as enough): slower than fp32.
CPU_BF16_UNITS = ("amx_bf16", "avx512_bf16")
CPUINFO = Path("/proc/cpuinfo")  # where neither torch API is there (Linux)


def cpu_bf16_units() -> tuple[str, ...]:
    """Which of CPU_BF16_UNITS this CPU has, as torch's cpuinfo sees them; /proc/cpuinfo where torch cannot say."""
    caps = getattr(torch.cpu, "get_capabilities", None)  # newer torch: cpuinfo's flags by name
    if caps is not None:
        found = caps()
        return tuple(u for u in CPU_BF16_UNITS if found.get(u))
    probes = {"amx_bf16": "_is_amx_tile_supported", "avx512_bf16": "_is_avx512_bf16_supported"}  # torch >= 2.2
    if all(hasattr(torch.cpu, p) for p in probes.values()):
        # AMX tiles never ship without AMX-BF16: every Intel CPU with AMX (Sapphire Rapids on) has both
        return tuple(u for u, p in probes.items() if getattr(torch.cpu, p)())
    try:
        flags = {f for line in CPUINFO.read_text().splitlines() if line.startswith("flags")
                 for f in line.split(":", 1)[1].split()}
    except OSError:
        return ()
    return tuple(u for u in CPU_BF16_UNITS if u in flags)


def cuda_bf16(device: torch.device) -> bool:
    """Native bf16 on this CUDA device (compute capability 8.0 on, or ROCm's), not the emulation of older GPUs."""
    with torch.cuda.device(device):
        try:
            return torch.cuda.is_bf16_supported(including_emulation=False)
        except TypeError:  # a torch without the argument did not count emulation
            return torch.cuda.is_bf16_supported()


@dataclass(frozen=True)
class Precision:
    """Whether a job autocasts to bfloat16, and why: `str()` is its `tlsweep.fast.bf16` tag and what it prints."""

    bf16: bool
    why: str

    def __str__(self) -> str:
        return f"{'on' if self.bf16 else 'off'} ({self.why})"


def resolve_bf16(setting: bool | str, device: torch.device) -> Precision:
    """The config's `bf16` (true, false or auto) on `device`. auto: on where the device has native bf16 units
    (CUDA with native bf16; a CPU with AMX-BF16 or AVX512-BF16), off elsewhere; true where it has none: a
    ConfigError. MPS is off: tlsweep has not measured autocast there. `str()` of the result says which and why."""
    if setting is False:
        return Precision(False, "bf16=false")
    if device.type == "cuda":
        units, none = ("cuda native bf16", None) if cuda_bf16(device) else (None, "cuda: no native bf16, needs "
                                                                                 "compute capability 8.0 or later")
    elif device.type == "cpu":
        found = cpu_bf16_units()
        units, none = (f"cpu {'+'.join(found)}", None) if found else (None, "cpu: no bf16 units")
    else:
        units, none = None, f"{device.type}: not measured with tlsweep"
    if setting == "auto":
        return Precision(units is not None, units or none)
    if units is None:
        raise ConfigError(f"bf16=true: device {device} cannot run it ({none}); tlsweep runs bf16 on CUDA with "
                          f"compute capability 8.0 or later and on CPUs with {' or '.join(CPU_BF16_UNITS)}; use "
                          "bf16=auto or bf16=false")
    return Precision(True, f"bf16=true, {units}")


class _Fp32TrainedDepthwise:
    """Mixed into a depthwise conv's class by `train_depthwise_in_fp32`: under CPU autocast, when a backward will
    pass through it (grad mode on, and its input or its weight needs a gradient), it runs in fp32; otherwise
    (inference, the feature pass, a frozen conv below everything that trains) as autocast says. Its class keeps
    the conv's own as `plain_class`, for code that asks what a conv is (features/fold.py's BatchNorm fold)."""

    plain_class: type

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad)
                and torch.is_autocast_enabled("cpu")):
            with torch.autocast("cpu", enabled=False):
                return super().forward(x.float())
        return super().forward(x)


_FP32_TRAINED: dict[type, type] = {}


def train_depthwise_in_fp32(model: nn.Module, rt: "Runtime") -> int:
    """Under bf16 on the CPU, let the model's depthwise convolutions train in fp32; returns how many.

    oneDNN's bf16 depthwise convolution trains slower than its fp32 one (forward + backward), above all with 5x5
    kernels and stride 2, so much slower that EfficientNet-Lite0 trained slower in bf16 than in fp32; its bf16
    forward is faster with them in bf16, so inference keeps them there. `benchmarks/depthwise.py` measures both
    (docs/speed.md, "Depthwise convolutions train in fp32 under CPU bf16"). CUDA is unchanged.
    """
    if not (rt.bf16 and rt.device.type == "cpu"):
        return 0
    n = 0
    for m in model.modules():
        if isinstance(m, nn.Conv2d) and m.groups > 1 and m.groups == m.in_channels and \
                not isinstance(m, _Fp32TrainedDepthwise):
            cls = type(m)
            if cls not in _FP32_TRAINED:
                _FP32_TRAINED[cls] = type(cls.__name__, (_Fp32TrainedDepthwise, cls),
                                          {"__module__": cls.__module__, "plain_class": cls})
            m.__class__ = _FP32_TRAINED[cls]
            n += 1
    return n


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    bf16: bool = False  # bfloat16 autocast: what `resolve_bf16` decided for this device
    channels_last: bool = False  # NHWC tensors and model

    @classmethod
    def of(cls, device: torch.device, bf16: bool, channels_last: bool) -> "Runtime":
        return cls(device, bool(bf16), bool(channels_last))

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
        self._started = time.perf_counter()

    def elapsed(self) -> float:
        """Seconds since the stopwatch was made."""
        return time.perf_counter() - self._started

    @contextlib.contextmanager
    def __call__(self, part: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            if self.device is not None and self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            self.seconds[part] = self.seconds.get(part, 0.0) + time.perf_counter() - t0
