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


if __name__ == "__main__":
    gd.prepare(__doc__, CLASSES, dataset="TensorFlow flower_photos",
               repo="Oldpel/flower_photos",
               split="repository train / val (80/20)",
               prefix="dataset/",
               published=("dataset/train/{c}/", "dataset/val/{c}/"))
