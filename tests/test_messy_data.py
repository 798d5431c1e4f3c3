"""Messy but valid image folders just work; damaged or hostile files are named and never silently change
the study. Every file here is made by the test: small batches against odd split sizes, other tools'
leftovers, every PIL mode, Unicode names and links, decompression bombs, skips that must be seen."""
from __future__ import annotations

import io
import os
import re
import shutil
import struct
import subprocess
import sys
import time
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient
from PIL import Image, ImageFile, ImageOps
from torchvision.transforms.v2 import InterpolationMode

from tests.conftest import write_image_folder
from tlsweep.data import pipeline as D
from tlsweep.data import images
from tlsweep.config.errors import ConfigError, DataError
from tlsweep.data.decoded import DecodedImages, TensorLoader, decoded_size_bytes, trained_count
from tlsweep.features.cache import FeatureLoader
from tlsweep.config.keys import Tag
from tlsweep.models import Preprocess
from tlsweep.run import run
from tlsweep.data.splits import ImageData, Split

NULL = "model.weights=null"
PP = Preprocess(12, 12, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), InterpolationMode.BILINEAR)


def write_bomb(path: Path, width: int, height: int) -> Path:
    """A black 1-bit grayscale PNG of width x height pixels, a few KB on disk: its rows stream through zlib."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    z, rows = zlib.compressobj(6), b"\0" * (1 + -(-width // 8)) * 1000  # a filter byte, then the packed bits
    idat = b"".join(z.compress(rows) for _ in range(height // 1000))
    idat += z.compress(b"\0" * (1 + -(-width // 8)) * (height % 1000)) + z.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


def bombs(folder: Path) -> tuple[Path, Path]:
    """(over twice PIL's limit: PIL refuses it at open; between once and twice: PIL only warns, and decodes it)."""
    limit = Image.MAX_IMAGE_PIXELS
    assert limit == 89_478_485  # PIL's default: the sizes below are chosen around it
    return write_bomb(folder / "bomb200mp.png", 14_143, 14_143), write_bomb(folder / "bomb100mp.png", 10_000, 10_000)


@pytest.fixture
def decodes(monkeypatch) -> list[str]:
    """The files (their names, or WxH for in-memory ones) whose pixels PIL decodes while the test runs."""
    seen, real = [], ImageFile.ImageFile.load

    def load(self):
        seen.append(os.path.basename(getattr(self, "filename", "") or "") or "x".join(map(str, self.size)))
        return real(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", load)
    return seen


def _tag(store_uri: str, key: str) -> str:
    client = MlflowClient(store_uri)
    exp = client.get_experiment_by_name("tlsweep")
    last = client.search_runs([exp.experiment_id], order_by=["attributes.start_time DESC"], max_results=1)[0]
    return last.data.tags.get(key, "")


# --- 1. a batch of one --------------------------------------------------------------------------------

def _loaders(n: int, batch_size: int):
    """(train loader, eval loader) of each kind over n samples whose target is their index."""
    targets = torch.arange(n)
    items = [torch.full((3, 12, 12), i % 256, dtype=torch.uint8) for i in range(n)]
    plain_train, plain_eval = D.plain_loaders(ImageData("t", ["a"], Split(items, targets.tolist()),
                                                        Split(items, targets.tolist())), PP, batch_size, 0, 0)
    store = DecodedImages.pack(items, targets)
    feats = torch.randn(2, n, 4)
    return {"plain": (plain_train, plain_eval),
            "tensor": (TensorLoader(store, batch_size, True, PP, seed=0), TensorLoader(store, batch_size, False, PP)),
            "feature": (FeatureLoader(feats, targets, batch_size, train=True), FeatureLoader(feats[0], targets,
                                                                                          batch_size, train=False))}


@pytest.mark.parametrize("kind", ["plain", "tensor", "feature"])
def test_a_training_loader_never_yields_a_batch_of_one_and_its_length_is_true(kind):
    for n in range(2, 12):
        for batch_size in (1, 2, 3, 4, 5, 16):
            train, evaluate = _loaders(n, batch_size)[kind]
            seen = set()
            for _ in range(6):  # reshuffled each epoch: what one epoch leaves out, another trains on
                sizes = [len(y) for _, y in train]
                assert len(sizes) == len(train), (n, batch_size)
                assert 1 not in sizes or batch_size == 1, (n, batch_size, sizes)
                assert sum(sizes) == trained_count(n, batch_size) >= n - 1
                seen |= {int(t) for _, y in train for t in y}
            assert seen == set(range(n)), (n, batch_size)
            eval_sizes = [len(y) for _, y in evaluate]  # eval keeps every sample, a batch of one included
            assert sum(eval_sizes) == n and len(eval_sizes) == len(evaluate) == -(-n // batch_size)


def test_the_plain_loader_shuffles_as_before():
    """The batch sampler draws the order from the run's generator exactly as DataLoader(shuffle=True) did."""
    items = [torch.zeros(3, 12, 12, dtype=torch.uint8)] * 10
    data = ImageData("t", ["a"], Split(items, list(range(10))), Split(items, list(range(10))))
    train, _ = D.plain_loaders(data, PP, 4, 7, 0)
    old = torch.utils.data.DataLoader(D.SplitDataset(data.train, D.train_transform(PP)), batch_size=4, shuffle=True,
                                      generator=torch.Generator().manual_seed(7))
    for _ in range(2):
        assert [y.tolist() for _, y in train] == [y.tolist() for _, y in old]


@pytest.mark.parametrize("strategy,cache,features", [("finetune", "false", "off"), ("finetune", "true", "off"),
                                                  ("partial", "true", "on")])
def test_a_batchnorm_model_trains_on_a_split_that_leaves_one_image_over(make_cfg, tmp_path, strategy, cache, features):
    """9 training images in batches of 4: resnet10t at 32 px has a 1x1 last feature map, where BatchNorm in
    training mode refuses a batch of one. Through each training loader: the plain DataLoader (data.cache=false),
    the decoded tensors, and partial's cached features (layer4 trains on them)."""
    root = write_image_folder(tmp_path / "d", classes=("ants", "bees", "wasps"), per_split={"train": 3, "val": 2})
    cfg = make_cfg(f"data.root={root}", "model=timm", "model.arch=resnet10t", NULL, f"strategy={strategy}",
                   "batch_size=4", f"data.cache={cache}")
    result = run(cfg)
    assert 0 <= result["final_val_acc"] <= 1
    assert _tag(cfg.tracking.uri, Tag.FEATURES).startswith(features)


@pytest.mark.slow
def test_the_digits_command_with_a_remainder_of_one_runs(tmp_path):
    """digits' 1,437 training images are 4 * 359 + 1: the exact command that crashed in BatchNorm."""
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "HYDRA_FULL_ERROR")}
    p = subprocess.run([sys.executable, "-m", "tlsweep", "model=efficientnet_lite0", "data=digits", "batch_size=4",
                        "data.image_size=32", "epochs=1"], cwd=tmp_path, capture_output=True, text=True, env=env,
                       timeout=600)
    if p.returncode and "could not be" in p.stderr and "weights" in p.stderr:
        pytest.skip(f"efficientnet_lite0's weights are not here and cannot be fetched: {p.stderr[-300:]}")
    assert p.returncode == 0, p.stderr[-2000:]
    assert "final_val_acc=" in p.stdout and "Traceback" not in p.stderr


def _flat(tmp_path, counts: dict[str, int]) -> Path:
    """Class folders directly under the root, without val/: `counts` images per class."""
    root = tmp_path / "flat"
    root.mkdir()
    for cls, n in counts.items():
        write_image_folder(tmp_path / "w", classes=(cls,), per_split={"x": n})
        shutil.move(tmp_path / "w" / "x" / cls, root / cls)
    return root


def test_a_class_too_small_to_hold_out_is_refused_by_name(make_cfg, tmp_path):
    root = _flat(tmp_path, {"ants": 6, "bees": 6, "wasp": 1})
    with pytest.raises(DataError, match=rf"class 'wasp' has 1 image in {root}; data.val_fraction=0.2 needs at least "
                                        r"2 per class .*add images"):
        D.load(make_cfg(f"data.root={root}", "data.val_fraction=0.2").data)
    root = write_image_folder(tmp_path / "s", classes=("ants", "wasp"), per_split={"train": 1, "val": 1})
    write_image_folder(root, classes=("ants",), per_split={"train": 5}, seed=1)
    with pytest.raises(DataError, match=r"class 'wasp' has 1 image in .*training split.*data.select_fraction=0.3"):
        D.load(make_cfg(f"data.root={root}", "data.select_fraction=0.3").data)


def test_too_few_held_out_images_for_the_classes_are_refused_with_the_fix(tmp_path):
    root = _flat(tmp_path, {c: 2 for c in "abcdefghij"})
    with pytest.raises(DataError, match=r"data.val_fraction=0.2 of the 20 images .* holds out 4, fewer than their "
                                        r"10 classes.*raise data.val_fraction"):
        D.image_folder(root, val_fraction=0.2)


def test_shots_beyond_a_class_name_the_class(make_cfg, tmp_path):
    root = write_image_folder(tmp_path / "d", per_split={"train": 3, "val": 2})
    with pytest.raises(DataError, match=r"data.shots=4 but class 'ants' has only 3 training image\(s\) in .*train: "
                                        r"lower data.shots to 3"):
        D.load(make_cfg(f"data.root={root}", "data.shots=4").data)


# --- 2. other tools' leftovers ------------------------------------------------------------------------

def _litter(root: Path) -> None:
    """What macOS, Windows and Jupyter leave in a folder that was zipped, browsed and opened in a notebook."""
    apple_double = b"\x00\x05\x16\x07" + b"\x00" * 60  # AppleDouble metadata with an image's name
    for split in ("train", "val"):
        (root / split / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
        (root / split / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0")
        (root / split / "desktop.ini").write_text("[.ShellClassInfo]\n")
        (root / split / ".ipynb_checkpoints").mkdir()
        for cls in ("ants", "bees"):
            (root / split / cls / ".DS_Store").write_bytes(b"\x00")
            (root / split / cls / "Thumbs.db").write_bytes(b"\x00")
            (root / split / cls / "._0.png").write_bytes(apple_double)
            (root / split / cls / ".hidden.png").write_bytes(b"not shown")
            (root / split / cls / ".ipynb_checkpoints").mkdir()
            (root / split / cls / ".ipynb_checkpoints" / "0-checkpoint.png").write_bytes(b"garbage")
            (root / split / "__MACOSX" / cls).mkdir(parents=True, exist_ok=True)
            (root / split / "__MACOSX" / cls / "._0.png").write_bytes(apple_double)
            (root / split / cls / "__MACOSX").mkdir()
            (root / split / cls / "__MACOSX" / "._1.png").write_bytes(apple_double)


def test_leftovers_are_neither_classes_nor_images(make_cfg, tmp_path, capsys):
    clean = write_image_folder(tmp_path / "clean")
    root = write_image_folder(tmp_path / "messy")
    _litter(root)
    data = D.load(make_cfg(f"data.root={root}", "data.bad_images=error").data)  # nothing unreadable is listed
    want = D.image_folder(clean)
    assert data.classes == want.classes == ["ants", "bees"]
    assert [os.path.relpath(p, root) for p in data.train.items] == [os.path.relpath(p, clean) for p in want.train.items]
    assert data.train.targets == want.train.targets and len(data.val.items) == len(want.val.items)
    assert data.skipped == [] and "[tlsweep]" not in capsys.readouterr().out


def test_a_class_folder_of_leftovers_only_is_empty(tmp_path):
    root = write_image_folder(tmp_path / "d")
    for f in (root / "val" / "bees").iterdir():
        f.unlink()
    (root / "val" / "bees" / "._0.png").write_bytes(b"\x00\x05\x16\x07")
    with pytest.raises(DataError, match=r"val/bees holds no images"):
        D.image_folder(root)


def test_a_torchvision_folder_dataset_leaves_leftovers_out(make_cfg, tmp_path):
    base = tmp_path / "eurosat" / "2750"
    base.parent.mkdir()
    write_image_folder(tmp_path / "w", classes=("Forest", "River"), per_split={"x": 5})
    shutil.move(tmp_path / "w" / "x", base)
    shutil.copytree(base / "Forest", base / ".ipynb_checkpoints")  # ImageFolder would take it for a class
    shutil.copytree(base / "River", base / "River" / ".ipynb_checkpoints")
    data = D.load(make_cfg("data=torchvision", "data.dataset=EuroSAT", f"data.root={tmp_path}").data)
    assert data.classes == ["Forest", "River"]
    assert len(data.train.items) + len(data.val.items) == 10
    assert not any(".ipynb" in p for p in data.train.items + data.val.items)


# --- 3. every PIL mode to correct RGB -------------------------------------------------------------------

def _pixel(path: Path, xy=(0, 0)) -> tuple[int, ...]:
    return tuple(images.load_rgb(path)[:, xy[1], xy[0]].tolist())


def test_every_mode_becomes_correct_rgb(tmp_path):
    W = images.BACKGROUND
    cases = {}

    def save(name: str, img: Image.Image, expect, **kw):
        img.save(tmp_path / name, **kw)
        cases[name] = expect

    save("l.png", Image.new("L", (4, 3), 90), (90, 90, 90))
    save("one.png", Image.new("1", (4, 3), 1), (255, 255, 255))
    save("la_clear.png", Image.new("LA", (4, 3), (90, 0)), W)  # fully transparent: the background
    save("la_opaque.png", Image.new("LA", (4, 3), (90, 255)), (90, 90, 90))
    p = Image.new("P", (4, 3), 1)
    p.putpalette([0, 0, 0, 200, 30, 10] + [0] * 762)
    save("p.png", p, (200, 30, 10))
    save("p_clear.png", p, W, transparency=1)  # index 1 is transparent
    save("p_clear.gif", p, W, transparency=1)
    save("rgba_clear.png", Image.new("RGBA", (4, 3), (0, 0, 0, 0)), W)  # PIL's convert() gave black
    save("rgba_half.png", Image.new("RGBA", (4, 3), (255, 0, 0, 128)), (255, 127, 127))
    save("rgb_key.png", Image.new("RGB", (4, 3), (10, 20, 30)), W, transparency=(10, 20, 30))  # a tRNS colour key
    save("cmyk.tif", Image.new("CMYK", (4, 3), (255, 0, 0, 0)), (0, 255, 255))  # full cyan
    save("cmyk.jpg", Image.new("CMYK", (4, 3), (0, 0, 0, 0)), (255, 255, 255), quality=100)
    for value, want in ((65535, 255), (32896, 128), (256, 1), (0, 0)):  # convert("RGB") made 256 white
        save(f"i16_{value}.png", Image.fromarray(np.full((3, 4), value, np.uint16)), (want,) * 3)
    save("i16.pgm", Image.fromarray(np.full((3, 4), 32896, np.uint16)), (128,) * 3)  # PIL opens it as "I"
    save("f01.tif", Image.fromarray(np.full((3, 4), 0.5, np.float32)), (128,) * 3)
    save("f255.tif", Image.fromarray(np.full((3, 4), 200.0, np.float32)), (200,) * 3)
    modes = {name: Image.open(tmp_path / name).mode for name in cases}
    assert {"L", "1", "LA", "P", "RGBA", "RGB", "CMYK", "I;16", "I", "F"} <= set(modes.values()), modes
    for name, expect in cases.items():
        got = _pixel(tmp_path / name)
        assert max(abs(a - b) for a, b in zip(got, expect)) <= 1, (name, modes[name], got, expect)
    assert images.unreadable([str(tmp_path / n) for n in cases]) == []  # the screen decodes them the same way


def _exif_jpeg(path: Path, orientation: int) -> Image.Image:
    """A 20 wide, 10 high JPEG, left half red, whose EXIF says how a viewer turns it."""
    a = np.zeros((10, 20, 3), np.uint8)
    a[:, :10, 0] = 255
    a[:, 10:, 2] = 255
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(a).save(path, exif=exif, quality=100)
    with Image.open(path) as img:
        return ImageOps.exif_transpose(img)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_an_exif_rotated_jpeg_is_upright_and_its_size_estimate_exact(tmp_path, orientation):
    path = tmp_path / f"o{orientation}.jpg"
    viewer = _exif_jpeg(path, orientation)
    x = images.load_rgb(path)
    assert x.shape == (3, 20, 10) if orientation >= 5 else (3, 10, 20)
    assert torch.equal(x, torch.from_numpy(np.array(viewer.convert("RGB"))).permute(2, 0, 1))
    assert images.displayed_size(path) == ((10, 20) if orientation >= 5 else (20, 10))  # from the header
    assert decoded_size_bytes([str(path)], 8) == 3 * 8 * 16  # short side 8, long side 16, either way round


def test_a_png_whose_exif_follows_its_pixels_is_turned_and_sized_exactly(tmp_path):
    """PIL reads an eXIf chunk after IDAT only when decoding: the image is still turned, and the estimate,
    which reads headers only, still counts its bytes."""
    buf = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.new("RGB", (20, 10)).save(buf, "PNG", exif=exif)
    raw, pos, chunks = buf.getvalue(), 8, []
    while pos < len(raw):
        (n,) = struct.unpack(">I", raw[pos:pos + 4])
        chunks.append((raw[pos + 4:pos + 8], raw[pos:pos + 12 + n]))
        pos += 12 + n
    order = [b"IHDR", b"IDAT", b"eXIf", b"IEND"]
    path = tmp_path / "late.png"
    path.write_bytes(raw[:8] + b"".join(c for k in order for kind, c in chunks if kind == k))
    assert images.load_rgb(path).shape == (3, 20, 10)
    assert decoded_size_bytes([str(path)], 10) == 3 * 10 * 20


# --- 4. names and links -----------------------------------------------------------------------------------

def test_unicode_names_spaces_and_links_work_and_a_dangling_link_is_named(make_cfg, tmp_path):
    root = write_image_folder(tmp_path / "mes données" / "été 2024", classes=("café au lait", "日本 語"))
    elsewhere = write_image_folder(tmp_path / "elsewhere", classes=("ours",), per_split={"train": 2, "val": 2})
    for split in ("train", "val"):
        os.symlink(elsewhere / split / "ours", root / split / "ours brun")  # a linked class folder
        os.symlink(elsewhere / split / "ours" / "0.png", root / split / "café au lait" / "lien.png")  # a linked file
    dangling = root / "train" / "日本 語" / "parti.png"
    os.symlink(tmp_path / "gone.png", dangling)
    cfg = make_cfg(f"data.root='{root}'", "data.bad_images=error")
    with pytest.raises(DataError, match=re.escape(f"{dangling}: a symbolic link to {tmp_path / 'gone.png'}, which")):
        D.load(cfg.data)
    dangling.unlink()
    data = D.load(cfg.data)
    assert data.classes == ["café au lait", "ours brun", "日本 語"]
    assert len(data.train.items) == 6 + 1 + 2 + 6  # café au lait with its linked file, ours brun, 日本 語
    assert str(root / "train" / "café au lait" / "lien.png") in data.train.items


def test_class_names_match_across_unicode_normal_forms(tmp_path):
    """macOS stores names decomposed (NFD): a val/ copied from it still has train/'s classes."""
    import unicodedata

    root = write_image_folder(tmp_path / "d", classes=(unicodedata.normalize("NFC", "café"), "thé"))
    (root / "val" / "café").rename(root / "val" / unicodedata.normalize("NFD", "café"))
    data = D.image_folder(root)
    assert data.classes == ["café", "thé"] and sorted(set(data.val.targets)) == [0, 1]


# --- 5. decompression bombs --------------------------------------------------------------------------------

def test_a_bomb_file_is_small_and_quick_to_make(tmp_path):
    t0 = time.perf_counter()
    big, mid = bombs(tmp_path)
    assert time.perf_counter() - t0 < 2 and big.stat().st_size < 400_000 and mid.stat().st_size < 400_000
    with Image.open(mid) as img:
        assert img.size == (10_000, 10_000)


@pytest.mark.parametrize("mode", ["skip", "error"])
def test_bombs_are_named_within_seconds_and_never_decoded(make_cfg, tmp_path, decodes, mode):
    root = write_image_folder(tmp_path / "d")
    big, mid = bombs(root / "train" / "ants")
    cfg = make_cfg(f"data.root={root}", f"data.bad_images={mode}")
    t0 = time.perf_counter()
    if mode == "error":
        with pytest.raises(DataError, match=rf"2 image file\(s\) cannot be read.*({big}|{mid}).*({big}|{mid})"):
            D.load(cfg.data)
    else:
        with pytest.warns(UserWarning, match="left out 2"):
            data = D.load(cfg.data)
        assert sorted(data.skipped) == sorted([str(big), str(mid)])
        assert str(mid) not in data.train.items
    assert time.perf_counter() - t0 < 5
    assert not {"bomb200mp.png", "bomb100mp.png"} & set(decodes), decodes


def test_a_bomb_is_found_with_warnings_as_errors(tmp_path):
    """Under `-W error` PIL raises its own warning for a bomb below twice the limit: still named, not a crash."""
    _, mid = bombs(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert [p for p, _ in images.unreadable([str(mid)])] == [str(mid)]


def test_the_size_estimate_reads_a_bomb_header_without_decoding_it(tmp_path, decodes):
    _, mid = bombs(tmp_path)
    assert decoded_size_bytes([str(mid)], 16) == 3 * 16 * 16
    assert decodes == []
    with pytest.raises(DataError, match="MAX_IMAGE_PIXELS"):
        images.load_rgb(mid)


# --- 6. a skip is seen ---------------------------------------------------------------------------------------

def test_a_skip_is_printed_with_warnings_ignored_and_tagged(make_cfg, store_uri, tmp_path, capsys):
    root = write_image_folder(tmp_path / "d")
    bad = root / "train" / "bees" / "2.png"
    bad.write_text("garbage")
    mid = write_bomb(root / "train" / "ants" / "bomb100mp.png", 10_000, 10_000)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # what PYTHONWARNINGS=ignore does
        run(make_cfg(f"data.root={root}", "data.bad_images=skip", NULL, "strategy=probe"))
    out = capsys.readouterr().out
    line = next(line for line in out.splitlines() if "left out" in line)
    assert line.startswith("[tlsweep] imagefolder: left out 2 unreadable image file(s) (data.bad_images=skip): ")
    assert f"{bad}: UnidentifiedImageError" in line and f"{mid}: DecompressionBombError" in line
    assert _tag(store_uri, Tag.BAD_IMAGES) in (f"2 skipped: {bad}, {mid}", f"2 skipped: {mid}, {bad}")


# --- 7. a split emptied by skips ---------------------------------------------------------------------------

@pytest.mark.parametrize("split", ["train", "val"])
def test_a_split_left_empty_by_skips_is_refused_by_name(make_cfg, tmp_path, split):
    root = write_image_folder(tmp_path / "d")
    for f in (root / split).rglob("*.png"):
        f.write_text("garbage")
    with pytest.raises(DataError, match=rf"the {split} split \({root / split}\) has no readable image left"):
        D.load(make_cfg(f"data.root={root}", "data.bad_images=skip").data)


def test_a_select_split_left_empty_by_skips_is_refused_by_name():
    data = ImageData("t", ["a", "b"], Split([torch.zeros(3, 2, 2)] * 2, [0, 1]), Split([torch.zeros(3, 2, 2)], [0]))
    data.select = Split(["/nowhere/select/a.png", "/nowhere/select/b.png"], [0, 1])
    with pytest.raises(DataError, match=r"the select split \(/nowhere/select\) has no readable image left"):
        images.screen(data, "skip")


def test_a_hugging_face_dataset_decodes_through_the_same_function(make_cfg, tmp_path, decodes):
    """Rows are decoded by `images` too: a transparent image over the same background, a bomb refused from
    its header and named by its row."""
    datasets = pytest.importorskip("datasets")
    bomb = write_bomb(tmp_path / "bomb100mp.png", 10_000, 10_000).read_bytes()

    def png(img: Image.Image) -> dict:
        buf = io.BytesIO()
        img.save(buf, "PNG")
        return {"bytes": buf.getvalue(), "path": None}

    rows = [png(Image.new("RGBA", (8, 8), (0, 0, 0, 0))), png(Image.new("RGB", (8, 8), (0, 90, 0))),
            {"bytes": bomb, "path": None}, png(Image.new("RGB", (8, 8), (90, 0, 0)))]
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b"])})
    split = datasets.Dataset.from_dict({"image": rows, "label": [0, 1, 0, 1]}, features=features)
    folder = tmp_path / "hf"
    datasets.DatasetDict({"train": split, "test": split}).save_to_disk(str(folder))
    with pytest.warns(UserWarning, match=r"left out 2 unreadable.*hf/train\[2\]: DecompressionBombError"):
        data = D.load(make_cfg("data=hf", f"data.path={folder}").data)
    assert len(data.train.items) == len(data.val.items) == 3 and data.train.targets == [0, 1, 1]
    assert data.train.items[0][:, 0, 0].tolist() == list(images.BACKGROUND)
    assert sorted(data.skipped) == ["hf/test[2]", "hf/train[2]"] and "10000x10000" not in decodes
    assert "8x8" in decodes  # the spy sees what is decoded
    with pytest.raises(DataError, match=r"hf/train\[2\]: DecompressionBombError"):
        D.load(make_cfg("data=hf", f"data.path={folder}", "data.bad_images=error").data)


# --- batch_size=1: every training batch is a batch of one -----------------------------------------------

@pytest.mark.parametrize("arch,overrides,refused", [
    ("resnet10t", ["strategy=finetune"], "strategy finetune trains 14 BatchNorm layer(s) of resnet10t in train mode ("),
    ("resnet10t", ["strategy=gradual", "epochs=2"], "resnet10t in train mode from epoch 2 (layer4.0.bn1"),  # epoch 1: probe
    ("resnet10t", ["strategy=probe"], None),
    ("resnet10t", ["strategy=finetune", "strategy.freeze_bn=all"], None),
    ("vit_tiny_patch16_224", ["strategy=finetune"], None),  # LayerNorm only: no batch statistic
], ids=["finetune", "gradual-2-epochs", "probe", "finetune-bn-eval", "vit-finetune"])
def test_batch_size_one_is_refused_only_where_a_batchnorm_trains_in_train_mode(make_cfg, monkeypatch, arch, overrides,
                                                                                refused):
    """resnet10t at 32 px ends in a 1x1 map, where a train-mode BatchNorm cannot normalize one sample: such a run
    is refused before its data is read, and ends FAILED; a run whose every BatchNorm stays in eval mode, or that
    has none, trains in batches of one."""
    cfg = make_cfg("model=timm", f"model.arch={arch}", NULL, "batch_size=1", *overrides)
    if refused:
        monkeypatch.setattr(D, "load", lambda *a, **k: pytest.fail("data was read before the refusal"))
        with pytest.raises(ConfigError) as err:
            run(cfg)
        assert str(err.value).startswith("batch_size=1: ") and refused in str(err.value), str(err.value)
        assert "batch_size>=2" in str(err.value) and "strategy.freeze_bn=all" in str(err.value)
        assert _tag(cfg.tracking.uri, Tag.ERROR).endswith(str(err.value))  # the same line, in the FAILED run
        status = "FAILED"
    else:
        assert 0 <= run(cfg)["final_val_acc"] <= 1
        status = "FINISHED"
    client = MlflowClient(cfg.tracking.uri)
    (last,) = client.search_runs([client.get_experiment_by_name("tlsweep").experiment_id],
                                 order_by=["attributes.start_time DESC"], max_results=1)
    assert last.info.status == status
