"""The rules a parameter value follows, each written once.

The spec models (``spec/model.py``) and the stage parameter models (``spec/params.py``) build
their fields from these types and functions, so a spec and a stage refuse a value for the same
reason, in the same words. A check raises ``ValueError("<value> is not <rule> (<fix>)")``: the
spec shows it at ``file:line:col`` (``spec/load.py``), a stage prefixes its kind and field
(``spec/params.py``).
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BeforeValidator, Field

# --- sizes: multiples of 16 --------------------------------------------------------------------

SIZE_MULTIPLE = 16
SIDE_MAX = 8192
RES_RE = re.compile(r"^(\d+)x(\d+)$")


def off_grid(v: int) -> bool:
    """Whether a side of a picture is not a positive multiple of 16."""
    return v < SIZE_MULTIPLE or v % SIZE_MULTIPLE != 0


def round16(v: int) -> int:
    """The nearest multiple of 16 (at least 16): the fix offered for an off-grid side."""
    return max(SIZE_MULTIPLE, int(round(v / float(SIZE_MULTIPLE))) * SIZE_MULTIPLE)


def multiple_of_16(v: int | None) -> int | None:
    if v is not None and off_grid(v):
        raise ValueError(f"{v} is not a multiple of 16 (try {round16(v)})")
    return v


def parse_resolution(value: str) -> tuple[int, int]:
    """``"720x1280"`` -> ``(720, 1280)`` (width, height)."""
    m = RES_RE.match(value.strip())
    if not m:
        raise ValueError(f"'{value}' is not a resolution (write WIDTHxHEIGHT, e.g. 720x1280)")
    w, h = int(m.group(1)), int(m.group(2))
    if not (SIZE_MULTIPLE <= w <= SIDE_MAX and SIZE_MULTIPLE <= h <= SIDE_MAX):
        raise ValueError(f"'{value}' is out of range (each side {SIZE_MULTIPLE}..{SIDE_MAX})")
    if off_grid(w) or off_grid(h):
        raise ValueError(f"'{value}' is not a multiple of 16 on each side (try {round16(w)}x{round16(h)})")
    return w, h


def check_resolution(v: str | None) -> str | None:
    if v is None:
        return v
    parse_resolution(v)
    return v.strip()


def even_side(v: int) -> int:
    """A side of an H.264 (yuv420p) video: even."""
    if v < 2 or v % 2:
        raise ValueError(f"{v} is not even (H.264 needs even sides: try {max(2, v + 1)})")
    return v


def parse_picture_size(value: str) -> tuple[int, int]:
    """``"1080x1920"`` -> ``(1080, 1920)``: a still's size, any whole number of pixels per side."""
    m = RES_RE.match(value.strip()) if isinstance(value, str) else None
    if not m:
        raise ValueError(f"'{value}' is not a size (write WIDTHxHEIGHT, e.g. 1080x1920)")
    w, h = int(m.group(1)), int(m.group(2))
    if not (1 <= w <= SIDE_MAX and 1 <= h <= SIDE_MAX):
        raise ValueError(f"'{value}' is out of range (each side 1..{SIDE_MAX})")
    return w, h


def check_picture_size(v: str | None) -> str | None:
    if v is None:
        return v
    parse_picture_size(v)
    return v.strip()


Size = Annotated[int, AfterValidator(multiple_of_16)]
PictureSize = Annotated[str, AfterValidator(check_picture_size)]
EvenSide = Annotated[int, AfterValidator(even_side)]
Resolution = Annotated[str, AfterValidator(check_resolution)]

InpaintSize = Annotated[int, AfterValidator(multiple_of_16), Field(ge=64)]
InpaintPadding = Literal[0, 8, 16, 32, 64, 128, 256, 512]

# --- frame counts ------------------------------------------------------------------------------

VAE_TEMPORAL = 4   # the Wan VAE packs 4 frames into one latent frame (after the first)


def four_k_plus_one(v: int) -> int:
    """A clip length the Wan VAE can encode: 4k+1 frames, at least 5."""
    if v < VAE_TEMPORAL + 1 or (v - 1) % VAE_TEMPORAL:
        fix = max(VAE_TEMPORAL + 1, VAE_TEMPORAL * round((v - 1) / VAE_TEMPORAL) + 1)
        raise ValueError(f"{v} is not 4k+1 (try {fix})")
    return v


def multiple_of_4(v: int) -> int:
    """Frames per lip-sync segment: a positive multiple of 4."""
    if v < VAE_TEMPORAL or v % VAE_TEMPORAL:
        fix = max(VAE_TEMPORAL, VAE_TEMPORAL * round(v / VAE_TEMPORAL))
        raise ValueError(f"{v} is not a multiple of 4 (try {fix})")
    return v


Frames = Annotated[int, AfterValidator(four_k_plus_one)]
SegmentFrames = Annotated[int, AfterValidator(multiple_of_4)]

# --- seeds -------------------------------------------------------------------------------------

SEED_LIMIT = 2**32      # seeds are 0..SEED_LIMIT-1 (a drawn seed too)
SEEDS = f"0..{SEED_LIMIT - 1}"


def _seed_or_none(v: int | None, draw: bool) -> int | None:
    if v is None or (draw and v == -1) or 0 <= v < SEED_LIMIT:
        return v
    raise ValueError(f"{v} is not a seed (use {SEEDS}{', or -1 to draw one' if draw else ''})")


def check_seed(v: int | None) -> int | None:
    """A seed as a spec writes it: 0..4294967295, or -1 to draw one at plan time."""
    return _seed_or_none(v, draw=True)


def check_drawn_seed(v: int | None) -> int | None:
    """A seed a stage runs with (drawn already)."""
    return _seed_or_none(v, draw=False)


SpecSeed = Annotated[int, AfterValidator(check_seed)]
Seed = Annotated[int, AfterValidator(check_drawn_seed)]

# --- numbers -----------------------------------------------------------------------------------

Steps = Annotated[int, Field(ge=1)]
Guidance = Annotated[float, Field(ge=0.0, le=30.0)]
Shift = Annotated[float, Field(gt=0.0, le=50.0)]
Boundary = Annotated[float, Field(ge=0.0, le=1.0)]
LoraWeight = Annotated[float, Field(ge=-4.0, le=4.0)]
Fps = Annotated[int, Field(ge=1, le=120)]
BlockSwap = Annotated[int, Field(ge=0, le=40)]
CacheThreshold = Annotated[float, Field(ge=0.0, le=2.0)]
CacheStartStep = Annotated[int, Field(ge=0)]
Start = Annotated[float, Field(ge=0.0)]
End = Annotated[float, Field(gt=0.0)]
Overlap = Annotated[float, Field(ge=0.0, le=0.9)]
Fraction = Annotated[float, Field(gt=0.0, le=1.0)]
Crf = Annotated[int, Field(ge=0, le=51)]
Loudness = Annotated[float, Field(ge=-70.0, le=-5.0)]      # integrated LUFS
MusicGain = Annotated[float, Field(ge=-60.0, le=12.0)]
DuckDb = Annotated[float, Field(gt=0.0, le=40.0)]
DetectThreshold = Annotated[float, Field(gt=0.0, lt=1.0)]     # a box's score, a sigmoid


def end_after_start(start: float, end: float | None) -> None:
    if end is not None and end <= start:
        raise ValueError(f"end {end} is not after start {start} (make end > start)")


def frame_position(v: Any) -> Any:
    """``first``, ``last`` or seconds >= 0 (the frame shown at that time)."""
    if v in ("first", "last"):
        return v
    if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0:
        return float(v)
    raise ValueError(f"{v!r} is not a frame position (use first, last or seconds >= 0)")


FramePosition = Annotated[Any, BeforeValidator(frame_position)]

# --- choices -----------------------------------------------------------------------------------

Scheduler = Literal["unipc", "euler"]
# how speech reaches wav2vec2's 16 kHz (part of the lip-sync key): soxr at high quality, as
# librosa.load(sr=16000) does in the official S2V code
SpeechResampler = Literal["soxr_hq"]
WanAttention = Literal["auto", "sdpa", "cudnn", "fa3", "fa4", "flash", "sageattn"]
Compile = Literal["auto", "on", "off"]
WanQuantize = Literal["fp8", "fp8_e4m3fn"]   # fp8 compute (torchao) | fp8 weight storage
AnimateMode = Literal["animate", "replace"]
AnimateAttention = Literal["sdpa", "cudnn", "fa3", "fa4", "sageattn", "flash"]
AnimateQuantize = Literal["fp8_e4m3fn"]
PRESCALED_FP8 = "fp8_e4m3fn_scaled"
# a run also takes pre-scaled fp8, which it replaces by fp8_e4m3fn with a warning (the bf16 model has
# no scales); a spec may not ask for it (no_prescaled says why)
AnimateRunQuantize = Literal[AnimateQuantize, PRESCALED_FP8]
Precision = Literal["bf16", "fp16", "fp32"]
RmsNorm = Literal["pytorch"]
PrevFrames = Literal[1, 5]
CacheKind = Literal["teacache", "none"]
PreprocessBackend = Literal["mediapipe", "onnx"]
PrepOutput = Literal["pose", "face", "mask", "background"]
Stem = Literal["vocals", "accompaniment"]
TtsBackend = Literal["espeak", "qwen3-tts"]
InterpolateBackend = Literal["minterpolate", "rife", "amt"]
FlowScale = Literal[0.25, 0.5, 1.0, 2.0, 4.0]
#: The profile role of each learned interpolator's model (``minterpolate`` needs none).
INTERPOLATE_ROLES = {"rife": "interpolate", "amt": "interpolate_amt"}


def no_prescaled(v: Any) -> Any:
    if v == PRESCALED_FP8:
        raise ValueError(f"{PRESCALED_FP8} needs pre-scaled weights, which the bf16 model does "
                         "not have (use fp8_e4m3fn)")
    return v


def scale_fits_backend(backend: str, scale: float) -> None:
    """AMT's all-pairs correlation grows with the square of the pixels it is run on: it takes
    scales up to 1 (the official ``scale_factor`` only shrinks)."""
    if backend == "amt" and scale > 1:
        raise ValueError(f"scale {scale} is not at most 1 for backend amt (its correlation volume grows with "
                         "the fourth power of the scale; use 1.0, or 0.5 for 4K frames)")


def prev_below_window(prev: int, window: int) -> None:
    if prev >= window:
        raise ValueError(f"prev_frames {prev} is not smaller than frame_window {window} "
                         "(use a longer frame_window)")
