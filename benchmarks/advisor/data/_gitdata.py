"""Shared helpers for the dataset prep scripts: read images straight from a bare git mirror.

No work tree is needed: files are listed with `git ls-tree` and their bytes come from one
`git cat-file --batch` process. Images are decoded with PIL, the shorter side resized to
`size` pixels, centre-cropped square and written as JPEG (quality 90) into an ImageFolder
layout: out/train/<class>/*.jpg and out/val/<class>/*.jpg.
"""
import argparse
import io
import json
import random
import shutil
import subprocess
from collections import Counter, defaultdict
from pathlib import Path

from PIL import Image

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp")


def parser(doc, classes=10, per_class=150, size=96):
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mirror", required=True, help="bare git dir of the source repository (e.g. $MIRRORS/owner+name/repo)")
    p.add_argument("--out", required=True, help="output root; out/train and out/val are replaced")
    p.add_argument("--size", type=int, default=size, help="shorter side, then centre-crop square (0: native size, JPEG bytes copied as-is)")
    p.add_argument("--classes", type=int, default=classes, help="use the first N classes of the fixed list (0: all)")
    p.add_argument("--per-class", type=int, default=per_class, help="cap on train images per class; val keeps the same share (0: no cap)")
    p.add_argument("--val-per-class", type=int, default=None, help="cap on val images per class instead (default: the same share as train's)")
    return p


def head(mirror):
    return subprocess.run(["git", "--git-dir", mirror, "rev-parse", "HEAD"], check=True, capture_output=True, text=True).stdout.strip()


def ls_tree(mirror, prefix=""):
    """[(path, blob sha)] of the image files under prefix at HEAD, sorted by path."""
    cmd = ["git", "--git-dir", mirror, "ls-tree", "-r", "-z", "HEAD"] + ([prefix] if prefix else [])
    out = subprocess.run(cmd, check=True, capture_output=True).stdout.decode()
    rows = [(e.split("\t", 1)[1], e.split()[2]) for e in filter(None, out.split("\0")) if e.split()[1] == "blob"]
    return sorted(r for r in rows if r[0].lower().endswith(IMAGE_EXTS))


def dedupe(items):
    """items: {key: [(path, sha)]}. Drop exact duplicate files; a file found under two keys is dropped from both."""
    owners = defaultdict(set)
    for key, rows in items.items():
        for _, sha in rows:
            owners[sha].add(key)
    seen, out = set(), {}
    for key, rows in items.items():
        out[key] = [r for r in rows if len(owners[r[1]]) == 1 and not (r[1] in seen or seen.add(r[1]))]
    return out, sum(map(len, items.values())) - sum(map(len, out.values()))


def holdout(rows, frac=0.3, seed=0):
    """Fixed-seed split of one class: (train, val) with round(frac * n) held out as val."""
    rows = list(rows)
    random.Random(seed).shuffle(rows)
    n_val = round(frac * len(rows))
    return sorted(rows[n_val:]), sorted(rows[:n_val])


def cap(train, val, per_class, seed=0, val_per_class=None):
    """Keep at most per_class train images (seed 0), and at most val_per_class val images (None: the same share
    of val as of train)."""
    if per_class and len(train) > per_class:
        n_val = round(len(val) * per_class / len(train)) if val_per_class is None else val_per_class
        train = sorted(random.Random(seed).sample(train, per_class))
    else:
        n_val = len(val) if val_per_class is None else val_per_class
    n_val = min(n_val, len(val))
    return train, (val if n_val == len(val) else sorted(random.Random(seed).sample(val, n_val)))


def by_class(files, prefix, classes):
    """{class: [(path, sha)]}: the files under prefix.format(c=class) for each class."""
    return {c: [r for r in files if r[0].startswith(prefix.format(c=c))] for c in classes}


def split_by_holdout(items, classes, args, frac=0.3):
    """A dataset without a split of its own: exact duplicates dropped, round(frac * n) of each class held out as
    val (seed 0), then both capped as --per-class and --val-per-class say. Returns (splits, duplicates dropped)."""
    items, dropped = dedupe(items)
    splits = {"train": {}, "val": {}}
    for c in classes:
        train, val = holdout(items[c], frac, seed=0)
        splits["train"][c], splits["val"][c] = cap(train, val, args.per_class, seed=0, val_per_class=args.val_per_class)
    return splits, dropped


def split_as_published(files, classes, args, train_prefix, val_prefix):
    """The repository's own train / val (or test) folders, prefixes with {c} for the class: exact duplicates
    dropped (a file in both splits or two classes from all), then capped. Returns (splits, duplicates dropped)."""
    own = {"train": by_class(files, train_prefix, classes), "val": by_class(files, val_prefix, classes)}
    both, dropped = dedupe({(s, c): rows for s in own for c, rows in own[s].items()})
    splits = {"train": {}, "val": {}}
    for c in classes:
        splits["train"][c], splits["val"][c] = cap(both["train", c], both["val", c], args.per_class,
                                                   seed=0, val_per_class=args.val_per_class)
    return splits, dropped


def prepare(doc, classes, dataset, repo, split, prefix="", holdout=None, published=None):
    """A whole prep script: its arguments (`parser(doc)`), the image files under `prefix`, split either by holding
    30% of each class out (`holdout`: the class folder, with {c}) or by the repository's own folders
    (`published`: (train folder, val folder), with {c}), then written with `source.json` naming the dataset, the
    repository, its commit and `split` (in words)."""
    args = parser(doc).parse_args()
    classes = classes[: args.classes or None]
    files = ls_tree(args.mirror, prefix)
    if holdout is not None:
        splits, dropped = split_by_holdout(by_class(files, holdout, classes), classes, args)
    else:
        splits, dropped = split_as_published(files, classes, args, *published)
    commit = head(args.mirror)
    print(f"{dataset} from {args.mirror} @ {commit}; duplicates dropped: {dropped}")
    return write(args.mirror, splits, args.out, args.size, {"dataset": dataset, "repo": repo, "commit": commit,
                                                            "split": split})


def square(data, size):
    im = Image.open(io.BytesIO(data)).convert("RGB")
    w, h = im.size
    s = size / min(w, h)
    im = im.resize((max(size, round(w * s)), max(size, round(h * s))), Image.BICUBIC)
    w, h = im.size
    left, top = (w - size) // 2, (h - size) // 2
    return im.crop((left, top, left + size, top + size))


def write(mirror, splits, out, size, source):
    """splits: {"train": {cls: [(path, sha)]}, "val": {...}}. Writes the images, prints counts per split and class."""
    out = Path(out)
    for split in ("train", "val"):
        shutil.rmtree(out / split, ignore_errors=True)
    jobs = [(split, cls, path, sha) for split in ("train", "val") for cls, rows in splits[split].items() for path, sha in rows]
    proc = subprocess.Popen(["git", "--git-dir", mirror, "cat-file", "--batch"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    counts, bad = Counter(), []
    for split, cls, path, sha in jobs:
        proc.stdin.write(sha.encode() + b"\n")
        proc.stdin.flush()
        head_ = proc.stdout.readline().split()  # b"<sha> blob <n>", or b"<sha> missing"
        data = proc.stdout.read(int(head_[2]) + 1)[:-1] if len(head_) == 3 else b""
        dest = out / split / cls / (Path(path).stem + ".jpg")
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            if size == 0 and data[:3] == b"\xff\xd8\xff":
                Image.open(io.BytesIO(data)).verify()
                dest.write_bytes(data)
            elif size == 0:
                Image.open(io.BytesIO(data)).convert("RGB").save(dest, "JPEG", quality=90)
            else:
                square(data, size).save(dest, "JPEG", quality=90)
            counts[split, cls] += 1
        except Exception as exc:  # an LFS pointer or a broken file: skip it, say so
            bad.append(f"{path}: {exc}")
    proc.communicate()
    classes = sorted({cls for _, cls in counts})
    print(f"{'class':24s} {'train':>6s} {'val':>6s}")
    for cls in classes:
        print(f"{cls:24s} {counts['train', cls]:6d} {counts['val', cls]:6d}")
    tot = {s: sum(v for (sp, _), v in counts.items() if sp == s) for s in ("train", "val")}
    print(f"{'total':24s} {tot['train']:6d} {tot['val']:6d}")
    print("".join(f"skipped {line}\n" for line in bad), end="")
    meta = dict(source, size=size, classes=classes, counts={f"{s}/{c}": v for (s, c), v in sorted(counts.items())}, skipped=bad)
    (out / "source.json").write_text(json.dumps(meta, indent=1) + "\n")
    return counts
