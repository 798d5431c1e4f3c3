"""RSSCN7 aerial scenes (satellite/aerial kind): 7 classes x 400 images, 400x400 RGB JPEG.

Source: GitHub palewithout/RSSCN7 (mirror of the dataset of Zou et al., "Deep Learning Based
Feature Selection for Remote Sensing Scene Classification", IEEE GRSL 2015), fetched at commit
6d77849df87d242b323184ab096e44dd63730c7e. The repository states no licence (research dataset;
cite the paper).

Classes (folder names, in this fixed order): aGrass bField cIndustry dRiverLake eForest fResident gParking.
Split: the dataset has no official split, so 30% of each class (seed 0) is held out as val
(280 train / 120 val per class). Defaults cap train at 150 per class with the same val share
(150 train / 64 val per class); `--per-class 0` keeps all 2,800 images.

    python benchmarks/advisor/data/rsscn7.py --mirror $MIRRORS/palewithout+RSSCN7/repo --out $DATA/rsscn7
"""
import _gitdata as gd

CLASSES = ["aGrass", "bField", "cIndustry", "dRiverLake", "eForest", "fResident", "gParking"]


def main():
    args = gd.parser(__doc__).parse_args()
    classes = CLASSES[: args.classes or None]
    files = gd.ls_tree(args.mirror)
    items = {c: [r for r in files if r[0].startswith(c + "/")] for c in classes}
    items, dropped = gd.dedupe(items)
    splits = {"train": {}, "val": {}}
    for c in classes:
        train, val = gd.holdout(items[c], 0.3, seed=0)
        splits["train"][c], splits["val"][c] = gd.cap(train, val, args.per_class,
                                                              seed=0, val_per_class=args.val_per_class)
    print(f"RSSCN7 from {args.mirror} @ {gd.head(args.mirror)}; duplicates dropped: {dropped}")
    gd.write(args.mirror, splits, args.out, args.size,
             {"dataset": "RSSCN7", "repo": "palewithout/RSSCN7", "commit": gd.head(args.mirror), "split": "30% holdout per class, seed 0"})


if __name__ == "__main__":
    main()
