"""Crop-and-stitch for masked edits: the context around a mask is cut out at a fixed size for the
model, and the result is pasted back through a blurred copy of the mask, so every pixel outside it
keeps the source's value exactly.

The steps and their numbers are those of ComfyUI-InpaintCropAndStitch's ``InpaintCropImproved`` and
``InpaintStitchImproved`` (the nodes the seed's Fashion Change graph runs), on numpy arrays:

1. the mask: holes filled (iteratively from 1.0 down to 0.1, each level closed with a 3x3 square and
   its holes filled), grown by ``expand`` and by ``blend`` pixels (a grey dilation with a square of
   side ``ceil(1.5 * p / 4 + 1)``, the node's rule), blurred by ``blend / 2`` (a Gaussian of sigma
   ``blend / 8``), values under ``hipass`` dropped;
2. the context: the mask's bounding box grown by ``(context - 1) / 2`` of its size on each side
   (inside the picture), then widened or heightened to the target's aspect ratio, centred and
   shifted back inside the picture where it fits; where it does not, the picture is extended with
   copies of its edge rows and columns (the mask is 1 there);
3. the crop is resized to ``size`` x ``size`` (rounded up to a multiple of ``padding``): bicubic
   when that enlarges it, else bilinear; the mask the same way;
4. the blend mask is the cropped mask blurred once more (sigma ``blend / 8``);
5. stitch: the model's output and the blend mask are resized back to the context's size, mixed
   ``m * new + (1 - m) * old`` and the picture cut out of the extended canvas. Where the blend mask
   is 0 the old value comes back bit for bit.

Images are uint8 RGB ``(H, W, 3)``, masks float ``(H, W)`` in [0, 1]; resizing is PIL's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

#: The seed's InpaintCropImproved values (SEED_REPO.md §1c, FC#106:88).
SEED_SIZE, SEED_PADDING, SEED_CONTEXT = 1024, 32, 1.2
SEED_EXPAND, SEED_BLEND, SEED_HIPASS = 10, 64, 0.1
PADDINGS = (0, 8, 16, 32, 64, 128, 256, 512)
DOWNSCALE, UPSCALE = Image.Resampling.BILINEAR, Image.Resampling.BICUBIC


@dataclass(frozen=True)
class CropSettings:
    size: int = SEED_SIZE          # output_target_width = output_target_height
    padding: int = SEED_PADDING    # output_padding: the size is rounded up to a multiple of it
    context: float = SEED_CONTEXT  # context_from_mask_extend_factor
    expand: int = SEED_EXPAND      # mask_expand_pixels
    blend: int = SEED_BLEND        # mask_blend_pixels
    fill_holes: bool = True        # mask_fill_holes
    hipass: float = SEED_HIPASS    # mask_hipass_filter

    def target(self) -> int:
        return self.size if not self.padding else int(math.ceil(self.size / self.padding) * self.padding)


@dataclass(frozen=True)
class Box:
    """A rectangle, ``x``/``y`` its top-left corner (may be negative on an extended canvas)."""

    x: int
    y: int
    w: int
    h: int


@dataclass
class Crop:
    """What the model gets (``image``, ``mask``) and what the stitch needs."""

    image: np.ndarray         # (S, S, 3) uint8: the context, resized
    mask: np.ndarray          # (S, S) float32: the prepared mask over it (1 = repaint)
    blend: np.ndarray         # (S, S) float32: the mask the result is pasted back through
    canvas: np.ndarray        # (H', W', 3) uint8: the picture, extended where the context leaves it
    origin: tuple[int, int]   # where the picture's top-left corner is on the canvas
    context: Box              # the context on the canvas
    shape: tuple[int, int]    # the picture's (H, W)


# --- the mask ----------------------------------------------------------------------------------

def fill_holes(mask: np.ndarray) -> np.ndarray:
    """Holes (areas enclosed by the mask) filled, level by level from 1.0 down to 0.1."""
    from scipy.ndimage import binary_closing, binary_fill_holes

    out = mask.astype(np.float32)
    for level in (1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1):
        closed = binary_closing(out >= level, structure=np.ones((3, 3)), border_value=1)
        out = np.maximum(out, np.where(binary_fill_holes(closed), np.float32(level), np.float32(0)))
    return out


def expand(mask: np.ndarray, pixels: int) -> np.ndarray:
    """Grey dilation by a square of side ``ceil(1.5 * pixels / 4 + 1)``, the node's rule."""
    from scipy.ndimage import grey_dilation

    side = math.ceil(pixels / 4 * 1.5 + 1)
    return np.clip(grey_dilation(mask, footprint=np.ones((side, side), dtype=np.uint8)), 0.0, 1.0).astype(np.float32)


def blur(mask: np.ndarray, pixels: float) -> np.ndarray:
    """A Gaussian of sigma ``pixels / 4`` (scipy's default: mirrored edges, 4 sigma), clipped to [0, 1]."""
    from scipy.ndimage import gaussian_filter

    return np.clip(gaussian_filter(mask.astype(np.float32), sigma=pixels / 4), 0.0, 1.0).astype(np.float32)


def prepare_mask(mask: np.ndarray, s: CropSettings) -> np.ndarray:
    """Fill holes, expand, grow and blur for blending, drop values under ``hipass``."""
    out = np.clip(np.asarray(mask, dtype=np.float32), 0.0, 1.0)
    if s.fill_holes:
        out = fill_holes(out)
    if s.expand > 0:
        out = expand(out, s.expand)
    if s.blend > 0:
        out = blur(expand(out, s.blend), s.blend * 0.5)
    if s.hipass >= 0.01:
        out = np.where(out >= s.hipass, out, np.float32(0)).astype(np.float32)
    return out


# --- the context -------------------------------------------------------------------------------

def mask_box(mask: np.ndarray) -> Box | None:
    """The bounding box of the mask's non-zero pixels; None for an empty mask."""
    ys, xs = np.nonzero(mask)
    if ys.size == 0:
        return None
    x, y = int(xs.min()), int(ys.min())
    return Box(x, y, int(xs.max()) - x + 1, int(ys.max()) - y + 1)


def grow(box: Box, factor: float, height: int, width: int) -> Box:
    """``box`` grown by ``(factor - 1) / 2`` of its width and height on each side, inside the picture."""
    if factor < 1.01:
        return box
    gx = int(round(box.w * (factor - 1.0) / 2.0))
    gy = int(round(box.h * (factor - 1.0) / 2.0))
    x0, y0 = max(0, box.x - gx), max(0, box.y - gy)
    x1, y1 = min(width, box.x + box.w + gx), min(height, box.y + box.h + gy)
    return Box(x0, y0, x1 - x0, y1 - y0)


def _fit(start: int, length: int, new: int, limit: int) -> int:
    """Where a span of ``new`` centred on ``start .. start + length`` begins: shifted back inside
    ``0 .. limit`` where it fits, else centred on the picture (it overflows both ends)."""
    pos = start - (new - length) // 2
    if pos < 0:
        return 0 if new <= limit else -((new - limit) // 2)
    if pos + new > limit:
        over = pos + new - limit
        return pos - over if pos - over >= 0 else -((new - limit) // 2)
    return pos


def aspect_box(box: Box, target_w: int, target_h: int, height: int, width: int) -> Box:
    """``box`` widened (or heightened) to the target's aspect ratio, placed by ``_fit``."""
    ratio = target_w / target_h
    if box.w / box.h < ratio:
        new_w = int(box.h * ratio)
        return Box(_fit(box.x, box.w, new_w, width), box.y, new_w, box.h)
    new_h = int(box.w / ratio)
    return Box(box.x, _fit(box.y, box.h, new_h, height), box.w, new_h)


def context_box(mask: np.ndarray, s: CropSettings) -> Box:
    """The context a prepared ``mask`` is cropped with, in picture coordinates (may leave it)."""
    height, width = mask.shape
    box = mask_box(mask) or Box(0, 0, width, height)    # an empty mask: the whole picture
    box = grow(box, s.context, height, width)
    side = s.target()
    return aspect_box(box, side, side, height, width)


# --- crop and stitch ---------------------------------------------------------------------------

def _resize_rgb(image: np.ndarray, w: int, h: int, enlarge: bool) -> np.ndarray:
    resample = UPSCALE if enlarge else DOWNSCALE
    return np.asarray(Image.fromarray(image).resize((w, h), resample), dtype=np.uint8)


def _resize_mask(mask: np.ndarray, w: int, h: int, enlarge: bool) -> np.ndarray:
    resample = UPSCALE if enlarge else DOWNSCALE
    out = np.asarray(Image.fromarray(mask.astype(np.float32)).resize((w, h), resample), dtype=np.float32)
    return np.clip(out, 0.0, 1.0)


def crop(image: np.ndarray, mask: np.ndarray, s: CropSettings = CropSettings()) -> Crop:
    """The context of ``mask`` (the raw mask: it is prepared here) cut out of ``image``."""
    image = np.asarray(image, dtype=np.uint8)
    height, width = image.shape[:2]
    if mask.shape != (height, width):
        raise ValueError(f"the mask is {mask.shape[1]}x{mask.shape[0]}, the picture {width}x{height}")
    prepared = prepare_mask(mask, s)
    box = context_box(prepared, s)
    left, top = max(0, -box.x), max(0, -box.y)
    right, bottom = max(0, box.x + box.w - width), max(0, box.y + box.h - height)
    canvas = np.pad(image, ((top, bottom), (left, right), (0, 0)), mode="edge")
    canvas_mask = np.pad(prepared, ((top, bottom), (left, right)), mode="constant", constant_values=1.0)
    ctx = Box(box.x + left, box.y + top, box.w, box.h)
    cut = canvas[ctx.y:ctx.y + ctx.h, ctx.x:ctx.x + ctx.w]
    cut_mask = canvas_mask[ctx.y:ctx.y + ctx.h, ctx.x:ctx.x + ctx.w]
    side = s.target()
    enlarge = side > ctx.w or side > ctx.h
    small = _resize_rgb(np.ascontiguousarray(cut), side, side, enlarge)
    small_mask = _resize_mask(cut_mask, side, side, enlarge)
    blend = blur(small_mask, s.blend * 0.5) if s.blend > 0 else small_mask
    return Crop(image=small, mask=small_mask, blend=blend, canvas=canvas, origin=(left, top), context=ctx,
                shape=(height, width))


def blend_at_full_size(c: Crop, size: tuple[int, int] | None = None) -> np.ndarray:
    """The blend mask at the context's size on the canvas, the way ``stitch`` resizes it for a
    model output of ``size`` (w, h; default: the crop's own)."""
    w, h = size or (c.image.shape[1], c.image.shape[0])
    return _resize_mask(c.blend, c.context.w, c.context.h, c.context.w > w or c.context.h > h)


def blend_region(c: Crop) -> np.ndarray:
    """The blend mask in picture coordinates (0 outside the context): where it is 0, ``stitch``
    gives back the source's pixel."""
    full = np.zeros(c.canvas.shape[:2], dtype=np.float32)
    ctx = c.context
    full[ctx.y:ctx.y + ctx.h, ctx.x:ctx.x + ctx.w] = blend_at_full_size(c)
    left, top = c.origin
    return full[top:top + c.shape[0], left:left + c.shape[1]]


def stitch(c: Crop, result: np.ndarray) -> np.ndarray:
    """``result`` (the model's picture of the crop, any size) pasted back into the source."""
    result = np.asarray(result, dtype=np.uint8)
    h, w = result.shape[:2]
    ctx = c.context
    enlarge = ctx.w > w or ctx.h > h
    new = _resize_rgb(result, ctx.w, ctx.h, enlarge).astype(np.float64)
    m = blend_at_full_size(c, (w, h)).astype(np.float64)[..., None]
    canvas = c.canvas.astype(np.float64)
    old = canvas[ctx.y:ctx.y + ctx.h, ctx.x:ctx.x + ctx.w]
    canvas[ctx.y:ctx.y + ctx.h, ctx.x:ctx.x + ctx.w] = m * new + (1.0 - m) * old
    left, top = c.origin
    out = canvas[top:top + c.shape[0], left:left + c.shape[1]]
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)
