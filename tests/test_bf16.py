"""bf16=auto|true|false: what each resolves to on a CPU with and without bf16 units and on a GPU (the detection
monkeypatched both ways), what a bf16 run records, that it trains, and that the feature cache keeps fp32 and bf16
entries apart."""
from __future__ import annotations

import pytest
import torch
from hydra import compose, initialize_config_dir
from mlflow.tracking import MlflowClient
from torch import nn

from tests.conftest import CONF
from tlsweep.features import cache as features
from tlsweep import models, runtime
from tlsweep.config import schema
from tlsweep.config.errors import ConfigError
from tlsweep.run import run
from tlsweep.runtime import Runtime, resolve_bf16
from tlsweep.training.loop import run_epoch

CPU, CUDA, MPS = torch.device("cpu"), torch.device("cuda"), torch.device("mps")


def _last_run(store_uri):
    client = MlflowClient(store_uri)
    exp = client.get_experiment_by_name("tlsweep")
    return client.search_runs([exp.experiment_id], order_by=["attributes.start_time DESC"], max_results=1)[0]


@pytest.fixture
def units(monkeypatch):
    """units(*names): the CPU's bf16 units as the detection reports them; units(gpu=True/False) for CUDA."""
    def fake(*names: str, gpu: bool = False):
        monkeypatch.setattr(runtime, "cpu_bf16_units", lambda: names)
        monkeypatch.setattr(runtime, "cuda_bf16", lambda device: gpu)
    return fake


def test_auto_is_on_where_the_device_has_bf16_units_and_off_elsewhere(units):
    units("amx_bf16", "avx512_bf16")
    assert str(resolve_bf16("auto", CPU)) == "on (cpu amx_bf16+avx512_bf16)"
    units("avx512_bf16")
    assert str(resolve_bf16("auto", CPU)) == "on (cpu avx512_bf16)"
    units()
    assert str(resolve_bf16("auto", CPU)) == "off (cpu: no bf16 units)"
    units(gpu=True)
    assert str(resolve_bf16("auto", CUDA)) == "on (cuda native bf16)"
    units("amx_bf16", gpu=False)  # a GPU before compute capability 8.0, on a host whose CPU has AMX: still off
    assert not resolve_bf16("auto", CUDA).bf16
    assert str(resolve_bf16("auto", MPS)) == "off (mps: not measured with tlsweep)"


def test_true_forces_it_on_where_it_can_and_false_forces_it_off(units):
    units("amx_bf16", gpu=True)
    assert str(resolve_bf16(True, CPU)) == "on (bf16=true, cpu amx_bf16)"
    assert str(resolve_bf16(True, CUDA)) == "on (bf16=true, cuda native bf16)"
    for device in (CPU, CUDA, MPS):
        assert str(resolve_bf16(False, device)) == "off (bf16=false)"


@pytest.mark.parametrize("device", [CPU, CUDA, MPS], ids=str)
def test_true_where_the_device_cannot_is_a_config_error_naming_the_device(units, device):
    units()
    with pytest.raises(ConfigError, match=fr"bf16=true: device {device.type} cannot run it \({device.type}: .*; use "
                                          "bf16=auto or bf16=false"):
        resolve_bf16(True, device)


def test_the_cpu_detection_reads_torch_then_its_older_probes_then_proc_cpuinfo(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"amx_bf16": True, "avx512_bf16": False,
                                                                "amx_tile": True}, raising=False)
    assert runtime.cpu_bf16_units() == ("amx_bf16",)
    monkeypatch.delattr(torch.cpu, "get_capabilities", raising=False)  # torch before get_capabilities
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True, raising=False)
    assert runtime.cpu_bf16_units() == ("avx512_bf16",)
    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported", raising=False)  # a torch with neither: the kernel's flags
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu avx512bw amx_tile amx_bf16 amx_int8\n")
    monkeypatch.setattr(runtime, "CPUINFO", cpuinfo)
    assert runtime.cpu_bf16_units() == ("amx_bf16",)
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512bw\n")  # AVX-512 without bf16: emulated, slower
    assert runtime.cpu_bf16_units() == ()


def test_the_config_takes_true_false_and_auto_and_refuses_anything_else():
    def compose_(value):
        with initialize_config_dir(config_dir=str(CONF), version_base=None):
            return compose("config", overrides=[f"bf16={value}"])

    assert compose_("auto").bf16 == "auto" and compose_("true").bf16 is True and compose_("false").bf16 is False
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        assert compose("config").bf16 == "auto"  # the default
    with pytest.raises(ConfigError, match="bf16=sometimes: must be true, false or auto"):
        schema.check_ranges(compose_("sometimes"))


def test_a_bf16_step_trains_in_bf16_and_keeps_weights_optimizer_state_and_bn_statistics_in_fp32(make_cfg):
    """A fixed batch, ten steps: the loss falls. Autocast runs the convolutions and the head in bf16; what
    it leaves in fp32 stays there: parameters, their gradients, AdamW's moments, BatchNorm's running stats."""
    cfg = make_cfg("model=efficientnet_lite0", "model.weights=null")
    torch.manual_seed(0)
    model, _ = models.build_model(models.get_spec(cfg.model, 32), None)
    model.reset_classifier(2)
    model.to(memory_format=torch.channels_last).train()
    rt = Runtime(CPU, bf16=True, channels_last=True)
    x = torch.randn(8, 3, 32, 32)
    x[4:] += 1.0  # two classes that differ in mean colour
    batch = [(x, torch.tensor([0] * 4 + [1] * 4))]
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    with rt.autocast():
        assert model(rt.put(x)).dtype == torch.bfloat16  # autocast is on: the head ran in bf16
    losses = [run_epoch(model, batch, rt, opt)[0] for _ in range(10)]
    assert losses[-1] < 0.5 * losses[0], losses
    bn = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bn and all(m.running_mean.dtype == m.running_var.dtype == torch.float32 for m in bn)
    assert {p.dtype for p in model.parameters()} == {p.grad.dtype for p in model.parameters()} == {torch.float32}
    assert {v.dtype for s in opt.state.values() for k, v in s.items() if k != "step"} == {torch.float32}


def test_a_bf16_run_trains_and_its_tags_say_bf16(make_cfg, store_uri, units, capsys):
    units("amx_bf16")  # any CPU runs bf16 autocast (emulated where it has no units), so this runs everywhere
    result = run(make_cfg("model=efficientnet_lite0", "strategy=finetune", "bf16=auto", "epochs=4"))
    r = _last_run(store_uri)
    # lite0's 16 depthwise convs train in fp32 (runtime.train_depthwise_in_fp32), and the tag says so
    tag = "on (cpu amx_bf16), 16 depthwise convs fp32 where they backpropagate"
    assert r.data.tags["tlsweep.fast.bf16"] == tag
    assert f"bf16 {tag}" in capsys.readouterr().out  # printed, not warned: no warning filter hides it
    losses = [m.value for m in MlflowClient(store_uri).get_metric_history(r.info.run_id, "train_loss")]
    assert len(losses) == 4 and losses[-1] < losses[0], losses
    assert 0 <= result["final_val_acc"] <= 1


def test_bf16_true_on_a_cpu_without_units_fails_the_run_naming_the_device(make_cfg, store_uri, units):
    units()
    with pytest.raises(ConfigError, match=r"bf16=true: device cpu cannot run it \(cpu: no bf16 units\)"):
        run(make_cfg("strategy=probe", "bf16=true"))
    r = _last_run(store_uri)
    assert r.info.status == "FAILED" and "device cpu cannot run it" in r.data.tags["tlsweep.error"]


def test_the_feature_cache_keeps_fp32_and_bf16_entries_apart_and_stores_both_in_fp32(make_cfg, units, tmp_path,
                                                                                     monkeypatch, store_uri):
    units("amx_bf16")
    monkeypatch.setattr(features, "_MEMO", {})  # no entry of an earlier test in memory
    cache = tmp_path / "cache"
    tags = []
    for bf16 in ("false", "true", "false"):
        run(make_cfg("model=efficientnet_lite0", "strategy=probe", f"bf16={bf16}", f"cache_dir={cache}"))
        tags.append(_last_run(store_uri).data.tags)
    # fp32 computed, bf16 computed (not fp32's from memory or disk), fp32 again from disk (not bf16's from memory)
    assert [t["tlsweep.fast.features"].split("(")[1].split(",")[0].split(")")[0] for t in tags] == \
        ["computed", "computed", "disk"], [t["tlsweep.fast.features"] for t in tags]
    assert [t["tlsweep.fast.bf16"] for t in tags] == \
        ["off (bf16=false)", "on (bf16=true, cpu amx_bf16), 16 depthwise convs fp32 where they backpropagate",
         "off (bf16=false)"]
    entries = sorted(cache.glob("features-*.pt"))
    assert len(entries) == 2
    for entry in entries:
        saved = torch.load(entry, weights_only=True)
        assert saved["train"].dtype == saved["val"].dtype == torch.float32  # as stored, whatever the pass ran in


def test_an_entry_stored_in_bf16_is_refused():
    """Before features were stored in fp32, a bf16 pass stored its own bf16 outputs under the same key: such an
    entry fails its check on load, and is recomputed (tests/test_fast.py covers what a failed check does)."""
    tr, va = torch.zeros(1, 4, 8, dtype=torch.bfloat16), torch.zeros(3, 8, dtype=torch.bfloat16)
    assert features._check({"key": "k", "train": tr, "val": va}, "k", 1, 4, 3) == \
        "holds torch.bfloat16 / torch.bfloat16 features, not float32"
    assert features._check({"key": "k", "train": tr.float(), "val": va.float()}, "k", 1, 4, 3) is None


def test_under_cpu_bf16_a_depthwise_conv_runs_in_fp32_where_it_backpropagates_and_in_bf16_elsewhere():
    """oneDNN's bf16 depthwise conv trains slower than its fp32 one on the CPU (runtime.train_depthwise_in_fp32);
    its bf16 forward is faster. So: fp32 where a backward passes through it, bf16 in inference and when frozen
    below everything that trains, and nothing changes in fp32 or on CUDA."""
    def net():
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(4, 8, 1), nn.BatchNorm2d(8), nn.Conv2d(8, 8, 5, padding=2, groups=8),
                             nn.BatchNorm2d(8), nn.Conv2d(8, 8, 3, padding=1, groups=2))  # the last: grouped, not dw
    plain, model = net(), net()
    assert runtime.train_depthwise_in_fp32(model, Runtime(CPU, bf16=False)) == 0
    assert runtime.train_depthwise_in_fp32(model, Runtime(CUDA, bf16=True)) == 0
    assert runtime.train_depthwise_in_fp32(model, Runtime(CPU, bf16=True)) == 1
    assert runtime.train_depthwise_in_fp32(model, Runtime(CPU, bf16=True)) == 0  # once is enough
    dw = model[2]
    assert isinstance(dw, nn.Conv2d) and type(dw).__name__ == "Conv2d" and type(dw).plain_class is nn.Conv2d
    assert type(model[0]) is type(model[4]) is nn.Conv2d
    assert model.state_dict().keys() == plain.state_dict().keys()
    out = {}
    for i in (0, 2, 4):
        model[i].register_forward_hook(lambda m, a, y, i=i: out.__setitem__(i, y.dtype))
    x = torch.randn(2, 4, 8, 8)
    bf16, fp32 = torch.bfloat16, torch.float32
    with torch.autocast("cpu", dtype=bf16):
        model(x)  # training: its weight needs a gradient
    assert out == {0: bf16, 2: fp32, 4: bf16}
    with torch.no_grad(), torch.autocast("cpu", dtype=bf16):
        model(x)  # inference
    assert out == {0: bf16, 2: bf16, 4: bf16}
    model.requires_grad_(False)
    model[4].requires_grad_(True)
    with torch.autocast("cpu", dtype=bf16):
        model(x)  # frozen below what trains: no backward passes through it
    assert out == {0: bf16, 2: bf16, 4: bf16}
    model.requires_grad_(True)
    model(x)  # no autocast: fp32, and the same function as the plain conv
    assert out == {0: fp32, 2: fp32, 4: fp32}
    torch.testing.assert_close(model(x), plain(x))
    # the feature pass's BatchNorm fold still takes it: both conv -> BN pairs fold
    _, folded = features.fold_batchnorm(model.eval(), x)
    assert folded == 2
