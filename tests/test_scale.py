"""Data at scale: the decoded store is held once (not a multiple of its size), and the processes of a node share one
copy of it on disk. Each check runs in a fresh process, where the peak memory and the mappings are its own."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import REPO

N, SIDE, RESIZE = 500, 48, 256  # 500 images upscaled to 256 px: a 98 MB store


def _folder(root: Path) -> list[str]:
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(N):
        path = root / f"{i}.png"
        Image.fromarray(rng.integers(0, 255, (SIDE, SIDE, 3), dtype=np.uint8)).save(path)
        paths.append(str(path))
    return paths


def _python(code: str, **kw) -> dict:
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, cwd=REPO,
                         timeout=300, **kw)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


HEADER = """
    import json, resource, sys
    import torch
    from torchvision.transforms.v2 import InterpolationMode
    from tlsweep.data import decoded as fastdata
    from tlsweep.data.images import load_rgb
    paths = json.loads(sys.argv[1]) if len(sys.argv) > 1 else None
    def peak_mb():
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KB on Linux
"""


@pytest.mark.slow  # fresh processes, each importing torch: the full tier
def test_a_decode_peaks_at_the_store_plus_a_margin_not_a_multiple_of_it(tmp_path):
    paths = _folder(tmp_path / "img")
    code = HEADER + f"""
    paths = json.load(open({str(tmp_path / 'paths.json')!r}))
    need = fastdata.decoded_size_bytes(paths, {RESIZE}) / 2**20
    load_rgb(paths[0]); torch.empty(1).add_(1)  # the libraries' own first allocations, before the baseline
    before = peak_mb()
    store = fastdata.decode_images(paths, [0] * len(paths), {RESIZE}, InterpolationMode.BILINEAR, load_rgb)
    print(json.dumps({{"need": need, "grew": peak_mb() - before, "held": store.pixels.nbytes / 2**20}}))
    """
    (tmp_path / "paths.json").write_text(json.dumps(paths))
    got = _python(code)
    assert got["held"] == got["need"] > 90
    # one copy of the store, plus the images in flight in the decoding threads; a list of images concatenated
    # afterwards held two copies at its peak
    assert got["grew"] < 1.15 * got["need"] + 32, got


@pytest.mark.slow  # fresh processes, each importing torch: the full tier
def test_two_processes_share_one_decoded_store_on_disk_and_the_second_decodes_nothing(tmp_path):
    paths = _folder(tmp_path / "img")[:60]
    (tmp_path / "paths.json").write_text(json.dumps(paths))
    cache = tmp_path / "cache"
    code = HEADER + f"""
    paths = json.load(open({str(tmp_path / 'paths.json')!r}))
    calls = []
    def loader(item):
        calls.append(item)
        return load_rgb(item)
    store = fastdata.decode_images(paths, list(range(len(paths))), {RESIZE}, InterpolationMode.BILINEAR, loader,
                                   cache_dir={str(cache)!r})
    mapped = [line.split()[-1] for line in open("/proc/self/maps") if "decoded-" in line]
    print(json.dumps({{"decoded": len(calls), "mapped": sorted(set(mapped)),
                       "sum": int(store.pixels.sum()), "targets": store.targets.tolist()[:3]}}))
    """
    first = _python(code)
    second = _python(code)
    entry = [str(p) for p in cache.glob("decoded-*.pt")]
    assert first["decoded"] == len(paths) and len(entry) == 1
    assert second["decoded"] == 0  # read from the first one's store
    assert second["mapped"] == entry  # through a memory map: the page cache holds one copy for the node
    assert second["sum"] == first["sum"] and second["targets"] == [0, 1, 2]


def test_the_decoded_store_goes_to_disk_where_the_launcher_runs_jobs_in_processes_of_their_own(monkeypatch):
    from types import SimpleNamespace

    from hydra.core.hydra_config import HydraConfig

    from tlsweep.data.pipeline import store_on_disk

    assert store_on_disk(True) and not store_on_disk(False)
    assert not store_on_disk("auto")  # a direct run(cfg): no Hydra, one process
    monkeypatch.setattr(HydraConfig, "initialized", staticmethod(lambda: True))
    for target, apart in [("hydra._internal.core_plugins.basic_launcher.BasicLauncher", False),
                          ("hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher", True),
                          ("hydra_plugins.tlsweep_slurm.SlurmLauncher", True)]:
        monkeypatch.setattr(HydraConfig, "get", staticmethod(lambda t=target: SimpleNamespace(launcher={"_target_": t})))
        assert store_on_disk("auto") is apart, target


def test_the_screen_of_the_files_is_kept_on_disk_for_the_sweeps_other_processes(tmp_path, monkeypatch):
    from tlsweep.data import images

    paths = _folder(tmp_path / "img")[:8]
    Path(paths[3]).write_bytes(b"not an image")
    cache = tmp_path / "cache"
    monkeypatch.setattr(images, "_SCREENED", {})
    first = images.unreadable(paths, cache)
    assert [p for p, _ in first] == [paths[3]]
    saved, = cache.glob("screen-*.json")
    monkeypatch.setattr(images, "_SCREENED", {})  # as a new process starts

    def no_decoding(path):
        raise AssertionError(f"decoded {path} again")

    monkeypatch.setattr(images, "open_image", no_decoding)
    assert images.unreadable(paths, cache) == first  # read from the disk, nothing decoded
    saved.write_text("[[")  # cut short: screened again, and written again
    monkeypatch.setattr(images, "_SCREENED", {})
    monkeypatch.undo()
    monkeypatch.setattr(images, "_SCREENED", {})
    assert images.unreadable(paths, cache) == first and json.loads(saved.read_text()) == [list(first[0])]
