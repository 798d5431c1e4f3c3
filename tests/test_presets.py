"""The benchmark presets compose, sweep what their protocol says, and run end to end on fake files in their
data's real layout (shrunk: one task or dataset, a tiny random-init model, one epoch)."""
from __future__ import annotations

from hydra import compose, initialize_config_dir
from mlflow import MlflowClient

from tests.conftest import CONF
from tests.test_sources import fake_cifar10, fake_vtab, no_md5, no_network  # noqa: F401 -- fixtures
from tlsweep.report.across import VTAB1K_GROUPS
from tlsweep.run import run


def _preset(name: str, *overrides: str, sweep: bool = False):
    """The preset's config; with `sweep`, its hydra node too (what the sweeper sweeps)."""
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        return compose("config", overrides=[f"experiment={name}", *overrides], return_hydra_config=sweep)


def test_vtab1k_sweeps_the_19_tasks_with_the_peft_ladder_and_selects_the_lr_on_val200():
    cfg = _preset("vtab1k", "data.root=/vtab-1k", sweep=True)
    params = cfg.hydra.sweeper.params
    tasks = params["data.task"].split(",")
    assert sorted(tasks) == sorted(VTAB1K_GROUPS) and len(tasks) == 19  # the report's natural/specialized/structured
    assert params["strategy"].split(",") == ["probe", "finetune", "bitfit", "norm", "lora"]
    assert len(params["optim.lr"].split(",")) in (2, 3) and params["seed"] == "0,1,2"
    assert (cfg.model.name, cfg.data.name, cfg.data.select_list, cfg.data.test_list) == \
        ("vit_b16_in21k", "filelist", "val200.txt", "test.txt")


def test_kornblith_sweeps_the_torchvision_datasets_of_the_paper_over_the_ladder():
    cfg = _preset("kornblith", "data.root=/downloads", sweep=True)
    params = cfg.hydra.sweeper.params
    assert set(params["data.dataset"].split(",")) == {"Food101", "CIFAR10", "CIFAR100", "SUN397", "StanfordCars",
                                                      "FGVCAircraft", "DTD", "OxfordIIITPet", "Caltech101",
                                                      "Flowers102"}
    assert params["strategy"] == "scratch,probe,partial,finetune" and cfg.data.name == "torchvision"


SHRINK = ["model=timm", "model.arch=resnet10t", "model.weights=null", "strategy=probe", "epochs=1",
          "data.image_size=16", "data.num_workers=0", "batch_size=8", "device=cpu"]


def _last(store_uri):
    client = MlflowClient(store_uri)
    exp = client.get_experiment_by_name("tlsweep")
    return client.search_runs([exp.experiment_id], order_by=["attributes.start_time DESC"], max_results=1)[0]


def test_vtab1k_runs_a_task_end_to_end_on_fake_files(tmp_path, store_uri):
    fake_vtab(tmp_path / "vtab-1k" / "dtd")
    result = run(_preset("vtab1k", f"data.root={tmp_path / 'vtab-1k'}", "data.task=dtd", *SHRINK,
                         f"tracking.uri={store_uri}", f"cache_dir={tmp_path / 'cache'}"))
    r = _last(store_uri)
    assert r.info.status == "FINISHED" and "final_test_acc" in result
    assert r.data.params["task"] == "dtd" and "select_acc" in r.data.metrics


def test_kornblith_runs_a_dataset_end_to_end_on_fake_files(tmp_path, store_uri, no_md5, no_network):  # noqa: F811
    fake_cifar10(tmp_path)
    result = run(_preset("kornblith", f"data.root={tmp_path}", "data.dataset=CIFAR10", *SHRINK,
                         f"tracking.uri={store_uri}", f"cache_dir={tmp_path / 'cache'}"))
    r = _last(store_uri)
    assert r.info.status == "FINISHED" and "final_test_acc" in result and r.data.params["task"] == "CIFAR10"
