"""The fast paths compute what the plain path computes: cached features, parity, fallback."""
from __future__ import annotations

import math
import statistics

import pytest
import torch
from mlflow.tracking import MlflowClient

from tlsweep import data as D
from tlsweep import features, strategies
from tlsweep.fastdata import TensorLoader, decode_images
from tlsweep.models import build_model, get_spec
from tlsweep.run import run
from tlsweep.train import autocast
from tests.conftest import write_image_folder


@pytest.mark.parametrize("model_name,unfreeze,first_trainable", [
    ("resnet18", [], "fc"), ("resnet18", ["layer4"], "layer4"), ("efficientnet_lite0", ["blocks.6"], "blocks.6")])
def test_cached_features_equal_recomputed(tmp_path, model_name, unfreeze, first_trainable):
    """Cache the prefix, then recompute the same inputs through the model's own forward and
    capture what reaches the first trainable module: equal, in the mode the model trains in."""
    spec = get_spec(model_name)
    torch.manual_seed(0)
    model, pp = build_model(spec, None)
    pp = pp.with_crop(32)
    strategies.apply(model, spec, type("S", (), {"unfreeze": unfreeze, "backbone_lr_scale": 0.1})(), 2, 1e-3)
    model.train()
    strategies.frozen_bn_eval(model)
    data = D.image_folder(write_image_folder(tmp_path))
    decoded = [decode_images(s.items, s.targets, pp.resize, pp.interpolation, D.load_rgb) for s in (data.train, data.val)]
    cut = features.split(model, spec)
    assert not isinstance(cut, str), cut
    cpu = torch.device("cpu")
    train_f, val_f, source = features.features(cut.prefix, *decoded, ["test", model_name, str(unfreeze)], 2, pp.crop,
                                               pp.mean, pp.std, 5, cpu, lambda: autocast(cpu, False), None)
    assert source == "computed" and train_f.shape[:2] == (2, len(decoded[0])) and train_f.dtype == torch.float32

    seen = []
    hook = model.get_submodule(first_trainable).register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    aug = TensorLoader(decoded[0], 5, train=True, crop=pp.crop, mean=pp.mean, std=pp.std, seed=features.VIEW_SEED)
    with torch.no_grad():
        for _view in range(2):  # same stream, same batches, through the full model
            for start in range(0, len(decoded[0]), 5):
                model(aug.batch(torch.arange(start, min(start + 5, len(decoded[0])))))
        recomputed = torch.stack([torch.cat(seen[:3]), torch.cat(seen[3:6])])
        seen.clear()
        model.eval()
        model(TensorLoader(decoded[1], 8, train=False, crop=pp.crop, mean=pp.mean, std=pp.std).batch(
            torch.arange(len(decoded[1]))))
    hook.remove()
    recomputed = recomputed.reshape(train_f.shape)
    assert torch.allclose(train_f, recomputed, atol=1e-5) and torch.allclose(val_f, seen[0].reshape(val_f.shape), atol=1e-5)
    assert not torch.allclose(train_f[0], train_f[1])  # two views are two different augmentations


def test_no_cache_when_the_prefix_is_not_pure(make_cfg):
    """probe with freeze_bn=false: frozen BN layers update their statistics, so caching would change the run."""
    spec = get_spec("resnet18")
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


def test_over_budget_falls_back_to_streaming(make_cfg, store_uri):
    run(make_cfg("model=resnet18", "model.weights=null", "strategy=probe", "data.cache_budget_mb=0.001"))
    tags, _, status = _tags_and_metrics(store_uri)
    assert status == "FINISHED"
    assert tags["tlsweep.fast.decode_once"].startswith("off:") and "streaming" in tags["tlsweep.fast.decode_once"]
    assert tags["tlsweep.fast.features"].startswith("off: needs the decode-once data")


def test_features_come_from_disk_in_a_new_process(make_cfg, store_uri, tmp_path):
    cfg = make_cfg("model=resnet18", "model.weights=null", "strategy=probe", f"cache_dir={tmp_path / 'cache'}")
    first = run(cfg)
    features._MEMO.clear()  # as a fresh worker process would start
    second = run(cfg)
    tags, _, _ = _tags_and_metrics(store_uri)
    assert "(disk)" in tags["tlsweep.fast.features"]
    assert {k: v for k, v in first.items() if "seconds" not in k} == \
        {k: v for k, v in second.items() if "seconds" not in k}
