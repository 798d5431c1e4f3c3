"""Every expected mistake is stopped at the door: one row per mistake.

Each row checks what the CLI turns into its exit code (a UserError's `exit_code`, or a config Hydra
refused to compose: 2), that the message names the key or the file, and that no MLflow run is left
RUNNING (a run that was started ends FAILED with the message). Rows run in-process; one subprocess
checks the console itself: exit code 2, the message, no traceback.
"""
from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra.errors import HydraException
from mlflow.tracking import MlflowClient

from tests.conftest import write_image_folder
from tlsweep.config import schema
from tlsweep.config.errors import UserError
from tlsweep.run import run


def _running(store_uri) -> list:
    client = MlflowClient(store_uri)
    exp = client.get_experiment_by_name("tlsweep")
    if exp is None:
        return []
    return client.search_runs([exp.experiment_id], "attributes.status = 'RUNNING'")


def _attempt(make_cfg, store_uri, overrides) -> tuple[int, str, str | None]:
    """(exit code as the CLI gives it, message, the run's error tag or None when no run started)."""
    client = MlflowClient(store_uri)
    exp = client.get_experiment_by_name("tlsweep")
    before = {r.info.run_id for r in client.search_runs([exp.experiment_id])} if exp else set()
    try:
        cfg = make_cfg(*overrides)
    except HydraException as err:  # composition: Hydra prints it without a traceback; the CLI exits 2
        return 2, str(err) + str(err.__cause__ or ""), None
    with pytest.raises(UserError) as info:
        run(cfg)
    exp = client.get_experiment_by_name("tlsweep")
    new = [r for r in client.search_runs([exp.experiment_id]) if r.info.run_id not in before]
    assert len(new) == 1 and new[0].info.status == "FAILED", [(r.info.run_name, r.info.status) for r in new]
    return info.value.exit_code, str(info.value), new[0].data.tags.get("tlsweep.error")


NULL = "model.weights=null"
ROWS = [
    # types, at composition (the schema)
    (["optim.lr=fast"], "optim.lr"),
    (["epochs=[1,2]"], "epochs"),
    (["batch_size=3.5"], "batch_size"),
    (["strategy.pretrained=maybe"], "strategy.pretrained"),
    (["strategy.freeze_bn=yes"], "strategy.freeze_bn"),
    (["data.bad_images=ignore"], "data.bad_images"),
    (["data.shots=many"], "data.shots"),
    (["strategy.probe_epoch=3"], "strategy.probe_epoch"),  # a typo: not a key
    (["strategy=finetune", "strategy.probe_epochs=3"], "strategy.probe_epochs"),  # lpft's key, not finetune's
    (["model=resnet19"], "model/resnet19"),
    # the README's old workaround for a mixed sweep: `++` adds the key, and finetune's job refuses it
    (["strategy=finetune", "++strategy.probe_epochs=3", NULL], "strategy finetune has no key probe_epochs"),
    # ranges and relations, before any data is read
    (["epochs=0", NULL], "epochs=0"),
    (["batch_size=0", NULL], "batch_size=0"),
    (["seed=-1", NULL], "seed=-1"),
    (["optim.lr=0", NULL], "optim.lr=0"),
    (["optim.lr=-0.001", NULL], "optim.lr=-0.001"),
    (["optim.weight_decay=-0.1", NULL], "optim.weight_decay=-0.1"),
    (["optim=sgd", "optim.momentum=1.5", NULL], "optim.momentum=1.5"),
    (["optim.scheduler=step", NULL], "optim.scheduler=step"),
    (["data.shots=0", NULL], "data.shots=0"),  # 0 is not null ("every image")
    (["data.select_fraction=1.5", NULL], "data.select_fraction=1.5"),
    (["data.val_fraction=0", NULL], "data.val_fraction=0"),
    (["data.image_size=8", NULL], "data.image_size=8"),
    (["strategy=llrd", "strategy.layer_decay=0", NULL], "strategy.layer_decay"),
    (["strategy.backbone_lr_scale=-1", NULL], "strategy.backbone_lr_scale"),
    (["strategy.feature_views=0", NULL], "strategy.feature_views=0"),  # 0 is not null (one per epoch)
    (["strategy=lora", "strategy.rank=0", NULL], "rank"),
    (["strategy=lpft", "epochs=2", NULL], "strategy.probe_epochs=2"),
    (["strategy=partial", "strategy.unfreeze=[layer5]", NULL], "layer5"),
    # the score rung reads the feature cache: refused without it, by its key or at the run's first segment
    (["strategy=score", "strategy.cache_features=false", NULL], "strategy.cache_features=False"),
    # (data.cache=false no longer: the feature pass streams the files) features over the budget with no disk for them
    (["strategy=score", "data.cache_budget_mb=0.001", "cache_dir=null", NULL],
     "strategy=score scores the cached frozen features"),
    (["device=gpu", NULL], "device=gpu"),
    (["model.weights=/no/such/model.pth"], "/no/such/model.pth"),
    (["data.root=/no/such/folder", NULL], "/no/such/folder"),
    (["data=imagefolder", NULL], "data.root is required"),
]
if not torch.cuda.is_available():
    ROWS.append((["device=cuda", NULL], "device=cuda: not on this machine (found: cpu"))
if not torch.backends.mps.is_available():
    ROWS.append((["device=mps", NULL], "device=mps: not on this machine"))


@pytest.mark.parametrize("overrides,names", ROWS, ids=[" ".join(o) for o, _ in ROWS])
def test_a_bad_config_is_refused_naming_the_key(make_cfg, store_uri, overrides, names):
    code, message, tag = _attempt(make_cfg, store_uri, overrides)
    assert code == 2, message
    assert names in message, message
    assert tag is None or tag.endswith(message), tag  # the run records the same message
    assert not _running(store_uri)


def test_a_refused_key_gets_its_near_match_or_its_owners():
    assert schema.hints(["strategy.probe_epoch=3"]) == \
        ["tlsweep: no key strategy.probe_epoch; did you mean strategy.probe_epochs?"]
    assert schema.hints(["optim.learning_rate=0.1"]) == []  # nothing close: Hydra's message alone
    assert "key of gradual, lpft only" in schema.hints(["strategy=finetune", "strategy.probe_epochs=3"])[0] \
        .replace("lpft, gradual", "gradual, lpft")
    # lpft owns the key: whatever Hydra refused, it was not that
    assert schema.hints(["strategy=lpft", "strategy.probe_epochs=3", "optim.lr=fast"]) == []
    assert schema.hints(["strategy=lpft,finetune", "strategy.probe_epochs=3"])  # finetune lacks it


# ---- data --------------------------------------------------------------------------------------------

def _folder(tmp_path, **kw) -> Path:
    return write_image_folder(tmp_path / "data", **kw)


def test_an_unreadable_image_is_refused_with_its_path_when_asked(make_cfg, store_uri, tmp_path):
    root = _folder(tmp_path)
    bad = root / "train" / "ants" / "0.png"
    bad.write_bytes(b"not an image at all")
    code, message, tag = _attempt(make_cfg, store_uri, [f"data.root={root}", "data.bad_images=error", NULL])
    assert code == 2 and str(bad) in message and "data.bad_images=skip" in message, message
    assert not _running(store_uri)


def test_a_truncated_image_is_found_by_decoding_not_by_opening(make_cfg, store_uri, tmp_path):
    root = _folder(tmp_path)
    cut = root / "val" / "bees" / "1.png"
    cut.write_bytes(cut.read_bytes()[:200])  # the header opens; the pixels end early
    code, message, _ = _attempt(make_cfg, store_uri, [f"data.root={root}", "data.bad_images=error", NULL])
    assert code == 2 and str(cut) in message, message


def test_skip_leaves_unreadable_images_out_and_says_so(make_cfg, store_uri, tmp_path):
    root = _folder(tmp_path)
    bad = root / "train" / "bees" / "2.png"
    bad.write_text("garbage")
    with pytest.warns(UserWarning, match=str(bad)):
        result = run(make_cfg(f"data.root={root}", "data.bad_images=skip", NULL, "strategy=probe"))
    assert 0 <= result["final_val_acc"] <= 1
    client = MlflowClient(store_uri)
    exp = client.get_experiment_by_name("tlsweep")
    last = client.search_runs([exp.experiment_id], order_by=["attributes.start_time DESC"], max_results=1)[0]
    assert last.info.status == "FINISHED"
    assert last.data.tags["tlsweep.data.bad_images"] == f"1 skipped: {bad}"


def test_a_class_left_without_training_images_is_refused_by_name(make_cfg, store_uri, tmp_path):
    root = _folder(tmp_path)
    for f in (root / "train" / "bees").iterdir():
        f.write_text("garbage")
    code, message, _ = _attempt(make_cfg, store_uri, [f"data.root={root}", NULL])
    assert code == 2 and "bees have no training image" in message, message


def test_one_class_is_refused_never_a_perfect_score(make_cfg, store_uri, tmp_path):
    root = _folder(tmp_path, classes=("ants",))
    code, message, _ = _attempt(make_cfg, store_uri, [f"data.root={root}", NULL])
    assert code == 2 and "1 class(es) with images (ants)" in message and "at least two" in message, message
    assert not _running(store_uri)


def test_a_val_class_that_train_lacks_is_refused_by_name(make_cfg, store_uri, tmp_path):
    root = _folder(tmp_path)
    write_image_folder(root, classes=("ants", "bees", "wasps"), per_split={"val": 2})
    code, message, _ = _attempt(make_cfg, store_uri, [f"data.root={root}", NULL])
    assert code == 2 and "wasps" in message, message


# ---- checkpoints ---------------------------------------------------------------------------------------

class _Payload:
    def __reduce__(self):
        return (os.system, ("echo never run",))


@pytest.mark.parametrize("name,content,says", [
    ("notes.pth", b"these are my notes, not weights", "is not a loadable checkpoint"),
    ("model.safetensors", b"\x00" * 64, "is not a loadable checkpoint"),
    ("code.pth", pickle.dumps(_Payload()), "refused: the file is a pickle that would run code"),
    ("list.pth", None, "holds a list with no tensors"),
])
def test_a_file_that_is_no_checkpoint_says_so_in_one_line(make_cfg, store_uri, tmp_path, name, content, says):
    path = tmp_path / name
    if content is None:
        torch.save([1, 2, 3], path)
    else:
        path.write_bytes(content)
    code, message, _ = _attempt(make_cfg, store_uri, [f"model.weights={path}", "strategy=probe"])
    assert code == 2 and str(path) in message and says in message and "\n" not in message, message
    if "loadable" in says:
        assert ".safetensors" in message and ".pth" in message  # the formats it takes


def test_a_checkpoint_of_another_model_is_refused(make_cfg, store_uri, tmp_path):
    path = tmp_path / "other.pth"
    torch.save(torch.nn.Linear(3, 2).state_dict(), path)
    code, message, _ = _attempt(make_cfg, store_uri, [f"model.weights={path}", "strategy=probe"])
    assert code == 2 and "does not match the architecture" in message, message


# ---- the console -------------------------------------------------------------------------------------

def test_the_console_exits_2_with_the_message_and_no_traceback(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "HYDRA_FULL_ERROR")}
    p = subprocess.run([sys.executable, "-m", "tlsweep", "strategy.probe_epoch=3"], cwd=tmp_path,
                       capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 2, p.stderr
    assert "strategy.probe_epoch" in p.stderr and "did you mean strategy.probe_epochs?" in p.stderr
    assert "Traceback" not in p.stderr + p.stdout
    assert not (tmp_path / "mlruns").exists()  # refused before a store or run was made


# ---- data faults: a damaged or hostile file, or a class too small, is refused by name -------------------

def _data_fault_bomb(root: Path):
    from tests.test_messy_data import write_bomb

    write_bomb(root / "train" / "ants" / "huge.png", 14_143, 14_143)
    return ["data.bad_images=error"], str(root / "train" / "ants" / "huge.png")


def _data_fault_dangling_link(root: Path):
    os.symlink(root / "moved-away.png", root / "train" / "bees" / "gone.png")
    return ["data.bad_images=error"], f"{root / 'train' / 'bees' / 'gone.png'}: a symbolic link"


def _data_fault_val_fraction(root: Path):
    import shutil

    shutil.rmtree(root / "val")
    for f in list((root / "train" / "bees").iterdir())[1:]:
        f.unlink()
    return ["data.val_fraction=0.2"], "class 'bees' has 1 image"


def _data_fault_shots(root: Path):
    return ["data.shots=7"], "class 'ants' has only 6 training image(s)"


def _data_fault_val_emptied(root: Path):
    for f in (root / "val").rglob("*.png"):
        f.write_text("garbage")
    return ["data.bad_images=skip"], f"the val split ({root / 'val'}) has no readable image left"


DATA_FAULTS = [_data_fault_bomb, _data_fault_dangling_link, _data_fault_val_fraction, _data_fault_shots,
               _data_fault_val_emptied]


@pytest.mark.parametrize("fault", DATA_FAULTS, ids=[f.__name__.removeprefix("_data_fault_") for f in DATA_FAULTS])
def test_data_fault_is_refused_naming_the_file_or_class(make_cfg, store_uri, tmp_path, fault):
    root = write_image_folder(tmp_path / "data")
    overrides, names = fault(root)
    code, message, tag = _attempt(make_cfg, store_uri, [f"data.root={root}", NULL, *overrides])
    assert code == 2 and names in message, message
    assert tag is not None and tag.endswith(message), tag  # the run ended FAILED with the same message
    assert not _running(store_uri)


# ---- process faults: a diverged loss -------------------------------------------------------------------

def test_process_fault_a_diverged_loss_fails_its_run_with_the_epoch_and_lr(make_cfg, store_uri):
    """A single run whose loss turns NaN: exit 1 with the message, the run FAILED and tagged diverged (the
    epoch and the learning rates); in a sweep the same run is a lost candidate (test_process_faults.py)."""
    code, message, tag = _attempt(make_cfg, store_uri, ["model=timm", "model.arch=resnet10t", NULL,
                                                        "optim=sgd", "optim.lr=1e6", "batch_size=2"])
    assert code == 1 and message.startswith("non-finite training loss (nan) in epoch 1"), message
    assert tag.startswith("Diverged: non-finite training loss")
    client = MlflowClient(store_uri)
    (last,) = client.search_runs([client.get_experiment_by_name("tlsweep").experiment_id],
                                 order_by=["attributes.start_time DESC"], max_results=1)
    assert last.data.tags["tlsweep.diverged"].startswith("epoch 1, lr 1e+06 (")
    assert not _running(store_uri)


def test_data_fault_batch_of_one_is_refused_naming_batch_size(make_cfg, store_uri, tmp_path):
    """A training split of one image per class with batch_size=1: every batch holds one sample, which a BatchNorm
    in train mode (finetune's, in resnet18) cannot normalize; refused before the data is read, as any batch_size=1."""
    root = write_image_folder(tmp_path / "data", per_split={"train": 1, "val": 1})
    code, message, tag = _attempt(make_cfg, store_uri, [f"data.root={root}", NULL, "batch_size=1"])
    assert code == 2 and message.startswith("batch_size=1: strategy finetune trains"), message
    assert "at least 2 samples per batch" in message and "batch_size>=2" in message, message
    assert tag is not None and tag.endswith(message), tag  # the run ended FAILED with the same message
    assert not _running(store_uri)


# ---- the store -------------------------------------------------------------------------------------------

def store_fault_uri(kind: str, tmp_path: Path) -> tuple[str, str]:
    """(tracking.uri, what the message must name) for a store that cannot be used."""
    import socket

    if kind == "dead server":
        with socket.socket() as s:  # a port nothing listens on
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        return f"http://127.0.0.1:{port}", f"http://127.0.0.1:{port} (connection refused)"
    if kind == "path under a file":
        (tmp_path / "afile").write_text("")
        return f"sqlite:///{tmp_path / 'afile' / 'sub' / 'mlflow.db'}", f"{tmp_path / 'afile'} is a file, not a folder"
    (tmp_path / "notes.db").write_text("not a database " * 100)
    return f"sqlite:///{tmp_path / 'notes.db'}", f"{tmp_path / 'notes.db'} (file is not a database)"


@pytest.mark.parametrize("kind", ["dead server", "path under a file", "not a database"])
def test_store_fault_is_one_line_naming_the_store_and_exits_1(make_cfg, store_uri, tmp_path, kind):
    import time

    from tlsweep.config.errors import StoreError

    uri, names = store_fault_uri(kind, tmp_path)
    t0 = time.perf_counter()
    with pytest.raises(StoreError) as info:
        run(make_cfg(f"tracking.uri={uri}", NULL))
    assert time.perf_counter() - t0 < 10  # before any retry, data or model
    assert info.value.exit_code == 1 and names in str(info.value) and "\n" not in str(info.value), str(info.value)
    assert not _running(store_uri)
