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


if __name__ == "__main__":
    gd.prepare(__doc__, CLASSES, dataset="RSSCN7",
               repo="palewithout/RSSCN7",
               split="30% holdout per class, seed 0",
               holdout="{c}/")
