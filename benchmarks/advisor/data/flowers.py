"""TensorFlow flower photos (fine-grained kind): 5 flower species, 3,670 Flickr photos (~320x240 to 500x375 JPEG).

Source: GitHub Oldpel/flower_photos, which carries the TensorFlow "flower_photos" set already split
80/20 into dataset/train and dataset/val; fetched at commit 140ff6f3beb2173715002984c2bd58dc3506d4c9.
The repository states no licence; the original archive lists each photo as Creative Commons
By-Attribution (Flickr).

Classes (fixed order): daisy dandelion roses sunflowers tulips (506-718 train, 127-180 val each:
mildly imbalanced).
Split: the repository's own dataset/train and dataset/val. One photo filed under both roses and
tulips is dropped, as are exact duplicate files. Defaults cap train at 150 per class (seed 0) and
keep the same share of val (~37 per class); `--per-class 0` keeps everything.

    python benchmarks/advisor/data/flowers.py --mirror $MIRRORS/Oldpel+flower_photos/repo --out $DATA/flowers
"""
import _gitdata as gd

CLASSES = ["daisy", "dandelion", "roses", "sunflowers", "tulips"]


def main():
    args = gd.parser(__doc__).parse_args()
    classes = CLASSES[: args.classes or None]
    files = gd.ls_tree(args.mirror, "dataset/")
    own = {s: {c: [r for r in files if r[0].startswith(f"dataset/{s}/{c}/")] for c in classes} for s in ("train", "val")}
    both, dropped = gd.dedupe({(s, c): rows for s in own for c, rows in own[s].items()})
    splits = {"train": {}, "val": {}}
    for c in classes:
        splits["train"][c], splits["val"][c] = gd.cap(both["train", c], both["val", c], args.per_class,
                                                              seed=0, val_per_class=args.val_per_class)
    print(f"Flowers from {args.mirror} @ {gd.head(args.mirror)}; duplicates dropped: {dropped}")
    gd.write(args.mirror, splits, args.out, args.size,
             {"dataset": "TensorFlow flower_photos", "repo": "Oldpel/flower_photos", "commit": gd.head(args.mirror),
              "split": "repository train / val (80/20)"})


if __name__ == "__main__":
    main()
