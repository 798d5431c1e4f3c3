"""Why bf16 trains EfficientNet-Lite0 slower than fp32 on the CPU, and what tlsweep does about it.

Two measurements, batch 32, 224 px, channels_last, on the CPU (one thread pool: torch's default):

1. Each distinct depthwise convolution of EfficientNet-Lite0 (its channels, kernel, stride and input size, as
   a 224-px forward meets them) alone: forward + backward, fp32 against bf16 autocast (its input already bf16,
   as autocast's previous layer leaves it).
2. Whole train steps (forward, cross-entropy, backward, AdamW step) and eval forwards, per image, for
   depthwise-conv models (EfficientNet-Lite0, MobileNetV3-Large; random init): fp32, bf16 autocast, and bf16 with
   the depthwise convs in fp32 where they backpropagate (tlsweep.runtime.train_depthwise_in_fp32: what a
   tlsweep job does under bf16 on the CPU). The modes alternate, twice over, and the faster of the two counts.

    python benchmarks/depthwise.py --out benchmarks/results/depthwise.json

It needs a CPU with AMX-BF16 or AVX512-BF16 (elsewhere bf16 is emulated, and tlsweep's bf16=auto is off).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from tlsweep.runtime import Runtime, cpu_bf16_units, train_depthwise_in_fp32  # noqa: E402
from tlsweep.training.loop import tune_allocator  # noqa: E402

BATCH, SIZE = 32, 224
MODELS = ("efficientnet_lite0", "mobilenetv3_large_100")
MODES = ("fp32", "bf16", "bf16, depthwise fp32")


def timed(fn, repeat: int) -> float:
    """Seconds per call, after one untimed call."""
    fn()
    t0 = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - t0) / repeat


def depthwise_shapes(model: nn.Module) -> list[dict]:
    """Each distinct depthwise conv a 224-px forward meets: channels, kernel, stride, input side, and how many."""
    seen: dict[tuple, int] = {}

    def count(m: nn.Conv2d, args: tuple) -> None:
        key = (m.in_channels, m.kernel_size[0], m.stride[0], args[0].shape[-1])
        seen[key] = seen.get(key, 0) + 1

    hooks = [m.register_forward_pre_hook(count) for m in model.modules()
             if isinstance(m, nn.Conv2d) and m.groups == m.in_channels > 1]
    with torch.no_grad():
        model(torch.randn(1, 3, SIZE, SIZE))
    for h in hooks:
        h.remove()
    return [{"channels": c, "kernel": k, "stride": s, "side": h, "count": n} for (c, k, s, h), n in seen.items()]


def conv_row(shape: dict, repeat: int) -> dict:
    c, k, s = shape["channels"], shape["kernel"], shape["stride"]
    conv = nn.Conv2d(c, c, k, stride=s, padding=k // 2, groups=c, bias=False).to(memory_format=torch.channels_last)
    out = {}
    for mode, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        x = torch.randn(BATCH, c, shape["side"], shape["side"]).to(dtype).contiguous(
            memory_format=torch.channels_last).requires_grad_()

        def step():
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
                y = conv(x)
            y.backward(torch.ones_like(y))
        out[mode] = 1000 * timed(step, repeat)
    return {**shape, "fp32_ms": out["fp32"], "bf16_ms": out["bf16"], "bf16_speedup": out["fp32"] / out["bf16"]}


def model_modes(arch: str, rounds: int, repeat: int) -> dict:
    import timm

    x = torch.randn(BATCH, 3, SIZE, SIZE).contiguous(memory_format=torch.channels_last)
    y = torch.arange(BATCH) % 10
    best: dict[str, dict] = {}
    for _ in range(rounds):
        for mode in MODES:
            torch.manual_seed(0)
            net = timm.create_model(arch, pretrained=False, num_classes=10).to(memory_format=torch.channels_last)
            bf16 = mode != "fp32"
            converted = train_depthwise_in_fp32(net, Runtime(torch.device("cpu"), True, True)) \
                if mode == "bf16, depthwise fp32" else 0
            opt = torch.optim.AdamW(net.parameters(), 1e-3)

            def step():
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                    loss = nn.functional.cross_entropy(net(x).float(), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()

            @torch.no_grad()
            def forward():
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                    net(x)

            net.train()
            train = 1000 * timed(step, repeat) / BATCH
            net.eval()
            infer = 1000 * timed(forward, repeat) / BATCH
            old = best.get(mode)
            best[mode] = {"train_ms_per_image": min(train, old["train_ms_per_image"]) if old else train,
                          "eval_ms_per_image": min(infer, old["eval_ms_per_image"]) if old else infer,
                          "depthwise_fp32": converted}
            print(f"  {arch:24s} {mode:22s} train {train:6.1f} ms/image, eval forward {infer:5.1f} ms/image",
                  flush=True)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=list(MODELS))
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=4, help="timed steps per measurement")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    if not cpu_bf16_units():
        sys.exit("this CPU has no AMX-BF16 or AVX512-BF16: bf16 is emulated here, and bf16=auto is off")
    tune_allocator()  # as a job does
    import timm

    from benchmarks.bench import environment

    shapes = depthwise_shapes(timm.create_model("efficientnet_lite0", pretrained=False).eval())
    convs = []
    print("efficientnet_lite0's depthwise convs, forward + backward, batch 32:", flush=True)
    for shape in shapes:
        row = conv_row(shape, args.repeat * 2)
        convs.append(row)
        print(f"  {row['channels']:5d} ch {row['kernel']}x{row['kernel']} /{row['stride']} at {row['side']:3d} px "
              f"(x{row['count']}): fp32 {row['fp32_ms']:6.1f} ms, bf16 {row['bf16_ms']:6.1f} ms "
              f"({row['bf16_speedup']:.2f}x)", flush=True)
    models = {}
    print("train step and eval forward per image:", flush=True)
    for arch in args.models:
        models[arch] = model_modes(arch, args.rounds, args.repeat)
    if args.out:
        args.out.write_text(json.dumps({"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                                        "argv": ["python", "benchmarks/depthwise.py", *sys.argv[1:]],
                                        "batch": BATCH, "size": SIZE, "env": environment(torch.device("cpu")),
                                        "convs": convs, "models": models}, indent=1) + "\n")
        print(f"wrote {args.out}", flush=True)


if __name__ == "__main__":
    main()
