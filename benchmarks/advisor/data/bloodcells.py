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


if __name__ == "__main__":
    gd.prepare(__doc__, CLASSES, dataset="Blood cell images (BCCD-derived WBC)",
               repo="dhruvp/wbc-classification",
               split="repository TRAIN / TEST",
               prefix="images/",
               published=("images/TRAIN/{c}/", "images/TEST/{c}/"))
