"""Blood cell images (medical kind): 4 white-blood-cell types, ~3,100 augmented 320x240 JPEG crops each.

Source: GitHub dhruvp/wbc-classification (the BCCD-derived white blood cell set that is also
published as "blood-cells" on Kaggle), fetched at commit 0b22eb2084b1004d464fb5ab87adc85ab94b2079.
The repository states no licence (BCCD itself is MIT-licensed). Each image is an augmented
variant (rotation/flip/shift) of one of a few hundred original smear images, so near-duplicates
exist within a split.

Classes (fixed order): EOSINOPHIL LYMPHOCYTE MONOCYTE NEUTROPHIL.
Split: the repository's own images/TRAIN (~2,480 per class) and images/TEST (~620 per class);
images/TEST_SIMPLE and Original_Images are not used. Defaults cap train at 150 per class (seed 0)
and keep the same share of TEST (~37 per class); `--per-class 0` keeps all 12,444 images.

    python benchmarks/advisor/data/bloodcells.py --mirror $MIRRORS/dhruvp+wbc-classification/repo --out $DATA/bloodcells
"""
import _gitdata as gd

CLASSES = ["EOSINOPHIL", "LYMPHOCYTE", "MONOCYTE", "NEUTROPHIL"]


def main():
    args = gd.parser(__doc__).parse_args()
    classes = CLASSES[: args.classes or None]
    files = gd.ls_tree(args.mirror, "images/")
    own = {}
    for split, folder in (("train", "TRAIN"), ("val", "TEST")):
        own[split] = {c: [r for r in files if r[0].startswith(f"images/{folder}/{c}/")] for c in classes}
    both, dropped = gd.dedupe({(s, c): rows for s in own for c, rows in own[s].items()})
    splits = {"train": {}, "val": {}}
    for c in classes:
        splits["train"][c], splits["val"][c] = gd.cap(both["train", c], both["val", c], args.per_class,
                                                              seed=0, val_per_class=args.val_per_class)
    print(f"Blood cells from {args.mirror} @ {gd.head(args.mirror)}; duplicates dropped: {dropped}")
    gd.write(args.mirror, splits, args.out, args.size,
             {"dataset": "Blood cell images (BCCD-derived WBC)", "repo": "dhruvp/wbc-classification",
              "commit": gd.head(args.mirror), "split": "repository TRAIN / TEST"})


if __name__ == "__main__":
    main()
