"""Datasets by name (tlsweep.data.sources): torchvision's datasets on fake files in their real layout (as
torchvision's own test/test_datasets.py builds them), a VTAB-1k file-list task, a `datasets` folder saved to
disk. Each loads through `data.load`, with its classes, split sizes and roles; downloads and the hub fail
offline with a message that says where the files go."""
from __future__ import annotations

import pickle
import sys
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
from mlflow import MlflowClient
from PIL import Image

from tlsweep.data import pipeline as D
from tlsweep.data import sources
from tlsweep.config.errors import ConfigError, DataError

CIFAR_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """torchvision's download (the real code runs) reaches the network through these two: here they fail as
    they do offline, and say they were called."""
    import torchvision.datasets.utils as tvu

    calls = []

    def offline(url, *args, **kwargs):
        calls.append(url)
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(tvu, "_get_redirect_url", offline)
    monkeypatch.setattr(tvu, "_urlretrieve", offline)
    return calls


@pytest.fixture
def no_md5(monkeypatch):
    """Fake files cannot match the archives' MD5s: torchvision's integrity check then only asks that the
    file exists (what torchvision's own dataset tests patch too)."""
    import torchvision.datasets.utils as tvu

    monkeypatch.setattr(tvu, "check_md5", lambda *args, **kwargs: True)


def jpg(path: Path, seed: int, size: int = 8) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, size=(size, size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


def load(make_cfg, *overrides):
    return D.load(make_cfg(*overrides).data)


# --- torchvision -----------------------------------------------------------------------------------------

def fake_cifar10(root: Path) -> dict:
    """cifar-10-batches-py: five pickled train batches, a test batch, batches.meta; one image per class per batch."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    rows = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        rows[name] = rng.integers(0, 256, size=(10, 32 * 32 * 3), dtype=np.uint8)
        with open(folder / name, "wb") as f:
            pickle.dump({"data": rows[name], "labels": list(range(10))[::-1]}, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": CIFAR_CLASSES}, f)
    return rows


def test_cifar10_trains_on_train_and_scores_test_as_tensors(make_cfg, tmp_path, no_md5, no_network):
    rows = fake_cifar10(tmp_path)
    data = load(make_cfg, "data=torchvision", "data.dataset=CIFAR10", f"data.root={tmp_path}")
    assert (data.name, data.classes, data.scored) == ("CIFAR10", CIFAR_CLASSES, "test")
    assert (len(data.train.items), len(data.val.items), data.select) == (50, 10, None)
    assert data.val_from == "CIFAR10's official test split: 10 images"
    # a row is the R plane, then G, then B, each 32x32 row-major: the item is that image as [3,H,W]
    first = data.val.items[0]
    assert first.dtype == torch.uint8 and first.shape == (3, 32, 32)
    assert torch.equal(first, torch.from_numpy(rows["test_batch"][0].reshape(3, 32, 32)))
    assert data.val.targets == list(range(10))[::-1]
    assert not no_network  # the files were there: nothing was fetched


def fake_flowers102(root: Path) -> dict[str, list[int]]:
    """flowers-102/jpg/image_%05d.jpg, imagelabels.mat (1-based labels), setid.mat (trnid, valid, tstid):
    one image per class in each split."""
    from scipy.io import savemat

    folder = root / "flowers-102"
    labels = np.tile(np.arange(1, 103), 3)  # image id i (1-based) has label labels[i - 1]
    for i in range(1, len(labels) + 1):
        jpg(folder / "jpg" / f"image_{i:05d}.jpg", i)
    ids = np.arange(1, len(labels) + 1)
    sets = {"trnid": ids[:102], "valid": ids[102:204], "tstid": ids[204:]}
    savemat(folder / "imagelabels.mat", {"labels": labels})
    savemat(folder / "setid.mat", sets)
    return {k: v.tolist() for k, v in sets.items()}


def test_flowers102_selects_on_val_and_scores_test(make_cfg, tmp_path, no_md5):
    sets = fake_flowers102(tmp_path)
    data = load(make_cfg, "data=torchvision", "data.dataset=Flowers102", f"data.root={tmp_path}")
    assert (data.name, len(data.classes), data.classes[0], data.scored) == ("Flowers102", 102, "pink primrose", "test")
    assert [len(s.items) for s in (data.train, data.select, data.val)] == [102, 102, 102]
    assert data.select.items[0] == str(tmp_path / "flowers-102" / "jpg" / f"image_{sets['valid'][0]:05d}.jpg")
    assert data.val.items[-1].endswith(f"image_{sets['tstid'][-1]:05d}.jpg") and data.val.targets[-1] == 101
    assert data.select_from == "Flowers102's official val split: 102 images, never trained on"
    assert data.val_from == "Flowers102's official test split: 102 images"
    with pytest.raises(DataError, match="has its own selection split"):
        load(make_cfg, "data=torchvision", "data.dataset=Flowers102", f"data.root={tmp_path}",
             "data.select_fraction=0.2")


def test_dtd_reads_its_label_lists(make_cfg, tmp_path):
    classes = ["banded", "blotchy", "zigzagged"]
    folder = tmp_path / "dtd" / "dtd"
    sizes = {"train": 3, "val": 2, "test": 1}
    for split, n in sizes.items():
        lines = [f"{c}/{c}_{split}{i}.jpg" for c in classes for i in range(n)]
        for k, line in enumerate(lines):
            jpg(folder / "images" / line, k)
        (folder / "labels").mkdir(parents=True, exist_ok=True)
        (folder / "labels" / f"{split}1.txt").write_text("\n".join(lines) + "\n")
    data = load(make_cfg, "data=torchvision", "data.dataset=DTD", f"data.root={tmp_path}")
    assert (data.name, data.classes, data.scored) == ("DTD", classes, "test")
    assert [len(s.items) for s in (data.train, data.select, data.val)] == [9, 6, 3]
    assert data.train.targets == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert data.select.items[0] == str(folder / "images" / "banded" / "banded_val0.jpg")


def test_a_dataset_without_splits_gets_a_fixed_stratified_holdout(make_cfg, tmp_path):
    for c in ("Forest", "River"):
        for i in range(10):
            jpg(tmp_path / "eurosat" / "2750" / c / f"{c}_{i}.jpg", i)
    first = load(make_cfg, "data=torchvision", "data.dataset=EuroSAT", f"data.root={tmp_path}")
    assert (first.name, first.classes, first.scored) == ("EuroSAT", ["Forest", "River"], "val")
    assert (len(first.train.items), len(first.val.items)) == (16, 4) and sorted(first.val.targets) == [0, 0, 1, 1]
    assert first.val_from == ("0.2 of EuroSAT held out, stratified by class (seed 0; torchvision defines no split): "
                              "4 images")
    again = load(make_cfg, "data=torchvision", "data.dataset=EuroSAT", f"data.root={tmp_path}")
    assert again.val.items == first.val.items
    half = load(make_cfg, "data=torchvision", "data.dataset=EuroSAT", f"data.root={tmp_path}", "data.val_fraction=0.5")
    assert len(half.val.items) == 10


def test_val_fraction_is_refused_where_the_dataset_has_splits(make_cfg, tmp_path, no_md5):
    fake_cifar10(tmp_path)
    with pytest.raises(DataError, match="its own test split.*val_fraction=0.3"):
        load(make_cfg, "data=torchvision", "data.dataset=CIFAR10", f"data.root={tmp_path}", "data.val_fraction=0.3")


def test_offline_download_says_where_the_files_go(make_cfg, tmp_path, no_network):
    with pytest.raises(DataError) as err:
        load(make_cfg, "data=torchvision", "data.dataset=Flowers102", f"data.root={tmp_path}")
    msg = str(err.value)
    assert f"no usable copy in {tmp_path / 'flowers-102'}" in msg and "the download failed" in msg
    assert "URLError" in msg and "102flowers.tgz" in msg and "data.download=true" in msg
    assert no_network and "102flowers.tgz" in no_network[0]  # torchvision's own download ran, and failed
    no_network.clear()
    with pytest.raises(DataError, match=r"cifar-10-batches-py \(RuntimeError.*data.download=false\)"):
        load(make_cfg, "data=torchvision", "data.dataset=CIFAR10", f"data.root={tmp_path}", "data.download=false")
    assert not no_network


def test_stanford_cars_is_never_downloaded(make_cfg, tmp_path, no_network):
    with pytest.raises(DataError, match="stanford_cars.*torchvision cannot download it.*Kaggle"):
        load(make_cfg, "data=torchvision", "data.dataset=StanfordCars", f"data.root={tmp_path}")
    assert not no_network


def _pngs(folder: Path, names) -> None:
    for i, name in enumerate(names):
        jpg(folder / name, i)


def _idx(path: Path, array: np.ndarray) -> None:
    """MNIST's idx format: magic (0x08 = uint8, then the number of dimensions), the sizes, the bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header = np.array([0x0800 + array.ndim, *array.shape], dtype=">i4").tobytes()
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def _svhn(root):
    from scipy.io import savemat

    for split, n in (("train", 4), ("test", 2)):  # X is [32, 32, 3, N]; digit 0 is labelled 10
        savemat(root / f"{split}_32x32.mat", {"X": np.zeros((32, 32, 3, n), np.uint8),
                                              "y": np.array([[10], [3]] * (n // 2))})
    return 10, "0", (4, None, 2)


def _stl10(root):
    folder = root / "stl10_binary"
    folder.mkdir()
    for split, n in (("train", 4), ("test", 2)):
        (folder / f"{split}_X.bin").write_bytes(np.zeros(n * 3 * 96 * 96, np.uint8).tobytes())
        (folder / f"{split}_y.bin").write_bytes(np.array([1, 10] * (n // 2), np.uint8).tobytes())
    (folder / "unlabeled_X.bin").write_bytes(b"")
    (folder / "class_names.txt").write_text("airplane\nbird\ncar\ncat\ndeer\ndog\nhorse\nmonkey\nship\ntruck\n")
    return 10, "airplane", (4, None, 2)


def _mnist(root):
    for prefix, n in (("train", 4), ("t10k", 2)):
        _idx(root / "MNIST" / "raw" / f"{prefix}-images-idx3-ubyte", np.zeros((n, 28, 28)))
        _idx(root / "MNIST" / "raw" / f"{prefix}-labels-idx1-ubyte", np.arange(n) % 10)
    return 10, "0 - zero", (4, None, 2)


def _cifar100(root):
    folder = root / "cifar-100-python"
    folder.mkdir()
    for split, n in (("train", 4), ("test", 2)):
        with open(folder / split, "wb") as f:
            pickle.dump({"data": np.zeros((n, 3072), np.uint8), "fine_labels": list(range(n))}, f)
    with open(folder / "meta", "wb") as f:
        pickle.dump({"fine_label_names": [f"c{i}" for i in range(100)]}, f)
    return 100, "c0", (4, None, 2)


def _gtsrb(root):
    base = root / "gtsrb"
    _pngs(base / "GTSRB" / "Training", ["00000/a.ppm", "00000/b.ppm", "00001/c.ppm"])
    _pngs(base / "GTSRB" / "Final_Test" / "Images", ["00000.ppm", "00001.ppm"])
    (base / "GT-final_test.csv").write_text("Filename;Width;Height;ClassId\n00000.ppm;8;8;1\n00001.ppm;8;8;0\n")
    return 43, "0", (3, None, 2)


def _caltech101(root):
    cats = root / "caltech101" / "101_ObjectCategories"
    _pngs(cats, [f"{c}/image_{i:04d}.jpg" for c in ("BACKGROUND_Google", "Faces", "airplanes") for i in range(1, 6)])
    return 2, "Faces", (8, None, 2)  # BACKGROUND_Google is not a class


def _caltech256(root):
    cats = root / "caltech256" / "256_ObjectCategories"
    _pngs(cats, [f"{k:03d}.{c}/{k:03d}_{i:04d}.jpg" for k, c in ((1, "ak47"), (2, "bat")) for i in range(1, 6)])
    return 2, "001.ak47", (8, None, 2)


def _pets(root):
    base = root / "oxford-iiit-pet"
    ids = {"trainval": ["Abyssinian_1", "Abyssinian_2", "basset_hound_1"], "test": ["Abyssinian_3", "basset_hound_2"]}
    for split, names in ids.items():
        _pngs(base / "images", [f"{n}.jpg" for n in names])
        lines = [f"{n} {1 if n.startswith('Aby') else 2} {1 if n.startswith('Aby') else 2} 1" for n in names]
        (base / "annotations").mkdir(parents=True, exist_ok=True)
        (base / "annotations" / f"{split}.txt").write_text("\n".join(lines) + "\n")
    return 2, "Abyssinian", (3, None, 2)


def _aircraft(root):
    data = root / "fgvc-aircraft-2013b" / "data"
    _pngs(data / "images", [f"{i:07d}.jpg" for i in range(6)])
    (data / "variants.txt").write_text("707-320\nA300B4\n")
    for split, ids in (("train", (0, 1)), ("val", (2, 3)), ("test", (4, 5))):
        (data / f"images_variant_{split}.txt").write_text(f"{ids[0]:07d} 707-320\n{ids[1]:07d} A300B4\n")
    return 2, "707-320", (2, 2, 2)


def _food101(root):
    import json

    base = root / "food-101"
    for split, k in (("train", (1, 2)), ("test", (3,))):
        meta = {c: [f"{c}/{i}" for i in k] for c in ("apple_pie", "baklava")}
        _pngs(base / "images", [f"{p}.jpg" for ps in meta.values() for p in ps])
        (base / "meta").mkdir(parents=True, exist_ok=True)
        (base / "meta" / f"{split}.json").write_text(json.dumps(meta))
    return 2, "apple_pie", (4, None, 2)


def _sun397(root):
    base = root / "SUN397"
    _pngs(base, [f"{c}/sun_{c[-1]}{i}.jpg" for c in ("a/abbey", "b/beach") for i in range(5)])
    (base / "ClassName.txt").write_text("/a/abbey\n/b/beach\n")
    return 2, "abbey", (8, None, 2)


def _country211(root):
    for split in ("train", "valid", "test"):
        _pngs(root / "country211" / split, [f"{c}/{i}.jpg" for c in ("AD", "AE") for i in range(2)])
    return 2, "AD", (4, 4, 4)


def _stanford_cars(root):
    from scipy.io import savemat

    base = root / "stanford_cars"
    (base / "devkit").mkdir(parents=True)
    names = np.array(["AM General Hummer", "Acura RL"], dtype=object)
    savemat(base / "devkit" / "cars_meta.mat", {"class_names": names})
    record = np.dtype([("fname", "O"), ("class", "O")])
    for folder, mat, n in (("cars_train", base / "devkit" / "cars_train_annos.mat", 4),
                           ("cars_test", base / "cars_test_annos_withlabels.mat", 2)):
        _pngs(base / folder, [f"{i:05d}.jpg" for i in range(n)])
        annotations = np.array([(f"{i:05d}.jpg", i % 2 + 1) for i in range(n)], dtype=record)
        savemat(mat, {"annotations": annotations})
    return 2, "AM General Hummer", (4, None, 2)


def _imagenette(root):
    for split in ("train", "val"):
        _pngs(root / "imagenette2" / split, [f"{w}/{w}_{i}.JPEG" for w in ("n01440764", "n02102040") for i in range(2)])
    return 2, "tench", (4, None, 4)


def _rendered_sst2(root):
    for split in ("train", "valid", "test"):
        _pngs(root / "rendered-sst2" / split, [f"{c}/{i}.png" for c in ("negative", "positive") for i in range(2)])
    return 2, "negative", (4, 4, 4)


LAYOUTS = {"SVHN": _svhn, "STL10": _stl10, "MNIST": _mnist, "CIFAR100": _cifar100, "GTSRB": _gtsrb,
           "Caltech101": _caltech101, "Caltech256": _caltech256, "OxfordIIITPet": _pets, "FGVCAircraft": _aircraft,
           "Food101": _food101, "SUN397": _sun397, "Country211": _country211, "StanfordCars": _stanford_cars,
           "Imagenette": _imagenette, "RenderedSST2": _rendered_sst2}


@pytest.mark.parametrize("name", LAYOUTS)
def test_each_dataset_is_read_from_its_real_layout(name, make_cfg, tmp_path, no_md5, no_network):
    """Each torchvision dataset on a few fake files where torchvision reads them: the private file lists
    tlsweep reads are there, and each split lands in its role."""
    n_classes, first, sizes = LAYOUTS[name](tmp_path)
    spec = sources.TORCHVISION[name]
    # straight from the source: a fake with fewer images than classes would fail check_classes in D.load
    data = sources.torchvision_data(make_cfg("data=torchvision", f"data.dataset={name}", f"data.root={tmp_path}").data)
    assert (data.name, len(data.classes), data.classes[0], data.scored) == (name, n_classes, first, spec.scored_name)
    assert (len(data.train.items), data.select and len(data.select.items), len(data.val.items)) == sizes
    for split in data.eval_splits() + [data.train]:
        assert all(isinstance(p, torch.Tensor) or Path(p).is_file() for p in split.items)
        assert all(0 <= t < n_classes for t in split.targets)
    assert not no_network


def test_an_unknown_dataset_lists_the_valid_ones(make_cfg, tmp_path):
    with pytest.raises(DataError, match=r"unknown data.dataset 'Flowers'; valid: .*CIFAR10.*Flowers102"):
        load(make_cfg, "data=torchvision", "data.dataset=Flowers", f"data.root={tmp_path}")


def test_every_named_dataset_is_in_torchvision():
    import torchvision.datasets

    required = {"CIFAR10", "CIFAR100", "Flowers102", "DTD", "OxfordIIITPet", "FGVCAircraft", "Food101", "Caltech101",
                "StanfordCars", "SUN397", "EuroSAT", "SVHN", "STL10", "GTSRB", "Country211"}
    assert required <= set(sources.TORCHVISION)
    for name, spec in sources.TORCHVISION.items():
        assert hasattr(torchvision.datasets, name), name
        assert spec.scored_name == ("val" if spec.scored in (None, "val") else "test"), name
        assert spec.select is None or spec.scored == "test", name  # a validation split selects only beside a test


def test_a_missing_dataset_name_is_a_config_error(make_cfg):
    from tlsweep.config.schema import check_ranges

    with pytest.raises(ConfigError, match=r"data.dataset is required.*CIFAR10"):
        check_ranges(make_cfg("data=torchvision"))


# --- file lists (VTAB-1k) --------------------------------------------------------------------------------

def fake_vtab(root: Path, labels=(0, 2, 10), sizes=None) -> Path:
    """One task folder: images/<split>/<i>.png listed in train800.txt, val200.txt, train800val200.txt and
    test.txt as `<relative path> <label>` (the lists' real format, at 4/2/3 images per class). Classes differ
    in colour, so a model can learn them."""
    sizes = sizes or {"train800": 4, "val200": 2, "test": 3}
    rng = np.random.default_rng(0)
    lines = {}
    for split, n in sizes.items():
        lines[split] = []
        for k, label in enumerate(labels):
            for i in range(n):
                rel = f"images/{split}/{label}_{i}.png"
                (root / rel).parent.mkdir(parents=True, exist_ok=True)
                img = rng.integers(0, 80, size=(24, 24, 3), dtype=np.uint8)
                img[..., k % 3] += 170
                Image.fromarray(img).save(root / rel)
                lines[split].append(f"{rel} {label}")
    lines["train800val200"] = lines["train800"] + lines["val200"]
    for split, ls in lines.items():
        (root / f"{split}.txt").write_text("\n".join(ls) + "\n")
    return root


def test_filelist_trains_on_train800_selects_on_val200_scores_test(make_cfg, tmp_path):
    task = fake_vtab(tmp_path / "dtd")
    data = load(make_cfg, "data=filelist", f"data.root={task}")
    assert (data.name, data.classes, data.scored) == ("dtd", ["0", "2", "10"], "test")  # sorted as numbers
    assert [len(s.items) for s in (data.train, data.select, data.val)] == [12, 6, 9]
    assert data.train.items[0] == str(task / "images" / "train800" / "0_0.png") and data.train.targets[-1] == 2
    assert data.select_from == "dtd's val200.txt: 6 images, never trained on"
    assert data.val_from == "dtd's test.txt: 9 images"


def test_filelist_without_a_selection_list_trains_on_train800val200(make_cfg, tmp_path):
    task = fake_vtab(tmp_path / "cifar")
    data = load(make_cfg, "data=filelist", f"data.root={task}", "data.select_list=null")
    assert (len(data.train.items), data.select, len(data.val.items)) == (18, None, 9)
    assert data.select_from == "none (data.select_list=null): train800val200.txt trains, 18 images"


def test_filelist_refuses_a_selection_split_it_trains_on(make_cfg, tmp_path):
    task = fake_vtab(tmp_path / "t")
    with pytest.raises(DataError, match="6 image.* of val200.txt are also in train800val200.txt"):
        load(make_cfg, "data=filelist", f"data.root={task}", "data.train_list=train800val200.txt")


def test_filelist_names_a_missing_list_or_image(make_cfg, tmp_path):
    task = fake_vtab(tmp_path / "t")
    (task / "images" / "test" / "2_1.png").unlink()
    with pytest.raises(DataError, match=r"missing, e.g. .*images/test/2_1.png \(listed in .*test.txt\)"):
        load(make_cfg, "data=filelist", f"data.root={task}")
    with pytest.raises(DataError, match=r"list file .*/t/val100.txt does not exist"):
        load(make_cfg, "data=filelist", f"data.root={task}", "data.select_list=val100.txt")
    (task / "train800.txt").write_text("images/train800/0_0.png zero\n")
    with pytest.raises(DataError, match=r"train800.txt:1: expected '<relative path> <integer label>'"):
        load(make_cfg, "data=filelist", f"data.root={task}")


def test_a_filelist_task_runs_end_to_end_and_logs_the_test_accuracy(make_cfg, store_uri, tmp_path):
    from tlsweep.run import run

    task = fake_vtab(tmp_path / "vtab-1k" / "dtd")
    cfg = make_cfg("data=filelist", f"data.root={task}", "model=timm", "model.arch=resnet10t", "model.weights=null",
                   "strategy=probe", "tracking.sweep_name=sources")
    result = run(cfg)
    assert "final_test_acc" in result and "final_val_acc" not in result
    client = MlflowClient(store_uri)
    exp = client.get_experiment_by_name("tlsweep")
    r = client.search_runs([exp.experiment_id], order_by=["attributes.start_time DESC"], max_results=1)[0]
    assert {"final_test_acc", "select_acc"} <= set(r.data.metrics)
    assert r.data.metrics["final_test_acc"] == pytest.approx(result["final_test_acc"])
    assert r.data.tags["tlsweep.data.val"] == "dtd's test.txt: 9 images"
    assert r.data.tags["tlsweep.data.select"] == "dtd's val200.txt: 6 images, never trained on"
    assert r.data.params["data.root"] == str(task)


# --- Hugging Face datasets -------------------------------------------------------------------------------

@pytest.fixture
def hf_folder(tmp_path) -> Path:
    """A DatasetDict with an Image column and a ClassLabel, saved with save_to_disk."""
    datasets = pytest.importorskip("datasets")
    rng = np.random.default_rng(0)
    features = datasets.Features({"img": datasets.Image(), "fine": datasets.ClassLabel(names=["cat", "dog", "owl"])})

    def split(n: int):
        images = [Image.fromarray(rng.integers(0, 256, size=(12, 16, 3), dtype=np.uint8)) for _ in range(3 * n)]
        images[0] = images[0].convert("L")  # one grayscale image: decoded to RGB like the rest
        return datasets.Dataset.from_dict({"img": images, "fine": [i % 3 for i in range(3 * n)]}, features=features)

    folder = tmp_path / "pets-hf"
    datasets.DatasetDict({"train": split(4), "validation": split(2), "test": split(3)}).save_to_disk(str(folder))
    return folder


def test_hf_folder_loads_with_its_class_names_and_roles(make_cfg, hf_folder):
    data = load(make_cfg, "data=hf", f"data.path={hf_folder}", "data.image_column=img", "data.label_column=fine",
                "data.select_split=validation")
    assert (data.name, data.classes, data.scored) == ("pets-hf", ["cat", "dog", "owl"], "test")
    assert [len(s.items) for s in (data.train, data.select, data.val)] == [12, 6, 9]
    first = data.train.items[0]
    assert first.dtype == torch.uint8 and first.shape == (3, 12, 16) and data.train.targets[:4] == [0, 1, 2, 0]
    assert torch.equal(first[0], first[1])  # the grayscale image, as RGB
    assert data.val_from == "pets-hf's test split: 9 images"
    assert data.select_from == "pets-hf's validation split: 6 images, never trained on"
    scored_on_val = load(make_cfg, "data=hf", f"data.path={hf_folder}", "data.image_column=img",
                         "data.label_column=fine", "data.scored_split=validation")
    assert (scored_on_val.scored, len(scored_on_val.val.items), scored_on_val.select) == ("val", 6, None)


def test_hf_names_a_missing_split_or_column(make_cfg, hf_folder):
    with pytest.raises(DataError, match="no column 'image' .*data.image_column.*img, fine"):
        load(make_cfg, "data=hf", f"data.path={hf_folder}", "data.label_column=fine")
    with pytest.raises(DataError, match="no split 'val' .*data.select_split.*train, validation, test"):
        load(make_cfg, "data=hf", f"data.path={hf_folder}", "data.image_column=img", "data.label_column=fine",
             "data.select_split=val")


def test_hf_refuses_one_split_in_two_roles(make_cfg, hf_folder):
    with pytest.raises(DataError, match="must name different splits, got train, test, test"):
        load(make_cfg, "data=hf", f"data.path={hf_folder}", "data.image_column=img", "data.label_column=fine",
             "data.select_split=test")


def test_hf_hub_offline_says_how_to_get_it(make_cfg, monkeypatch):
    datasets = pytest.importorskip("datasets")

    def offline(path, *args, **kwargs):
        raise ConnectionError(f"Couldn't reach '{path}' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DataError, match=r"could not load 'uoft-cs/cifar10' from the Hugging Face hub "
                                        r"\(ConnectionError: .*save_to_disk.*HF_DATASETS_OFFLINE=1"):
        load(make_cfg, "data=hf", "data.path=uoft-cs/cifar10")


def test_hf_without_the_extra_says_how_to_install_it(make_cfg, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "datasets", None)  # import datasets now raises ImportError
    with pytest.raises(DataError, match=r'pip install -e "\.\[datasets\]"'):
        load(make_cfg, "data=hf", f"data.path={tmp_path}")
