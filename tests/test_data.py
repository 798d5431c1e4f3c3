"""Datasets: layout checks, few-shot subsets, the download's safety, digits, loaders."""
from __future__ import annotations

import io
import shutil
import urllib.error
import urllib.request
import zipfile

import pytest
import torch

from tlsweep.data import pipeline as D
from tests.conftest import write_image_folder


def test_missing_root_says_what_to_set(tmp_path):
    with pytest.raises(D.DataError, match=r"data.root=.*does not exist"):
        D.image_folder(tmp_path / "nope")


def test_empty_class_folder_is_named(tmp_path):
    root = write_image_folder(tmp_path)
    for f in (root / "val" / "bees").iterdir():
        f.unlink()
    with pytest.raises(D.DataError, match=r"val/bees holds no images"):
        D.image_folder(root)


def test_train_val_class_mismatch(tmp_path):
    root = write_image_folder(tmp_path)
    shutil.copytree(root / "val" / "bees", root / "val" / "wasps")
    with pytest.raises(D.DataError, match=r"classes differ.*wasps"):
        D.image_folder(root)


def test_few_shot_keeps_n_per_class_with_a_fixed_subset(tiny_root):
    data = D.image_folder(tiny_root)
    a, b = D.few_shot(data.train, 3, seed=0), D.few_shot(data.train, 3, seed=0)
    assert a.items == b.items and sorted(a.targets) == [0, 0, 0, 1, 1, 1]
    assert D.few_shot(data.train, 3, seed=1).items != a.items
    with pytest.raises(D.DataError, match="only 6"):
        D.few_shot(data.train, 7, seed=0)


def test_digits_are_real_and_split_80_20():
    d = D.digits()
    assert len(d.train.items) + len(d.val.items) == 1797 and len(d.classes) == 10
    assert len(d.val.items) == 360
    assert d.train.items[0].dtype == torch.uint8 and d.train.items[0].shape == (3, 8, 8)
    assert sorted(set(d.val.targets)) == list(range(10))


def test_real_hymenoptera_counts(hymenoptera):
    d = D.hymenoptera(hymenoptera, download=False)
    assert (len(d.train.items), len(d.val.items), d.classes) == (244, 153, ["ants", "bees"])


def test_incomplete_hymenoptera_is_refused(tmp_path):
    root = write_image_folder(tmp_path / "hymenoptera_data")
    with pytest.raises(D.DataError, match="does not look like the hymenoptera data"):
        D.hymenoptera(root, download=False)


def test_offline_download_says_where_to_put_the_folder(tmp_path, monkeypatch):
    def offline(*a, **k):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    root = tmp_path / "data" / "hymenoptera_data"
    with pytest.raises(D.DataError, match=rf"{root}/train.*data.root="):
        D.hymenoptera(root)
    assert not root.exists()


def test_extraction_refuses_members_outside_the_target(tmp_path):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("hymenoptera_data/train/ok.txt", "fine")
        z.writestr("../escape.txt", "evil")
    with zipfile.ZipFile(buf) as z, pytest.raises(D.DataError, match="outside"):
        D.safe_extract(z, tmp_path / "x")
    assert not (tmp_path / "escape.txt").exists()


def test_download_checks_the_content(tmp_path, monkeypatch):
    """A well-formed archive with the wrong files is refused, and nothing lands at root."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("hymenoptera_data/train/ants/a.jpg", "not the real file")
        z.writestr("hymenoptera_data/val/ants/a.jpg", "not the real file")
    monkeypatch.setattr(urllib.request, "urlopen", lambda *a, **k: io.BytesIO(buf.getvalue()))
    root = tmp_path / "hymenoptera_data"
    with pytest.raises(D.DataError, match="checksum"):
        D.download_hymenoptera(root)
    assert not root.exists()


def test_plain_eval_transform_follows_the_preprocessing(tiny_root):
    from tests.conftest import model_spec

    pp = model_spec("resnet18").preprocess.with_crop(32)
    assert (pp.resize, pp.crop) == (37, 32)  # the weights' 256/224 ratio kept
    train, val = D.plain_loaders(D.image_folder(tiny_root), pp, batch_size=4, seed=0, num_workers=0)
    x, y = next(iter(val))
    assert x.shape == (4, 3, 32, 32) and x.dtype == torch.float32


def _flatten_to_train_only(root, keep_val: bool = False):
    """Move val/ images into train/ (or into the root itself): a user's folder without a val split."""
    import shutil

    for f in (root / "val").rglob("*.png"):
        dest = root / "train" / f.parent.name / f"val-{f.name}"
        shutil.move(f, dest)
    shutil.rmtree(root / "val")
    return root


def test_a_folder_without_val_needs_a_val_fraction(tmp_path):
    root = _flatten_to_train_only(write_image_folder(tmp_path / "d"))
    with pytest.raises(D.DataError, match=r"no val/ split.*add .*val/<class>.*or set data.val_fraction"):
        D.image_folder(root)


@pytest.mark.parametrize("layout", ["train_only", "class_folders_only"])
def test_val_fraction_holds_out_a_fixed_stratified_split(tmp_path, layout):
    root = _flatten_to_train_only(write_image_folder(tmp_path / "d", per_split={"train": 10, "val": 10}))
    if layout == "class_folders_only":
        for cls in (root / "train").iterdir():
            cls.rename(root / cls.name)
        (root / "train").rmdir()
    a, b = D.image_folder(root, val_fraction=0.25), D.image_folder(root, val_fraction=0.25)
    assert a.train.items == b.train.items and a.val.items == b.val.items  # fixed, not the run's seed
    assert sorted(a.val.targets) == [0] * 5 + [1] * 5  # 25% of 20 images per class, per class
    assert len(a.train.items) == 30 and not set(a.train.items) & set(a.val.items)
    assert "0.25" in a.val_from and "stratified" in a.val_from


def test_val_fraction_with_a_val_folder_is_refused(tmp_path):
    with pytest.raises(D.DataError, match="has its own val/ split"):
        D.image_folder(write_image_folder(tmp_path / "d"), val_fraction=0.2)


def test_val_fraction_comes_through_the_config(make_cfg, tmp_path):
    root = _flatten_to_train_only(write_image_folder(tmp_path / "d", per_split={"train": 6, "val": 4}))
    data = D.load(make_cfg(f"data.root={root}", "data.val_fraction=0.2").data)
    assert len(data.val.items) == 4 and len(data.train.items) == 16
