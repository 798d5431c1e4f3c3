"""Tests compose the real Hydra config and shrink it: tiny images, few of them, 1 epoch."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from PIL import Image
import tlsweep.config.schema  # noqa: F401 -- registers the config schema that conf/ extends

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"
# The real data lies beside a checkout, never in it. TLSWEEP_HYMENOPTERA moves it; CI points it at
# nothing to prove that a clone with nothing beside it passes (see .ci/run).
_HYMENOPTERA = Path(os.environ.get("TLSWEEP_HYMENOPTERA", REPO / ".." / "shared" / "data" / "hymenoptera_data")).resolve()


@pytest.fixture(scope="session")
def hymenoptera() -> Path:
    """The real hymenoptera data; the test is skipped, saying why, where it is absent.

    The only way a test gets the real data: a test that uses it is marked `real_data`, and one
    that reads the folder without it fails (see `pytest_runtest_call`)."""
    if not (_HYMENOPTERA / "train").is_dir():
        pytest.skip(f"real data not at {_HYMENOPTERA} (put hymenoptera_data there or set TLSWEEP_HYMENOPTERA)")
    return _HYMENOPTERA


DEFAULT_TIER = "not slow and not services"  # pyproject.toml's addopts
if os.environ.get("PYTEST_XDIST_WORKER"):  # workers of one thread each, and so are the processes a test starts:
    import torch  # the workers only: the main process starts them without waiting for torch's import

    torch.set_num_threads(1)  # tiny tensors gain nothing from a second thread, and the workers share the cores
    os.environ["OMP_NUM_THREADS"] = "1"


def pytest_xdist_auto_num_workers(config) -> int:
    """`-n auto` (pyproject.toml): the whole default tier runs in two processes, a file per worker at a time. A run of
    chosen files or tests, or of the full tier, runs in this one process: the full tier starts daemons once per
    session, times whole sweeps and holds the golden number, which needs two threads."""
    chosen = [a for a in config.args if Path(a).resolve() != REPO / "tests"]
    return 2 if config.getoption("markexpr") == DEFAULT_TIER and not chosen else 0


def pytest_unconfigure(config):
    """A worker's last act: its heap (about a million objects after the tier) goes to the OS with the process
    instead of through the collector at interpreter exit, which the main process waits for (seconds)."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        import gc

        gc.freeze()


def pytest_collection_modifyitems(items):
    for item in items:
        if "hymenoptera" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.real_data)


_touched: list[str] = []


def _audit(event: str, args: tuple) -> None:
    # open(), os.listdir and os.scandir all pass here: any read of the real data is seen
    if event in ("open", "os.listdir", "os.scandir") and args and isinstance(args[0], (str, os.PathLike)):
        if str(args[0]).startswith(str(_HYMENOPTERA)):
            _touched.append(str(args[0]))


sys.addaudithook(_audit)  # audit hooks cannot be removed; this one only appends to a list


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    """A test that reads the real data without the `hymenoptera` fixture would fail on a clone with
    nothing beside it instead of being skipped: fail it here, where the data is present."""
    _touched.clear()
    yield
    if _touched and item.get_closest_marker("real_data") is None:
        pytest.fail(f"{item.nodeid} read the real data ({_touched[0]}) without the `hymenoptera` fixture, "
                    "so it would fail, not skip, where the data is absent", pytrace=False)


def write_image_folder(root: Path, classes=("ants", "bees"), per_split=None, seed: int = 0) -> Path:
    """A small ImageFolder of real PNG files whose classes differ in colour (so they are learnable)."""
    rng = np.random.default_rng(seed)
    per_split = per_split or {"train": 6, "val": 4}
    for split, n in per_split.items():
        for c, cls in enumerate(classes):
            d = root / split / cls
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                h, w = rng.integers(28, 48, size=2)
                img = rng.integers(0, 90, size=(h, w, 3), dtype=np.uint8)
                img[..., c % 3] += 150
                Image.fromarray(img).save(d / f"{i}.png")
    return root


def damage(entry, how: str) -> None:
    """Leave a cache file as a crash, a bad copy or a wrong writer could."""
    if how == "truncated":  # a writer killed half-way, or a copy cut short
        entry.write_bytes(entry.read_bytes()[: entry.stat().st_size // 2])
    elif how == "garbage":
        entry.write_bytes(os.urandom(entry.stat().st_size))
    elif how == "inconsistent":  # loads fine, but its layout no longer describes its contents
        import torch

        saved = torch.load(entry, weights_only=True)
        key = "sizes" if "sizes" in saved else "train"
        saved[key] = saved[key].flip(0)[:-1]
        torch.save(saved, entry)


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory) -> Path:
    return write_image_folder(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="session")
def store_uri(tmp_path_factory) -> str:
    """One SQLite store for the session: creating one runs a schema migration that takes seconds."""
    from tlsweep.tracking.runs import setup_store

    uri = f"sqlite:///{tmp_path_factory.mktemp('store') / 'mlflow.db'}"
    setup_store(uri)
    return uri


@pytest.fixture
def make_cfg(tiny_root, store_uri):
    """compose(overrides) -> the real config, shrunk to the tiny data and the session's store."""

    def make(*overrides: str):
        # device and precision pinned, so that a test computes the same on any machine (bf16=auto is on only
        # where the CPU has bf16 units; tests/test_bf16.py covers it)
        base = ["data.image_size=32", "data.num_workers=0", "epochs=1", "batch_size=4", "device=cpu", "bf16=false",
                f"tracking.uri={store_uri}", f"cache_dir={store_uri.removeprefix('sqlite:///')}.cache"]
        if not any(o.startswith("data=") for o in overrides):
            base = ["data=imagefolder", f"data.root={tiny_root}", *base]
        with initialize_config_dir(config_dir=str(CONF), version_base=None):
            return compose("config", overrides=base + list(overrides))

    return make


def model_spec(name: str, *overrides: str, image_size: int | None = None):
    """The ModelSpec of conf/model/<name>.yaml (or model=timm with `model.arch=...` in overrides)."""
    from tlsweep.models import get_spec

    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        cfg = compose("config", overrides=[f"model={name}", *overrides])
    return get_spec(cfg.model, image_size)


# Small random-init timm models, one per family tlsweep cuts as a chain (and one it cannot): the
# families the tests run every strategy on. Built at 32 px, each takes well under a second.
TINY_TIMM = ["resnet10t", "efficientnet_b0", "convnext_atto", "vit_tiny_patch16_224", "mobilenetv3_small_050"]


@pytest.fixture
def fake_hub(monkeypatch):
    """Stand in for the Hugging Face hub: timm's hub loader returns a random state dict of the
    requested architecture (seeded). Everything after the download (timm's filter, strict load) runs for real."""
    import timm
    import timm.models._builder
    import torch

    from tlsweep import models

    calls = []

    def fake(model_id, filename=None, *args, **kwargs):
        calls.append(model_id)
        torch.manual_seed(1234)
        return timm.create_model(model_id.split("/")[-1], pretrained=False).state_dict()

    monkeypatch.setattr(timm.models._builder, "load_state_dict_from_hf", fake)
    monkeypatch.setattr(models.weights, "hub_unreachable", lambda where: None)
    return calls


@pytest.fixture
def fake_torchvision_download(monkeypatch):
    """Stand in for the network: the torchvision weights "download" returns a random
    ImageNet-shaped state dict of the requested architecture. Everything after the
    download (key check, hash-free load, head drop) runs for real."""
    import torch
    import torchvision
    import torchvision.models._api

    by_url = {torchvision.models.get_model_weights(name).DEFAULT.url: name
              for name in ("mobilenet_v3_large", "convnext_tiny", "vit_b_16")}
    calls = []

    def fake(url, *args, **kwargs):
        calls.append(url)
        torch.manual_seed(1234)
        return torchvision.models.get_model(by_url[url], weights=None).state_dict()

    # the one function WeightsEnum.get_state_dict downloads with
    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", fake)
    return calls
