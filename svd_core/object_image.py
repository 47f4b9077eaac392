"""SV3D input preparation and output as the reference sampling script does it (Stability-AI generative-models,
`scripts/sampling/simple_video_sample.py`, its `"sv3d" in version` branches; SV3D tech report Sec. 4: white-background
object images at 576x576).

Input: an object image with alpha (RGBA) is
  1. cut to the object's bounding box (`cv2.boundingRect` of alpha > 0),
  2. pasted centred on a transparent square canvas of side `int(max(w, h) / image_frame_ratio)`, or, with the
     reference default `image_frame_ratio=None`, of side `in_w`, which the script reads as `image.shape[0]`: the
     input's height (the object keeps the share of the frame it had in the input),
  3. resized to the output size (reference: 576x576, Pillow LANCZOS on premultiplied RGBA; here antialiased
     bicubic on premultiplied RGBA, the resize `pipeline.prepare_image` uses),
  4. composited on white: `rgb * a + (1 - a)`.
Output: the last generated view, the one at the input's camera (relative azimuth 0), is replaced by that prepared
input image (`samples_x[-1:] = cond_frames_without_noise`).
The reference removes the background of an RGB input with rembg; here an RGB input needs an alpha or a mask
(ComfyUI: the MASK input), else it is fitted by `prepare_image` as before.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["split_alpha", "object_bbox", "canvas_side", "prepare_object", "object_input", "replace_last_view"]


def split_alpha(image: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """b 3|4 h w image in [0, 1] (+ optional mask b h w / b 1 h w / h w, 1 = object) -> (rgb b 3 h w, alpha b 1 h w
    or None). A mask wins over the image's own alpha channel."""
    if image.ndim == 3:
        image = image[None]
    if image.ndim != 4 or image.shape[1] not in (3, 4):
        raise ValueError(f"image must be (batch, 3 or 4, H, W) RGB(A) in [0, 1]; got shape {tuple(image.shape)}")
    rgb = image[:, :3].float()
    alpha = image[:, 3:4].float() if image.shape[1] == 4 else None
    if mask is not None:
        m = mask.float()
        m = m[None, None] if m.ndim == 2 else (m[:, None] if m.ndim == 3 else m)  # -> b 1 h w
        if m.ndim != 4 or m.shape[1] != 1 or m.shape[-2:] != rgb.shape[-2:] or m.shape[0] not in (1, rgb.shape[0]):
            raise ValueError(f"mask has shape {tuple(mask.shape)}; expected (H, W), (batch, H, W) or (batch, 1, H, W) "
                             f"with H, W = {tuple(rgb.shape[-2:])} (the image's size) and batch 1 or {rgb.shape[0]}")
        alpha = m.to(rgb.device).expand(rgb.shape[0], 1, -1, -1)
    return rgb, (alpha.clamp(0, 1) if alpha is not None else None)


def object_bbox(alpha: torch.Tensor) -> tuple[int, int, int, int]:
    """(x, y, w, h) of the pixels with alpha > 0 in an h w alpha map (reference: `cv2.threshold(alpha, 0, 255,
    THRESH_BINARY)` then `cv2.boundingRect`)."""
    ys, xs = torch.nonzero(alpha > 0, as_tuple=True)
    if ys.numel() == 0:
        raise ValueError("the object's alpha / mask is empty (no pixel above 0): nothing to centre; give an image "
                         "with the object opaque, a mask with 1 on the object, or turn the recentring off")
    x, y = int(xs.min()), int(ys.min())
    return x, y, int(xs.max()) - x + 1, int(ys.max()) - y + 1


def check_frame_ratio(image_frame_ratio: float) -> float:
    """`image_frame_ratio` if it lies in (0, 1] (NaN does not), else a ValueError naming it."""
    if not 0 < image_frame_ratio <= 1:
        raise ValueError(f"image_frame_ratio={image_frame_ratio} must lie in (0, 1] (the object's share of the frame "
                         f"side), or be None to keep the input's framing")
    return image_frame_ratio


def canvas_side(bbox: tuple[int, int, int, int], in_height: int, image_frame_ratio: float | None) -> int:
    """Square canvas side: `int(max(w, h) / image_frame_ratio)`, or the input's height for None (reference); never
    smaller than the object (the reference would fail there)."""
    size = max(bbox[2], bbox[3])
    if image_frame_ratio is None:
        return max(in_height, size)
    return max(int(size / check_frame_ratio(image_frame_ratio)), size)


def prepare_object(image: torch.Tensor, alpha: torch.Tensor, width: int = 576, height: int = 576,
                   image_frame_ratio: float | None = None) -> torch.Tensor:
    """RGB b 3 h w and alpha b 1 h w in [0, 1] -> b 3 height width in [0, 1]: the object cut to its bounding box,
    centred on a square canvas (see `canvas_side`), resized, on white (reference sv3d branch). A non-square output
    gets the square centred on white."""
    side_out = min(width, height)
    outs = []
    for rgb, a in zip(image.float(), alpha.float()):
        x, y, w, h = bbox = object_bbox(a[0])
        side = canvas_side(bbox, rgb.shape[-2], image_frame_ratio)
        canvas = torch.zeros(4, side, side, dtype=rgb.dtype, device=rgb.device)  # transparent black, premultiplied
        top, left = side // 2 - h // 2, side // 2 - w // 2  # reference: center - h // 2, center - w // 2
        crop_a = a[:, y:y + h, x:x + w]
        canvas[:3, top:top + h, left:left + w] = rgb[:, y:y + h, x:x + w] * crop_a  # premultiplied, as Pillow resizes
        canvas[3:, top:top + h, left:left + w] = crop_a
        if side != side_out:
            canvas = F.interpolate(canvas[None], size=(side_out, side_out), mode="bicubic", align_corners=False,
                                   antialias=True)[0]
        canvas = canvas.clamp(0, 1)
        square = canvas[:3] + (1.0 - canvas[3:])  # premultiplied over white = rgb * a + (1 - a)
        out = torch.ones(3, height, width, dtype=rgb.dtype, device=rgb.device)
        t0, l0 = (height - side_out) // 2, (width - side_out) // 2
        out[:, t0:t0 + side_out, l0:l0 + side_out] = square
        outs.append(out.clamp(0, 1))
    return torch.stack(outs)


def object_input(image: torch.Tensor, mask: torch.Tensor | None = None, *, width: int = 576, height: int = 576,
                 recenter: bool = True, image_frame_ratio: float | None = None) -> torch.Tensor:
    """An SV3D input b 3|4 h w in [0, 1] (+ optional mask, 1 = object) -> b 3 h' w' RGB in [0, 1]: with an alpha or
    mask and `recenter`, `prepare_object` (height x width); with an alpha and no recentring, the image over white
    (its size kept); without any alpha, the RGB image unchanged (`prepare_image` fits it afterwards)."""
    rgb, alpha = split_alpha(image, mask)
    if alpha is None:
        return rgb
    if recenter:
        return prepare_object(rgb, alpha, width, height, image_frame_ratio)
    return (rgb * alpha + (1.0 - alpha)).clamp(0, 1)


def replace_last_view(frames: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    """Views b t 3 H W in [0, 1] with the last view of each video set to the prepared input b 3 H W in [0, 1]
    (reference: `samples_x[-1:] = value_dict["cond_frames_without_noise"]`)."""
    if image.shape[0] != frames.shape[0] or image.shape[1:] != frames.shape[2:]:
        raise ValueError(f"input image {tuple(image.shape)} does not match the views {tuple(frames.shape)} "
                         f"(expected (batch, 3, H, W) of the views)")
    out = frames.clone()
    out[:, -1] = image.to(out.device, out.dtype)
    return out
