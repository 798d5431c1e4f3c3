"""DTD texture subset (texture kind): the 10 Describable Textures classes a GitHub repo carries, 120 images each.

Source: GitHub pan8915/DeepTexture, whose images/ folder holds the first 10 categories (alphabetical)
of the Describable Textures Dataset (Cimpoi et al., CVPR 2014), JPEG, 300x300 to 640x640; fetched
at commit 522f46f683af11e93673bff29f81df14f49edfb2. The repository states no licence; DTD itself is
distributed for research use (cite the paper).

Classes (fixed order): banded blotchy braided bubbly bumpy chequered cobwebbed cracked crosshatched crystalline.
Split: DTD's official split files are not in the repository, so 30% of each class (seed 0) is
held out as val: 84 train / 36 val per class (the default cap of 150 train per class does not bind).

    python benchmarks/advisor/data/dtd.py --mirror $MIRRORS/pan8915+DeepTexture/repo --out $DATA/dtd
"""
import _gitdata as gd

CLASSES = ["banded", "blotchy", "braided", "bubbly", "bumpy",
           "chequered", "cobwebbed", "cracked", "crosshatched", "crystalline"]


def main():
    args = gd.parser(__doc__).parse_args()
    classes = CLASSES[: args.classes or None]
    files = gd.ls_tree(args.mirror, "images/")
    items = {c: [r for r in files if r[0].startswith(f"images/{c}/")] for c in classes}
    items, dropped = gd.dedupe(items)
    splits = {"train": {}, "val": {}}
    for c in classes:
        train, val = gd.holdout(items[c], 0.3, seed=0)
        splits["train"][c], splits["val"][c] = gd.cap(train, val, args.per_class,
                                                              seed=0, val_per_class=args.val_per_class)
    print(f"DTD subset from {args.mirror} @ {gd.head(args.mirror)}; duplicates dropped: {dropped}")
    gd.write(args.mirror, splits, args.out, args.size,
             {"dataset": "DTD (10-class subset)", "repo": "pan8915/DeepTexture", "commit": gd.head(args.mirror),
              "split": "30% holdout per class, seed 0"})


if __name__ == "__main__":
    main()
