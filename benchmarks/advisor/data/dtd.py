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


if __name__ == "__main__":
    gd.prepare(__doc__, CLASSES, dataset="DTD (10-class subset)",
               repo="pan8915/DeepTexture",
               split="30% holdout per class, seed 0",
               prefix="images/",
               holdout="images/{c}/")
