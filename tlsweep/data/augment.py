"""The views a training or evaluation batch sees of decoded images: tlsweep's RandomResizedCrop and flip, drawn from
the images' sizes alone, and the center crop. The decode-once loader and the feature pass both use them, so a view
is the same whether its image sits in memory or streams from its file (decoded.py says how they match torchvision)."""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torchvision.ops import roi_align
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as F

SCALE = (0.6, 1.0)  # RandomResizedCrop area range of tlsweep's train augmentation
RATIO = (3 / 4, 4 / 3)


def pad_batch(images: Sequence[torch.Tensor]) -> torch.Tensor:
    """Images of different sizes as one uint8 [B, 3, Hmax, Wmax] batch. Past each image's true
    size the padding repeats its last row and column, so bilinear samples that reach half a
    pixel over the border read the edge (as a clamped resize does) rather than black."""
    hmax, wmax = max(img.shape[-2] for img in images), max(img.shape[-1] for img in images)
    out = torch.empty(len(images), 3, hmax, wmax, dtype=torch.uint8, device=images[0].device)
    for i, img in enumerate(images):
        h, w = img.shape[-2:]
        out[i, :, :h, :w] = img
        out[i, :, :h, w:] = img[:, :, w - 1 : w]
        out[i, :, h:, :] = out[i, :, h - 1 : h, :]
    return out

def sample_crop_boxes(
    sizes: torch.Tensor,
    generator: torch.Generator,
    scale: tuple[float, float] = SCALE,
    ratio: tuple[float, float] = RATIO,
    tries: int = 10,
) -> torch.Tensor:
    """One RandomResizedCrop box per image of true size `sizes` [B, 2]: int64 [B, 4] as
    (top, left, height, width).

    Same distribution as torchvision's v2 `RandomResizedCrop`: area fraction uniform in `scale`,
    log-uniform aspect ratio, the first of `tries` draws that fits, else the center-crop
    fallback. Vectorized, all tries are drawn for every sample, so the random stream differs
    from torchvision's even though the distribution does not.
    """
    sizes = sizes.to("cpu", torch.float64)
    n = len(sizes)
    hgt, wid = sizes[:, 0:1], sizes[:, 1:2]
    area = hgt * wid * torch.empty(n, tries, dtype=torch.float64).uniform_(*scale, generator=generator)
    log_r = torch.empty(n, tries, dtype=torch.float64)
    log_r.uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=generator)
    aspect = torch.exp(log_r)
    w = torch.round(torch.sqrt(area * aspect))
    h = torch.round(torch.sqrt(area / aspect))
    fits = (w > 0) & (w <= wid) & (h > 0) & (h <= hgt)
    first = fits.to(torch.int8).argmax(1, keepdim=True)  # argmax returns the first of ties
    h, w = h.gather(1, first)[:, 0], w.gather(1, first)[:, 0]
    hgt, wid = hgt[:, 0], wid[:, 0]
    u = torch.rand(n, 2, dtype=torch.float64, generator=generator)
    # Uniform integer offsets in [0, H - h], as randint(0, H - h + 1); clamp guards float rounding.
    top = torch.minimum(torch.floor(u[:, 0] * (hgt - h + 1)), hgt - h)
    left = torch.minimum(torch.floor(u[:, 1] * (wid - w + 1)), wid - w)

    # Fallback when no try fits: the largest centered box whose ratio is within `ratio`.
    in_ratio = wid / hgt
    fb_w = torch.where(in_ratio > ratio[1], torch.round(hgt * ratio[1]), wid)
    fb_h = torch.where(in_ratio < ratio[0], torch.round(wid / ratio[0]), hgt)
    fb_top = torch.div(hgt - fb_h, 2, rounding_mode="floor")
    fb_left = torch.div(wid - fb_w, 2, rounding_mode="floor")
    ok = fits.any(1)
    boxes = torch.stack(
        [
            torch.where(ok, top, fb_top),
            torch.where(ok, left, fb_left),
            torch.where(ok, h, fb_h),
            torch.where(ok, w, fb_w),
        ],
        dim=1,
    )
    return boxes.to(torch.int64)

def resized_crops(images: Sequence[torch.Tensor], boxes: torch.Tensor, crop: int,
                  interpolation: InterpolationMode | None = None) -> torch.Tensor:
    """Crop each image (uint8 [3, h, w]) to its box (top, left, height, width) and resize it
    to crop x crop: float32 [B, 3, crop, crop] in [0, 1], on the images' device.

    On the CPU with an `interpolation`, each sample goes through torchvision's own
    `resized_crop` (uint8, antialiased): exactly what the plain path's RandomResizedCrop does
    with that box, and faster on a CPU than one roi_align over the batch. Otherwise (the GPU)
    one `roi_align` call does the whole batch: bilinear without antialias (2x2 samples averaged per output pixel); on
    hymenoptera crops (resize 256, crop 224) it differs from `resized_crop` by 0.4/255 on
    average, 4/255 at the 99th percentile.
    """
    if images[0].device.type == "cpu" and interpolation is not None:
        out = [F.resized_crop(img, *box, [crop, crop], interpolation, antialias=True)
               for img, box in zip(images, boxes.tolist())]
        return F.to_dtype(torch.stack(out), torch.float32, scale=True)
    x = F.to_dtype(pad_batch(images), torch.float32, scale=True)
    b = boxes.to(x.device, torch.float32)
    top, left, h, w = b.unbind(1)
    idx = torch.arange(len(b), device=x.device, dtype=torch.float32)
    # aligned=True: box edges are pixel edges, so pixel k's center is k + 0.5, as in F.resize.
    rois = torch.stack([idx, left, top, left + w, top + h], dim=1)
    return roi_align(x, rois, output_size=crop, spatial_scale=1.0, sampling_ratio=2, aligned=True)

def center_crops(data, idx: torch.Tensor, crop: int) -> torch.Tensor:
    """The crop x crop centers of images `idx` (uint8 [B, 3, crop, crop]), with torchvision
    CenterCrop's rounding of the offset. Slices the store, so only the crops are copied."""
    out = []
    for i, (h, w) in zip(idx.tolist(), data.sizes[idx].tolist()):
        top, left = int(round((h - crop) / 2.0)), int(round((w - crop) / 2.0))
        out.append(data.image(i)[:, top : top + crop, left : left + crop])
    return torch.stack(out)

def draw_augmentation(sizes: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(crop boxes, flips) of one training batch of images of `sizes`, continuing `generator`'s stream: what
    `TensorLoader` draws per batch, from the sizes alone."""
    boxes = sample_crop_boxes(sizes, generator)
    return boxes, torch.rand(len(sizes), generator=generator) < 0.5

def augmented(images: Sequence[torch.Tensor], boxes: torch.Tensor, flip: torch.Tensor, crop: int,
              interpolation: InterpolationMode | None) -> torch.Tensor:
    """The training view of each image: its box resized to crop x crop, then flipped where `flip` says; float32
    in [0, 1], not yet normalized."""
    x = resized_crops(images, boxes, crop, interpolation)
    flip = flip.to(x.device)[:, None, None, None]
    return torch.where(flip, x.flip(-1), x)

def centered(images: Sequence[torch.Tensor], crop: int) -> torch.Tensor:
    """The eval view of each image (uint8 [3, h, w]): its crop x crop center, float32 in [0, 1], as
    `center_crops` cuts it from a store."""
    out = []
    for img in images:
        h, w = img.shape[-2:]
        top, left = int(round((h - crop) / 2.0)), int(round((w - crop) / 2.0))
        out.append(img[:, top : top + crop, left : left + crop])
    return F.to_dtype(torch.stack(out), torch.float32, scale=True)
