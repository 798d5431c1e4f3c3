"""The model registry: heads, stages, preprocessing and what a weight load changes."""
from __future__ import annotations

import pickle
import urllib.error

import pytest
import torch
import torchvision
import torchvision.models._api
from torch import nn

from tlsweep import models
from tlsweep.errors import ConfigError
from tlsweep.models import MODELS, build_model, get_spec, load_pretrained, load_state_dict_file


@pytest.mark.parametrize("name", list(MODELS))
def test_every_parameter_has_exactly_one_stage_or_is_the_head(name):
    spec = get_spec(name)
    model = spec.build()
    assert isinstance(spec.head_module(model), nn.Linear)
    for pname, _ in model.named_parameters():
        owners = [s for s, prefixes in spec.stages.items()
                  if any(pname == p or pname.startswith(p + ".") for p in prefixes)]
        in_head = pname.startswith(spec.head + ".")
        assert len(owners) + in_head == 1, (pname, owners)


@pytest.mark.parametrize("name", [n for n in MODELS if n != "efficientnet_lite0"])
def test_torchvision_preprocessing_comes_from_the_weights(name):
    t = torchvision.models.get_model_weights(name).DEFAULT.transforms()
    pp = get_spec(name).preprocess()
    assert (pp.resize, pp.crop, list(pp.mean), list(pp.std), pp.interpolation) == \
        (t.resize_size[0], t.crop_size[0], list(t.mean), list(t.std), t.interpolation)


def test_lite0_preprocessing_is_timms_record_of_these_weights():
    pp = get_spec("efficientnet_lite0").preprocess()
    assert (pp.resize, pp.crop, pp.mean, pp.std, pp.interpolation.value) == (256, 224, (0.5,) * 3, (0.5,) * 3, "bicubic")


def test_unknown_model_lists_the_valid_names():
    with pytest.raises(ValueError, match="resnet18.*efficientnet_lite0"):
        get_spec("resnet19")


def test_default_weights_go_through_the_torchvision_download(fake_torchvision_download):
    model, _ = build_model(get_spec("resnet18"), "DEFAULT")
    assert fake_torchvision_download == [torchvision.models.ResNet18_Weights.DEFAULT.url]
    torch.manual_seed(1234)
    expected = torchvision.models.resnet18().state_dict()
    got = model.state_dict()
    assert all(torch.equal(got[k], v) for k, v in expected.items() if not k.startswith("fc."))


def test_offline_download_fails_with_a_message_that_says_what_to_do(monkeypatch):
    def offline(url, *a, **k):
        raise urllib.error.URLError("Temporary failure in name resolution")

    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", offline)
    with pytest.raises(models.WeightsUnavailable, match=r"model\.weights=/path/to/state_dict\.pth.*efficientnet_lite0"):
        build_model(get_spec("resnet18"), "DEFAULT")


def test_load_reports_exactly_the_head_as_missing():
    spec = get_spec("resnet18")
    sd = spec.build().state_dict()
    assert load_pretrained(spec.build(), spec, sd) == ["fc.bias", "fc.weight"]


@pytest.mark.parametrize("corrupt", ["drop_backbone_key", "extra_key"])
def test_load_refuses_anything_but_the_head_missing(corrupt):
    spec = get_spec("resnet18")
    sd = spec.build().state_dict()
    if corrupt == "drop_backbone_key":
        del sd["layer4.1.bn2.running_var"]
    else:
        sd["layer5.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match="does not match"):
        load_pretrained(spec.build(), spec, sd)


def test_local_checkpoint_roundtrip(tmp_path):
    spec = get_spec("resnet18")
    src = spec.build()
    path = tmp_path / "ckpt.pth"
    torch.save({"state_dict": src.state_dict()}, path)  # wrapped, as Lightning saves it
    model, _ = build_model(spec, str(path))
    assert torch.equal(model.layer1[0].conv1.weight, src.layer1[0].conv1.weight)


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
    with pytest.raises(pickle.UnpicklingError):
        load_state_dict_file(path)
    assert not marker.exists()


def test_missing_checkpoint_file_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="model.weights"):
        load_state_dict_file(tmp_path / "nope.pth")


def test_lite0_packaged_weights_load_strictly_into_timm():
    spec = get_spec("efficientnet_lite0")
    sd = spec.pretrained()
    model = spec.build()
    model.load_state_dict(sd, strict=True)  # every key, head included: the rename is complete
    assert sd["conv_stem.weight"].shape == (32, 3, 3, 3)


@pytest.mark.parametrize("name", [n for n, s in MODELS.items() if s.pieces])
def test_pieces_chain_is_the_models_forward(name):
    """The feature cache runs the chain in two halves; it must compute exactly model(x)."""
    spec = get_spec(name)
    torch.manual_seed(0)
    model = spec.build().eval()
    pieces = spec.pieces(model)
    assert pieces[-1] == ("head", spec.head_module(model))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(nn.Sequential(*[m for _, m in pieces])(x), model(x), atol=1e-5)
    for stage, module in pieces:  # each piece's parameters belong to the stage it is labelled with
        names = {n for n, p in model.named_parameters() for q in module.parameters() if p is q}
        assert {spec.stage_of(n) or "head" for n in names} <= {stage or "none"}, (stage, names)
