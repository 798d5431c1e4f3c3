"""Copy an ImageFolder (root/{train,val}/<class>/*) with each image's short side resized, as JPEG.

The device tool carries at most 64 MiB; hymenoptera at full size is 46 MB, at a 256-px short side
about a fifth of that. 256 is what EfficientNet-Lite0's eval resize asks for, so both sides of
the benchmark resize little or nothing more. Files ImageFolder would skip (a .gif in
hymenoptera's train/ants) are left out, so the copy holds exactly the images both sides read.

    python benchmarks/device/shrink_data.py ../shared/data/hymenoptera_data .device/hymenoptera_data
"""
from __future__ import annotations

import argparse
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from PIL import Image
from torchvision.datasets.folder import IMG_EXTENSIONS, make_dataset


# JPEG quality 85: hymenoptera at 256 px takes 8.5 MiB (10.6 at 90), which keeps .device under 60 MiB
def shrink(src: Path, dest: Path, short_side: int = 256, quality: int = 85) -> dict[str, int]:
    """Write the copy; returns the number of images per split/class."""
    jobs = []
    for split in ("train", "val"):
        classes = sorted(d.name for d in (src / split).iterdir() if d.is_dir())
        for path, _ in make_dataset(str(src / split), {c: i for i, c in enumerate(classes)}, extensions=IMG_EXTENSIONS):
            path = Path(path)
            out = dest / split / path.parent.name / path.name
            if out.suffix.lower() not in (".jpg", ".jpeg"):
                out = out.with_suffix(".jpg")
            jobs.append((path, out))

    def one(job):
        path, out = job
        with Image.open(path) as img:
            img = img.convert("RGB")
            scale = short_side / min(img.size)
            size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
            out.parent.mkdir(parents=True, exist_ok=True)
            img.resize(size, Image.Resampling.BICUBIC).save(out, "JPEG", quality=quality)
        return f"{out.parent.parent.name}/{out.parent.name}"

    counts: dict[str, int] = {}
    with ThreadPoolExecutor() as pool:  # PIL releases the GIL while it decodes, resizes and encodes
        for key in pool.map(one, jobs):
            counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("src", type=Path)
    ap.add_argument("dest", type=Path)
    ap.add_argument("--short-side", type=int, default=256)
    args = ap.parse_args()
    if args.dest.exists():
        raise SystemExit(f"{args.dest} exists; remove it first")
    counts = shrink(args.src, args.dest, args.short_side)
    size = sum(p.stat().st_size for p in args.dest.rglob("*") if p.is_file())
    print(f"shrink_data: {sum(counts.values())} images {counts}, short side {args.short_side} px, "
          f"{size / 2**20:.1f} MiB in {args.dest}")


if __name__ == "__main__":
    main()
