"""The fast paths compute what the plain path computes: cached features, parity, fallback."""
from __future__ import annotations

import math
import statistics
import warnings

import pytest
import torch
from mlflow.tracking import MlflowClient
from torchvision.transforms.v2 import InterpolationMode

from tlsweep.data import pipeline as D
from tlsweep.features import cache as features
from tlsweep.training import strategies
from tlsweep.data.decoded import TensorLoader, decode_images
from tlsweep.models import build_model
from tlsweep.run import run
from tlsweep.models import Preprocess
from tlsweep.runtime import Runtime
from tests.conftest import damage, model_spec, write_image_folder


@pytest.mark.parametrize("model_name,unfreeze,first_trainable", [
    ("resnet18", [], "fc"), ("resnet18", ["layer4"], "layer4"), ("efficientnet_lite0", ["blocks.6"], "blocks.6"),
    ("timm:vit_tiny_patch16_224", [], "head"),
    # any timm model of the chain families: probe (everything below the head) and partial (the last stage)
    *[pytest.param(*c, marks=pytest.mark.slow) for c in [
        ("vit_b_16", ["block11"], "encoder.layers.encoder_layer_11"),
        ("timm:resnet10t", ["layer4"], "layer4"), ("timm:efficientnet_b0", [], "classifier"),
        ("timm:convnext_atto", ["stages.3"], "stages.3"),
        ("timm:vit_tiny_patch16_224", ["blocks.11"], "blocks.11"), ("timm:mobilenetv3_small_050", ["blocks.5"], "blocks.5")]]])
def test_cached_features_equal_recomputed(tmp_path, model_name, unfreeze, first_trainable):
    """Cache the prefix, then recompute the same inputs through the model's own forward and
    capture what reaches the first trainable module: equal, in the mode the model trains in."""
    spec = (model_spec("timm", f"model.arch={model_name[5:]}", image_size=32) if model_name.startswith("timm:")
            else model_spec(model_name, image_size=32))
    torch.manual_seed(0)
    model, pp = build_model(spec, None)
    for bn in model.modules():  # trained-looking statistics, so that folding BN into convs is not a no-op
        if isinstance(bn, torch.nn.BatchNorm2d):
            bn.running_mean.uniform_(-0.5, 0.5), bn.running_var.uniform_(0.5, 2)
            bn.weight.data.uniform_(0.5, 1.5), bn.bias.data.uniform_(-0.5, 0.5)
    pp = pp.with_crop(32)
    strategies.apply(model, spec, type("S", (), {"unfreeze": unfreeze, "backbone_lr_scale": 0.1})(), 2, 1e-3)
    model.train()
    strategies.frozen_bn_eval(model)
    data = D.image_folder(write_image_folder(tmp_path))
    decoded = [decode_images(s.items, s.targets, pp.resize, pp.interpolation, D.load_rgb) for s in (data.train, data.val)]
    cut = features.split(model, spec)
    assert not isinstance(cut, str), cut
    cpu = torch.device("cpu")
    train_f, val_f, source = features.features(cut.prefix, *decoded, ["test", model_name, str(unfreeze)], 2, pp, 5,
                                               Runtime(cpu), None)
    n_bn = sum(isinstance(m, torch.nn.BatchNorm2d) for m in cut.prefix.modules())
    # every BN follows a conv
    assert source == (f"computed, {n_bn} BatchNorms folded into their convs" if n_bn else "computed"), source
    assert train_f.shape[:2] == (2, len(decoded[0])) and train_f.dtype == torch.float32

    seen = []
    hook = model.get_submodule(first_trainable).register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    aug = TensorLoader(decoded[0], 5, True, pp, features.VIEW_SEED)  # the pass crops with the weights' interpolation
    with torch.no_grad():
        for _view in range(2):  # same stream, same batches, through the full model
            for start in range(0, len(decoded[0]), 5):
                model(aug.batch(torch.arange(start, min(start + 5, len(decoded[0])))))
        recomputed = torch.stack([torch.cat(seen[:3]), torch.cat(seen[3:6])])
        seen.clear()
        model.eval()
        model(TensorLoader(decoded[1], 8, False, pp).batch(
            torch.arange(len(decoded[1]))))
    hook.remove()
    recomputed = recomputed.reshape(train_f.shape)
    assert torch.allclose(train_f, recomputed, atol=1e-5) and torch.allclose(val_f, seen[0].reshape(val_f.shape), atol=1e-5)
    assert not torch.allclose(train_f[0], train_f[1])  # two views are two different augmentations


def test_fold_batchnorm_keeps_the_function_and_the_model():
    """conv -> BN pairs fold into one conv; a pair whose conv output is also used elsewhere does not fold."""
    class Branchy(torch.nn.Module):  # the BN follows the conv in run order, but the conv output is reused
        def __init__(self):
            super().__init__()
            self.conv, self.bn = torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4)

        def forward(self, x):
            y = self.conv(x)
            return self.bn(y) + y

    torch.manual_seed(0)
    chain = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, bias=False), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                                torch.nn.Conv2d(4, 4, 3, groups=4), torch.nn.BatchNorm2d(4))
    for m in (chain, branchy := Branchy()):
        for bn in m.modules():
            if isinstance(bn, torch.nn.BatchNorm2d):
                bn.running_mean.uniform_(-1, 1), bn.running_var.uniform_(0.5, 2), bn.bias.data.uniform_(-1, 1)
        m.eval()
    before = {k: v.clone() for k, v in chain.state_dict().items()}
    x = torch.randn(2, 3, 12, 12)
    with torch.no_grad():
        folded, n = features.fold_batchnorm(chain, x)
        assert n == 2 and not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
        assert torch.allclose(folded(x), chain(x), atol=1e-6)
        assert all(torch.equal(v, before[k]) for k, v in chain.state_dict().items())  # a copy was folded
        same, n = features.fold_batchnorm(branchy, x)
    assert same is branchy and n == 0


def test_no_cache_when_the_prefix_is_not_pure(make_cfg):
    """probe with freeze_bn=none: frozen BN layers update their statistics, so caching would change the run."""
    spec = model_spec("resnet18")
    model = spec.build()
    strategies.apply(model, spec, type("S", (), {"unfreeze": [], "backbone_lr_scale": 0.0})(), 2, 1e-3)
    model.train()
    reason = features.split(model, spec)
    assert isinstance(reason, str) and "BatchNorm" in reason


def _tags_and_metrics(store_uri):
    client = MlflowClient(store_uri)
    exp = client.get_experiment_by_name("tlsweep")
    r = client.search_runs([exp.experiment_id], order_by=["attributes.start_time DESC"], max_results=1)[0]
    return r.data.tags, r.data.metrics, r.info.status


@pytest.mark.slow
def test_parity_fast_vs_plain_within_seed_spread(make_cfg, store_uri):
    """Same trainable set and groups; final metrics within the spread seeds produce.

    Tolerance: the two paths' means may differ by at most 3 standard errors of that
    difference, the standard errors measured here from the seed-to-seed spread of each path.
    """
    common = ["model=efficientnet_lite0", "strategy=probe", "data=digits", "data.shots=4", "epochs=2"]
    paths = {"fast": [], "plain": []}
    groups = {}
    for path, extra in (("fast", []), ("plain", ["data.cache=false", "strategy.cache_features=false"])):
        for seed in range(4):
            result = run(make_cfg(*common, *extra, f"seed={seed}"))
            tags, metrics, _ = _tags_and_metrics(store_uri)
            paths[path].append(result["final_val_acc"])
            groups[path] = ({k: v for k, v in tags.items() if k.startswith("tlsweep.group.")},
                            metrics["trainable_params"])
        assert tags["tlsweep.fast.features"].startswith("on" if path == "fast" else "off")
    assert groups["fast"] == groups["plain"]
    n = 4
    se = math.sqrt(statistics.variance(paths["fast"]) / n + statistics.variance(paths["plain"]) / n)
    assert se > 0, paths  # a spread of zero would make any tolerance meaningless
    diff = statistics.mean(paths["fast"]) - statistics.mean(paths["plain"])
    assert abs(diff) <= 3 * se, (paths, se)


@pytest.mark.parametrize("budget_mb, where", [(0.05, "in memory"), (0.001, "on disk")])
def test_over_the_image_budget_the_feature_pass_streams_the_files_and_scores_the_same(make_cfg, store_uri, tmp_path,
                                                                                       budget_mb, where):
    """Past the decode budget the feature cache still runs, through a pass that decodes the files a batch at a
    time: the same views, so the same accuracy as from the decoded images. 0.05 MB: the images (about 0.1 MB)
    exceed it, the features (0.04 MB) fit in memory; 0.001 MB: they go to disk, read back a batch at a time."""
    base = ("model=resnet18", "model.weights=null", "strategy=probe", "epochs=2", "strategy.feature_views=1")
    features._MEMO.clear()
    decoded = run(make_cfg(*base, f"cache_dir={tmp_path / 'a'}"))
    first_tags, first, _ = _tags_and_metrics(store_uri)
    assert "MB on disk" not in first_tags["tlsweep.fast.features"]
    features._MEMO.clear()  # the same key: nothing may come from the first run's features
    streamed = run(make_cfg(*base, f"data.cache_budget_mb={budget_mb}", f"cache_dir={tmp_path / 'b'}"))
    tags, metrics, status = _tags_and_metrics(store_uri)
    assert status == "FINISHED"
    assert tags["tlsweep.fast.decode_once"].startswith("off:") and "streaming" in tags["tlsweep.fast.decode_once"]
    assert tags["tlsweep.fast.features"].startswith("on: frozen prefix below head run once from the image files, "
                                                    "streamed (computed"), tags["tlsweep.fast.features"]
    assert ("MB on disk, read a batch at a time" in tags["tlsweep.fast.features"]) == (where == "on disk")
    assert (streamed["final_val_acc"], streamed["best_val_acc"]) == (decoded["final_val_acc"], decoded["best_val_acc"])
    for key in ("train_loss", "val_loss"):  # to float rounding: the same views, in batches of another size
        assert metrics[key] == pytest.approx(first[key], rel=1e-4), key
    assert len(list((tmp_path / "b").glob("features-*.pt.train.f32"))) == (where == "on disk")
    if where == "on disk":  # read back from the file by a new process: the same run again
        features._MEMO.clear()
        again = run(make_cfg(*base, f"data.cache_budget_mb={budget_mb}", f"cache_dir={tmp_path / 'b'}"))
        assert "(disk)" in _tags_and_metrics(store_uri)[0]["tlsweep.fast.features"]
        assert again["final_val_acc"] == streamed["final_val_acc"]
        array, = (tmp_path / "b").glob("features-*.pt.train.f32")
        with open(array, "r+b") as f:  # a copy cut short: recomputed, with a warning that names the file
            f.truncate(100)
        features._MEMO.clear()
        with pytest.warns(RuntimeWarning, match=r"train\.f32, which cannot be read \(holds 100 bytes"):
            third = run(make_cfg(*base, f"data.cache_budget_mb={budget_mb}", f"cache_dir={tmp_path / 'b'}"))
        assert "(computed" in _tags_and_metrics(store_uri)[0]["tlsweep.fast.features"]
        assert third["final_val_acc"] == streamed["final_val_acc"]


def test_features_over_the_budget_with_no_disk_turn_the_cache_off_saying_why(make_cfg, store_uri):
    features._MEMO.clear()
    run(make_cfg("model=resnet18", "model.weights=null", "strategy=probe", "data.cache_budget_mb=0.001",
                 "cache_dir=null"))
    tags, _, status = _tags_and_metrics(store_uri)
    assert status == "FINISHED"
    assert tags["tlsweep.fast.features"].startswith("off: ") and "cache_dir=null leaves no disk" in \
        tags["tlsweep.fast.features"]


@pytest.mark.slow
def test_features_come_from_disk_in_a_new_process(make_cfg, store_uri, tmp_path):
    cfg = make_cfg("model=resnet18", "model.weights=null", "strategy=probe", f"cache_dir={tmp_path / 'cache'}")
    first = run(cfg)
    features._MEMO.clear()  # as a fresh worker process would start
    second = run(cfg)
    tags, _, _ = _tags_and_metrics(store_uri)
    assert "(disk)" in tags["tlsweep.fast.features"]
    assert {k: v for k, v in first.items() if "seconds" not in k} == \
        {k: v for k, v in second.items() if "seconds" not in k}


@pytest.mark.parametrize("how", ["truncated", "garbage", "inconsistent"])
def test_a_damaged_feature_file_is_recomputed_with_a_warning(tmp_path, how):
    torch.manual_seed(0)
    prefix = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(2)).eval()
    data = D.image_folder(write_image_folder(tmp_path / "img", per_split={"train": 2, "val": 1}))
    decoded = [decode_images(s.items, s.targets, 36, InterpolationMode.BILINEAR, D.load_rgb)
               for s in (data.train, data.val)]
    pp = Preprocess(36, 32, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), InterpolationMode.BILINEAR)

    def get():
        features._MEMO.clear()  # as a fresh worker process starts
        return features.features(prefix, *decoded, ["damage-test"], 2, pp, 4, Runtime(torch.device("cpu")),
                                 str(tmp_path / "cache"))

    train_f, val_f, source = get()
    assert source == "computed"
    (entry,) = (tmp_path / "cache").glob("features-*.pt")
    damage(entry, how)
    with pytest.warns(RuntimeWarning, match="recomputing"):
        again = get()
    assert again[2] == "computed" and torch.equal(again[0], train_f) and torch.equal(again[1], val_f)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert get()[2] == "disk"  # the rewritten file is whole again


def test_memory_only_cache(make_cfg, store_uri):
    """cache_dir=null: features are computed, then served from memory; nothing is locked or written."""
    features._MEMO.clear()
    for expect in ("(computed", "(memory)"):
        run(make_cfg("model=efficientnet_lite0", "strategy=probe", "cache_dir=null"))
        tags, _, status = _tags_and_metrics(store_uri)
        assert status == "FINISHED" and expect in tags["tlsweep.fast.features"], tags["tlsweep.fast.features"]
