"""The spec language, version 1, as pydantic models.

Every model forbids unknown keys. Defaults follow the seed system's tables (FLUX.2-klein:
4 steps, guidance 1.0; Wan2.2 I2V: 81 frames, 40 steps, guidance 5.0, shift 5.0; the A14B
expert switch at boundary 0.9).
"""

from __future__ import annotations

import re
from typing import Annotated, Any, ClassVar, Literal, Union

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, field_validator, model_validator

from .rules import parse_resolution  # noqa: F401  (the planner reads sizes through the spec model)
from .rules import (
    AnimateAttention, AnimateMode, AnimateQuantize, BlockSwap, Boundary, CacheKind, CacheStartStep, CacheThreshold,
    Compile, Crf, DetectThreshold, DuckDb, End, FlowScale, FramePosition, Frames, Fps, Guidance, InpaintPadding,
    InpaintSize, InterpolateBackend, Loudness, LoraWeight, MusicGain, PictureSize, Precision, PrevFrames,
    PreprocessBackend, Resolution, RmsNorm, Scheduler, SegmentFrames, Shift, Size, SpecSeed, Start, Steps, Stem,
    TtsBackend, WanAttention, WanQuantize, end_after_start, no_prescaled, prev_below_window, scale_fits_backend,
)

ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False, allow_inf_nan=False)


Parallel = Literal["auto", "dp", "sp"] | int
PARALLEL_DOC = ("with several ranks (--nproc): 'dp' runs the stage on one rank, 'sp' splits it over "
                "ranks (sequence parallel, GPUs only), a number N splits it over N ranks, 'auto' "
                "follows --parallel")


def _check_parallel(v: Any) -> Any:
    if isinstance(v, str) and v in ("auto", "dp", "sp"):
        return v
    if isinstance(v, int) and not isinstance(v, bool) and v >= 1:
        return v
    raise ValueError(f"{v!r} is not a parallel setting (use auto, dp, sp, or a rank count such as 2)")


URL_SCHEMES = ("http://", "https://")
DEFAULT_ALLOW_HOSTS = ("youtube.com", "youtu.be")


def is_url(value: Any) -> bool:
    """An ``http://`` or ``https://`` string: a download, not a file."""
    return isinstance(value, str) and value.strip().lower().startswith(URL_SCHEMES)


# Tags of "a plain value or a mapping" unions; error paths leave them out (spec/load.py).
PLAIN_TAG, MAPPING_TAG = "<plain>", "<mapping>"


def _plain_or_mapping(value: Any) -> str:
    return MAPPING_TAG if isinstance(value, dict) or isinstance(value, BaseModel) else PLAIN_TAG


def plain_or(plain: Any, mapping: type) -> Any:
    """A field that is either a plain value (a path, ``cut``) or a mapping model."""
    return Annotated[Union[Annotated[plain, Tag(PLAIN_TAG)], Annotated[mapping, Tag(MAPPING_TAG)]],
                     Discriminator(_plain_or_mapping)]


class FrameFrom(Strict):
    """One frame of a video, as an image."""

    source: str = Field(description="video file or URL")
    at: FramePosition = Field("first", description="'first', 'last' or a time in seconds (the frame shown "
                                                   "at that time)", json_schema_extra={"type": ["string", "number"]})


class ImageSource(Strict):
    """An image made from another file: ``{frame: {source, at}}``."""

    frame: FrameFrom


class SeparateFrom(Strict):
    """Vocals or accompaniment of a song (demucs)."""

    source: str = Field(description="audio or video file, or URL")
    stem: Stem = Field(
        "vocals", description="vocals, or everything but the vocals")


class ExtractFrom(Strict):
    """The sound of a file, optionally a time range of it."""

    source: str = Field(description="video or audio file, or URL")
    start: Start = Field(0.0, description="seconds")
    end: End | None = Field(None, description="seconds; default: the end")

    @model_validator(mode="after")
    def _range(self) -> "ExtractFrom":
        end_after_start(self.start, self.end)
        return self


# --- audio sources: a path or URL, or a mapping with exactly one source key -------------------

class TtsSource(Strict):
    """Speech synthesised from text (stage ``<scene>.tts``)."""

    text: str = Field(description="the line to speak (an empty line fails the tts stage)")
    language: str = Field(description="espeak: an eSpeak code (ko, en, zh/cmn, ja, ...); "
                                      "qwen3-tts: ko, en, zh, ja, de, fr, ru, pt, es, it or the model's names")
    backend: TtsBackend = Field("espeak", description="espeak (embedded) or qwen3-tts")
    voice: str | None = Field(None, description="espeak: a variant (f1..f5, m1..m7, ...); "
                                                "qwen3-tts: a CustomVoice speaker (vivian, ryan, sohee, ...)")
    instruct: str | None = Field(None, description="qwen3-tts: how to say it (ignored by espeak)")
    seed: SpecSeed | None = Field(None, description="qwen3-tts samples: the seed (default: the scene's)")


class AudioSource(Strict):
    """Audio: a file or URL, or audio made by a stage. Exactly one source key is given."""

    NOT_SOURCES: ClassVar[tuple[str, ...]] = ()

    file: str | None = Field(None, description="an audio (or video) file, or URL")
    tts: TtsSource | None = Field(None, description="speech from text (stage <scene>.tts)")
    separate: SeparateFrom | None = Field(None, description="a stem of a song (stage <scene>.separate)")
    extract: ExtractFrom | None = Field(None, description="the sound of a file (stage <scene>.extract_audio)")

    def source_keys(self) -> list[str]:
        return [k for k in type(self).model_fields if k not in self.NOT_SOURCES]

    def source(self) -> str:
        """The one source key that is set."""
        return next(k for k in self.source_keys() if getattr(self, k) is not None)

    @model_validator(mode="after")
    def _exactly_one(self) -> "AudioSource":
        given = [k for k in self.source_keys() if getattr(self, k) is not None]
        if len(given) != 1:
            keys = ", ".join(self.source_keys())
            raise ValueError(f"give exactly one audio source, not {' and '.join(given) if given else 'none'} "
                             f"(one of: {keys})")
        return self


ImageRef = plain_or(str, ImageSource)
AudioRef = plain_or(str, AudioSource)


class ImageLora(Strict):
    name: str = Field(description="LoRA name under lora_adpts/img/, or a .safetensors path")
    weight: LoraWeight = Field(1.0, description="adapter weight")


class VideoLora(Strict):
    name: str = Field(description="LoRA name under lora_adpts/mov/, or a .safetensors path")
    high: LoraWeight = Field(1.0, description="weight on the high-noise expert (early steps)")
    low: LoraWeight = Field(1.0, description="weight on the low-noise expert (late steps)")


# --- masked edits: image.source, image.mask, image.inpaint --------------------------------------

PICTURE_KEYS = ("frame", "scene", "stage")


class PictureSource(Strict):
    """The picture of a masked edit that is not a plain path or URL: a frame of a video, or the
    image of another scene or stage (planned as ``image.references``' are). Exactly one key."""

    frame: FrameFrom | None = Field(None, description="one frame of a video")
    scene: str | None = Field(None, description="that scene's image as the scene ends it (fitted, else "
                                                "upscaled, else as generated)")
    stage: str | None = Field(None, description="the output of an image stage, by id (e.g. avatar.image)")

    def kind(self) -> str:
        """The one key that is set."""
        return next(k for k in PICTURE_KEYS if getattr(self, k) is not None)

    @model_validator(mode="after")
    def _exactly_one(self) -> "PictureSource":
        given = [k for k in PICTURE_KEYS if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one image source, not {' and '.join(given) if given else 'none'} "
                             f"(one of: {', '.join(PICTURE_KEYS)}, or a path)")
        return self


PictureRef = plain_or(str, PictureSource)


class SegmentFrom(Strict):
    """A mask found by a phrase: Grounding DINO boxes above ``threshold``, SAM's masks in them, united."""

    source: PictureRef = Field(description="the picture to look in (a path, URL, {frame: {source, at}}, "
                                           "{scene: ID} or {stage: ID})")
    text: str = Field(min_length=1, description="what to mask, e.g. 'clothing, garment, dress'")
    threshold: DetectThreshold = Field(0.3, description="keep the boxes scoring above this (0..1)")


class MaskSource(Strict):
    """A mask made by a stage: ``{segment: {source, text, threshold}}``."""

    segment: SegmentFrom


MaskRef = plain_or(str, MaskSource)


class Inpaint(Strict):
    """How a masked edit is cropped and pasted back (ComfyUI's InpaintCropImproved; the defaults are
    the seed's Fashion Change values)."""

    size: InpaintSize = Field(1024, description="the crop around the mask is resized to size x size for the model")
    padding: InpaintPadding = Field(32, description="size is rounded up to a multiple of this")
    context: float = Field(1.2, ge=1.0, le=100.0, description="the mask's box grown by this factor for context")
    expand: int = Field(10, ge=0, le=512, description="grow the mask by this many pixels (the node's rule)")
    blend: int = Field(64, ge=0, le=64, description="pixels over which the edit fades into the picture")
    fill_holes: bool = Field(True, description="fill areas the mask encloses")
    hipass: float = Field(0.1, ge=0.0, le=1.0, description="mask values under this are dropped")
    strength: float = Field(1.0, gt=0.0, le=1.0, description="1.0 repaints from pure noise inside the mask")
    reference_megapixels: float = Field(1.0, gt=0.0, le=4.0, description="a reference picture (image 2) is "
                                                                          "scaled to this many megapixels")


# --- image references: what a FLUX.2-klein edit is given (image.references, image.prepare) -------

MAX_REFERENCES = 10
ImageModel = Literal["distilled", "base"]
REFERENCE_KEYS = ("frame", "scene", "stage", "face_crop", "edit", "reference")


class FaceCropFrom(Strict):
    """The head of a photo, cropped as the seed's ``crop_face_head`` does (stage ``face_crop``)."""

    source: "ReferenceRef" = Field(description="the photo: a path, URL or any reference")


class Reference(Strict):
    """An image for an edit that is not a plain path or URL: exactly one key."""

    frame: FrameFrom | None = Field(None, description="one frame of a video")
    scene: str | None = Field(None, description="that scene's image as the scene ends it (fitted, else "
                                                "upscaled, else as generated)")
    stage: str | None = Field(None, description="the output of an image stage, by id (e.g. body.image)")
    face_crop: FaceCropFrom | None = Field(None, description="the head of a photo (stage face_crop)")
    edit: "ImageEdit | None" = Field(None, description="an image edit made by its own stage")
    reference: int | None = Field(None, ge=1, description="image.prepare only: the Nth of the stage's "
                                                          "references, from 1")

    def kind(self) -> str:
        """The one key that is set."""
        return next(k for k in REFERENCE_KEYS if getattr(self, k) is not None)

    @model_validator(mode="after")
    def _exactly_one(self) -> "Reference":
        given = [k for k in REFERENCE_KEYS if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one image source, not {' and '.join(given) if given else 'none'} "
                             f"(one of: {', '.join(REFERENCE_KEYS)}, or a path)")
        return self


ReferenceRef = plain_or(str, Reference)


class ImageEdit(Strict):
    """FLUX.2-klein: text to image, or an edit of the images in ``references``."""

    preset: str | None = Field(None, description="preset applied under this stage's values")
    prompt: str = Field(min_length=1)
    negative_prompt: str | None = None
    steps: Steps = Field(4)
    guidance: Guidance = Field(1.0)
    model: ImageModel = Field("distilled", description="distilled: FLUX.2-klein-9B (no CFG); base: the "
                                                       "undistilled FLUX.2-klein-base-9B (CFG with guidance > 1)")
    width: Size | None = Field(None, description="default: the scene's width; with references, the first "
                                                 "reference's (as the pipeline scales it)")
    height: Size | None = Field(None, description="default: the scene's height; with references, the first "
                                                  "reference's")
    seed: SpecSeed | None = Field(None, description="-1 draws a seed at plan time (written to render.lock)")
    loras: list[ImageLora] = Field(default_factory=list)
    references: list[ReferenceRef] = Field(
        default_factory=list, max_length=MAX_REFERENCES,
        description="images the edit is given, in order (image 1 first): paths, URLs, {frame}, {scene}, "
                    "{stage}, {face_crop}, {edit}")
    prompt_prefix: str | None = Field(None, description="put before the prompt (a preset's trigger phrase)")

    def full_prompt(self) -> str:
        """The prompt the model reads: ``prompt_prefix`` then ``prompt``."""
        return f"{self.prompt_prefix}{self.prompt}" if self.prompt_prefix else self.prompt


class ImageStage(ImageEdit):
    """FLUX.2-klein text to image, a multi-reference edit, or (with ``mask``) a masked edit of ``source``."""

    prepare: list[ReferenceRef] | None = Field(
        None, min_length=1, max_length=MAX_REFERENCES,
        description="the references the model sees, made from the given ones ({reference: N}): "
                    "set by presets such as avatar_prepare")
    upscale: Literal["x2", False] = Field(False, description="'x2' runs Real-ESRGAN x2 after the image")
    fit: PictureSize | None = Field(None, description="WIDTHxHEIGHT: crop to that aspect (centred; a too tall "
                                                     "image keeps its top) and resize (LANCZOS), last")
    source: PictureRef | None = Field(None, description="the picture a masked edit repaints: a path, URL, "
                                                         "{frame}, {scene} or {stage} (default: the mask's "
                                                         "segment source)")
    mask: MaskRef | None = Field(None, description="where to repaint: a mask file (white repaints) or "
                                                   "{segment: {source, text, threshold}}")
    inpaint: Inpaint = Field(default_factory=Inpaint, description="crop and paste-back of a masked edit")

    @model_validator(mode="after")
    def _masked(self) -> "ImageStage":
        if self.mask is None:
            if self.source is not None:
                raise ValueError("source is the picture a masked edit repaints: add a mask")
            if "inpaint" in self.model_fields_set:
                raise ValueError("inpaint settings belong to a masked edit: add a mask, or remove inpaint")
            return self
        if self.source is None and not isinstance(self.mask, MaskSource):
            raise ValueError("a mask file needs the picture it applies to: set source")
        sizes = [k for k in ("width", "height") if getattr(self, k) is not None]
        if sizes:
            raise ValueError(f"a masked edit keeps its source's size: remove {' and '.join(sizes)}")
        seen = self.prepare if self.prepare is not None else self.references
        if len(seen) > 1:
            raise ValueError(f"a masked edit is given its crop as image 1 and at most one reference as image 2, "
                             f"not {len(seen)}")
        return self

    @field_validator("upscale", mode="before")
    @classmethod
    def _upscale(cls, v: Any) -> Any:
        if v is True or v == "x2":
            return "x2"
        if v is False or v is None:
            return False
        raise ValueError(f"{v!r} is not an upscale factor (use x2, or false for none)")


FaceCropFrom.model_rebuild()
Reference.model_rebuild()
ImageEdit.model_rebuild()


class StepCache(Strict):
    """Step caching: reuse the transformer's residual while the input barely changes."""

    kind: CacheKind = "teacache"
    threshold: CacheThreshold = Field(0.15, description="TeaCache rel_l1_thresh (0.3 blurs)")
    start_step: CacheStartStep = Field(1, description="the first steps always compute")
    coefficients: bool = Field(True, description="rescale the distance with the model's published "
                                                 "polynomial, where one exists")


class RankOptions(Strict):
    """How a heavy stage spreads over torchrun ranks (``--nproc``)."""

    parallel: Parallel = Field("auto", description=PARALLEL_DOC)

    _parallel = field_validator("parallel", mode="before")(_check_parallel)


class SpeedOptions(RankOptions):
    """How a Wan transformer runs (docs/performance.md). ``attention`` and ``compile`` are exact
    (bf16 rounding aside) and not part of the content key; ``quantize`` changes the output and is."""

    attention: WanAttention = Field(
        "auto", description="attention kernel; auto: FlashAttention-3 > FlashAttention-4 > cuDNN on CUDA, SDPA elsewhere")
    compile: Compile = Field(
        "auto", description="regional torch.compile of the transformer blocks; auto: on CUDA only")
    quantize: WanQuantize | None = Field(
        None, description="fp8: the blocks' matrix products in float8 with per-row scales (lossy, faster); "
                          "fp8_e4m3fn: weights stored in float8, computed in bf16 (lossy, half the weight memory)")

    @field_validator("compile", mode="before")
    @classmethod
    def _yaml_on_off(cls, v: Any) -> Any:
        return {True: "on", False: "off"}.get(v, v) if isinstance(v, bool) else v   # YAML reads on/off as booleans


class Interpolate(Strict):
    """Frame interpolation of a clip to a higher rate (``stages/interpolate.py``)."""

    fps: Fps | None = Field(None, description="the clip's new rate, e.g. 48 or 64; give fps or factor")
    factor: int | None = Field(None, ge=2, le=8, description="multiply the clip's rate: 2 (16 -> 32) or 4 "
                                                             "(16 -> 64)")
    backend: InterpolateBackend = Field(
        "minterpolate", description="minterpolate: ffmpeg motion-compensated interpolation (no weights); "
                                    "rife: the profile's RIFE model (role interpolate); amt: the profile's "
                                    "AMT model (role interpolate_amt; AMT-G in production)")
    scale: FlowScale = Field(
        1.0, description="rife, amt: the flow estimation's scale (0.5 for 4K frames; amt: at most 1)")

    @model_validator(mode="after")
    def _one_rate(self) -> "Interpolate":
        if (self.fps is None) == (self.factor is None):
            raise ValueError("give exactly one of fps (the new rate) or factor (the multiple of the clip's rate)")
        scale_fits_backend(self.backend, self.scale)
        return self

    def target(self, fps: int) -> int:
        """The new rate of a clip made at ``fps``."""
        return self.fps if self.fps is not None else fps * (self.factor or 1)


class Shadow(Strict):
    """A floor shadow under the person of a clip (``stages/shadow.py``)."""

    opacity: float = Field(0.45, gt=0.0, le=1.0, description="darkness of the shadow where it is densest")


def _shadow_switch(v: Any) -> Any:
    """``shadow: true`` is the seed's shadow; ``false`` none."""
    if v is True:
        return {}
    if v is False:
        return None
    return v


def _interp_number(v: Any) -> Any:
    """``interpolate: 2`` is ``{factor: 2}``; ``false`` none."""
    if v is False:
        return None
    if isinstance(v, int) and not isinstance(v, bool):
        return {"factor": v}
    return v


MAX_KEYFRAMES = 64


class TwoPass(Strict):
    """The two-resolution expert hand-off: the high-noise expert's steps at a reduced size, the
    latent upscaled through the VAE (decode, resize, encode), the low-noise expert's steps at the
    stage's full size."""

    base_width: Size | None = Field(None, description="width of the first pass (its height keeps the "
                                                      "clip's aspect, rounded to 16); e.g. 288")
    scale: float | None = Field(None, gt=1.0, le=8.0, description="full size / base size, e.g. 2.5 "
                                                                  "(720x1280 from 288x512)")
    high_steps: Steps | None = Field(None, description="steps the high-noise expert takes at the base "
                                                       "size; default: half of steps")

    @model_validator(mode="after")
    def _a_size(self) -> "TwoPass":
        if self.base_width is None and self.scale is None:
            raise ValueError("give base_width (e.g. 288) or scale (e.g. 2.5), or both")
        return self

    def base_size(self, width: int, height: int) -> tuple[int, int]:
        """The first pass's (width, height) for a clip of ``width`` x ``height``."""
        bw = self.base_width if self.base_width is not None else _round16(width / (self.scale or 1.0))
        return bw, _round16(bw * height / width)


def _round16(v: float) -> int:
    return max(16, 16 * round(v / 16))


def _lengths(v: Any) -> Any:
    """``lengths: 33`` is one length for every clip."""
    return [v] if isinstance(v, int) and not isinstance(v, bool) else v


class VideoStage(SpeedOptions):
    """Wan2.2 image to video with two experts (high-noise, low-noise)."""

    preset: str | None = None
    image: ImageRef | None = Field(None, description="start image file (or URL, or {frame: {source, at}}); "
                                                      "default: the scene's generated image")
    last_image: ImageRef | None = Field(None, description="end image for first-last-frame clips")
    prompt: str = ""
    negative_prompt: str | None = None
    resolution: Resolution | None = Field(None, description="WIDTHxHEIGHT; default: the scene's")
    frames: Frames = Field(81, description="frames per segment; must be 4k+1")
    steps: Steps = Field(40)
    guidance: Guidance = Field(5.0, description="CFG of the high-noise expert")
    guidance_2: Guidance | None = Field(None, description="CFG of the low-noise expert; default: guidance")
    shift: Shift = Field(5.0)
    boundary: Boundary = Field(0.9, description="expert switch, as a fraction of timesteps")
    scheduler: Scheduler = "unipc"
    segments: int = Field(1, ge=1, description="chained clips, each starting from the last frame")
    keyframes: list[ImageRef] | None = Field(
        None, min_length=2, max_length=MAX_KEYFRAMES,
        description="images the clip passes through: one first-last-frame clip per consecutive pair")
    loop: bool = Field(False, description="keyframes: one more clip, from the last keyframe back to the first")
    lengths: list[Frames] | None = Field(None, description="keyframes: frames of each clip (4k+1), one "
                                                           "number for all; default: frames")
    _lengths = field_validator("lengths", mode="before")(_lengths)
    two_pass: TwoPass | None = Field(None, description="high-noise steps at a reduced size, then the "
                                                       "latent upscaled and the low-noise steps at full size")
    seed: SpecSeed | None = None
    loras: list[VideoLora] = Field(default_factory=list)
    cache: StepCache | None = Field(None, description="TeaCache step caching; off by default")
    interpolate: Interpolate | None = Field(None, description="raise the clip's frame rate (off by default)")
    _interp = field_validator("interpolate", mode="before")(_interp_number)
    block_swap: BlockSwap = Field(0, description="blocks of each expert kept in RAM and streamed in (CUDA; "
                                                  "exact, not keyed)")
    lora_fuse: Compile = Field(
        "auto", description="fuse the LoRAs into the experts' weights (no per-step LoRA cost; a clip with "
                            "other LoRAs gets a fresh copy of the model); auto: on CUDA, resident bf16 experts")
    _lora_fuse = field_validator("lora_fuse", mode="before")(SpeedOptions._yaml_on_off.__func__)

    @model_validator(mode="after")
    def _chain(self) -> "VideoStage":
        if self.keyframes is not None:
            clashes = [k for k in ("image", "last_image") if getattr(self, k) is not None]
            if self.segments != 1:
                clashes.append("segments")
            if clashes:
                raise ValueError(f"keyframes make the clips; remove {' and '.join(clashes)}")
            if self.lengths is not None and len(self.lengths) not in (1, self.clip_count()):
                raise ValueError(f"lengths has {len(self.lengths)} values for {self.clip_count()} clips "
                                 f"({len(self.keyframes)} keyframes, loop {str(self.loop).lower()}): give one "
                                 f"number or {self.clip_count()}")
        elif self.lengths is not None or self.loop:
            raise ValueError("lengths and loop belong to keyframes: add keyframes, or remove them")
        if self.two_pass is not None:
            if self.scheduler != "euler":
                raise ValueError("two_pass runs the flow-match Euler sampler: set scheduler: euler")
            if self.cache is not None and self.cache.kind != "none":
                raise ValueError("two_pass cannot take a step cache: remove cache")
            high = self.two_pass.high_steps
            if high is not None and high >= self.steps:
                raise ValueError(f"two_pass.high_steps {high} leaves no step for the low-noise expert "
                                 f"(steps is {self.steps})")
            if self.steps < 2:
                raise ValueError("two_pass needs at least 2 steps (one for each expert)")
        return self

    def clip_count(self) -> int:
        """keyframes: clips made (N when looping, else N-1)."""
        n = len(self.keyframes or ())
        return n if self.loop else n - 1

    def clip_lengths(self) -> list[int]:
        """keyframes: the frames of each clip."""
        lengths = self.lengths or [self.frames]
        return lengths * self.clip_count() if len(lengths) == 1 else list(lengths)


class LipsyncStage(SpeedOptions):
    """Wan2.2-S2V-14B: an avatar image and speech become a talking video of the speech's length."""

    preset: str | None = None
    avatar: ImageRef | None = Field(None, description="reference image (file, URL or {frame: {source, at}}); "
                                                       "default: the scene's generated image")
    audio: AudioRef = Field(description="speech: a file path (or URL), or a mapping with exactly one "
                                        "source key (file, tts, separate, extract)")
    prompt: str = ""
    negative_prompt: str | None = Field(None, description="default: the model's own negative prompt")
    resolution: Resolution | None = Field(None, description="WIDTHxHEIGHT; 480x832 is the fast choice")
    steps: Steps = Field(25, description="UniPC steps (the seed's 40 -> 25)")
    infer_frames: SegmentFrames = Field(80, description="frames per segment, a multiple of 4 (~5 s at 16 fps)")
    guidance: Guidance = Field(5.5)
    shift: Shift = Field(3.0)
    boundary: Boundary = Field(0.9, description="where LoRA weights switch from high to low, as a fraction of "
                                                "timesteps")
    scheduler: Scheduler = "unipc"
    seed: SpecSeed | None = None
    pose_video: str | None = Field(None, description="optional driving pose video")
    loras: list[VideoLora] = Field(default_factory=list)
    cache: StepCache | None = Field(None, description="off by default (quality first)")
    interpolate: Interpolate | None = Field(None, description="raise the clip's frame rate (off by default)")
    _interp = field_validator("interpolate", mode="before")(_interp_number)
    block_swap: BlockSwap = Field(0, description="transformer blocks kept in RAM and streamed in (CUDA; "
                                                  "exact, not keyed)")


class AnimateLora(Strict):
    name: str = Field(description="LoRA name under lora_adpts/mov/, or a .safetensors path")
    weight: LoraWeight = Field(1.0)


class Preprocess(Strict):
    """How the reference video becomes pose, face, mask and background videos."""

    backend: PreprocessBackend = Field(
        "mediapipe", description="mediapipe (embedded models) or the official YOLO + ViTPose ONNX files")
    detector: str | None = Field(None, description="YOLO person detector .onnx (backend onnx)")
    pose_model: str | None = Field(None, description="ViTPose whole-body .onnx (backend onnx)")

    @model_validator(mode="after")
    def _onnx_needs_files(self) -> "Preprocess":
        if self.backend == "onnx" and (self.detector is None or self.pose_model is None):
            raise ValueError("backend onnx needs 'detector' and 'pose_model' (.onnx files)")
        return self


class AnimateStage(RankOptions):
    """Wan2.2-Animate: the person of a reference video replaced by (or animating) a character."""

    preset: str | None = None
    model: str | None = Field(None, description="the animate model, by a name the profile knows "
                                                "or a hub id / local folder")
    reference_video: str = Field(description="the video whose motion (and audio) is used")
    character: ImageRef | None = Field(None, description="one frontal photo (file, URL or {frame: {source, "
                                                          "at}}); default: the scene's image")
    mode: AnimateMode = Field(
        "animate", description="replace: the character takes the person's place in the video")
    prompt: str = ""
    negative_prompt: str | None = None
    resolution: Resolution | None = None
    steps: Steps = Field(20)
    guidance: Guidance = Field(1.0)
    shift: Shift = Field(5.0)
    scheduler: Scheduler = "unipc"
    seed: SpecSeed | None = None
    frame_window: Frames = Field(77, description="frames per window (4k+1); long videos run in windows")
    prev_frames: PrevFrames = Field(1, description="frames of the previous window that condition the next")
    max_frames: Frames = Field(601, description="cap of the frame count (4k+1)")
    loras: list[AnimateLora] = Field(default_factory=list)
    precision: Precision = Field("bf16", description="base precision")
    quantize: AnimateQuantize | None = Field(None, description="runtime weight quantization")
    attention: AnimateAttention = "sdpa"
    rms_norm: RmsNorm = "pytorch"
    block_swap: BlockSwap = Field(0, description="transformer blocks kept in RAM, streamed in")
    lora_fuse: Compile = Field(
        "auto", description="add the LoRAs into the working copy's weights (no per-step LoRA cost); "
                            "auto: on CUDA")
    _lora_fuse = field_validator("lora_fuse", mode="before")(SpeedOptions._yaml_on_off.__func__)
    cache: StepCache | None = None
    preprocess: Preprocess = Field(default_factory=Preprocess)
    shadow: Shadow | None = Field(None, description="true (or {opacity}): a floor shadow under the person, "
                                                    "before interpolation; off by default")
    interpolate: Interpolate | None = Field(None, description="raise the clip's frame rate (off by default)")
    _interp = field_validator("interpolate", mode="before")(_interp_number)

    _shadow_switch = field_validator("shadow", mode="before")(_shadow_switch)

    _no_prescaled = field_validator("quantize", mode="before")(no_prescaled)

    @model_validator(mode="after")
    def _prev_below_window(self) -> "AnimateStage":
        prev_below_window(self.prev_frames, self.frame_window)
        return self


class Crossfade(Strict):
    crossfade: float = Field(gt=0.0, le=10.0, description="seconds the two scenes overlap")


Transition = plain_or(Literal["cut"], Crossfade)


class AudioStage(AudioSource):
    """Audio laid under the scene: a file or a source such as ``tts`` (a plain string is a file)."""

    NOT_SOURCES: ClassVar[tuple[str, ...]] = ("gain_db",)

    gain_db: float = Field(0.0, ge=-60.0, le=24.0)


class Scene(Strict):
    id: str = Field(description="unique scene id: letters, digits, '-' and '_'")
    preset: str | None = None
    matrix: dict[str, list[Any]] | None = Field(
        None, description="expand this scene once per combination; values usable as {{ name }}")
    resolution: Resolution | None = None
    seed: SpecSeed | None = None
    duration: float | None = Field(None, gt=0.0, description="seconds a still scene lasts")
    image: ImageStage | None = None
    video: VideoStage | None = None
    lipsync: LipsyncStage | None = None
    animate: AnimateStage | None = None
    audio: AudioStage | None = None
    transition: Transition | None = Field(
        None, description="into this scene from the one before it: cut or {crossfade: seconds}; "
                          "default: the assembly's")

    @field_validator("id")
    @classmethod
    def _id(cls, v: str) -> str:
        if not ID_RE.match(v):
            fix = re.sub(r"[^A-Za-z0-9_-]+", "-", v).strip("-") or "scene"
            raise ValueError(f"'{v}' is not a valid id (use letters, digits, '-', '_'; try '{fix}')")
        return v

    @field_validator("audio", mode="before")
    @classmethod
    def _audio_shorthand(cls, v: Any) -> Any:
        return {"file": v} if isinstance(v, str) else v

    @model_validator(mode="after")
    def _has_visual(self) -> "Scene":
        motion = [k for k in ("video", "lipsync", "animate") if getattr(self, k) is not None]
        if self.image is None and not motion and self.audio is not None:
            raise ValueError("a scene needs a picture: 'audio' alone is not a scene (add an 'image' "
                             "for a still, or lay the sound under another scene or as assemble.music)")
        if self.image is None and not motion:
            raise ValueError("a scene needs an 'image', 'video', 'lipsync' or 'animate' stage")
        if len(motion) > 1:
            raise ValueError(f"a scene has one of 'video', 'lipsync', 'animate', not {' and '.join(motion)} "
                             "(split it in several scenes)")
        if self.animate is not None and self.animate.character is None and self.image is None:
            raise ValueError("animate has no character: add an 'image' stage or set animate.character")
        if self.video is not None and self.video.image is None and self.image is None and not self.video.keyframes:
            raise ValueError("video has no start image: add an 'image' stage or set video.image")
        if self.lipsync is not None and self.lipsync.avatar is None and self.image is None:
            raise ValueError("lipsync has no avatar: add an 'image' stage or set lipsync.avatar")
        if self.lipsync is not None and self.audio is not None:
            raise ValueError("a lipsync scene's audio is its speech: remove 'audio' "
                             "(lipsync.audio is laid under the clip)")
        return self


class Defaults(Strict):
    resolution: Resolution = Field("720x1280", description="WIDTHxHEIGHT")
    fps: Fps = Field(16)
    seed: SpecSeed = Field(-1, description="-1 draws a seed per stage at plan time")
    download_height: int = Field(1080, ge=144, le=4320,
                                 description="URL inputs: the tallest video format downloaded")


class Music(Strict):
    file: str
    gain_db: MusicGain = Field(-18.0)
    duck_under_speech: bool = Field(False, description="lower the music while scene audio plays")
    duck_db: DuckDb = Field(12.0, description="how far the music is lowered under speech")


class Assemble(Strict):
    name: str = Field("final", description="output file name without .mp4")
    scenes: list[str] | None = Field(None, description="scene order; default: all scenes as written")
    audio: bool = Field(True, description="mux each scene's audio")
    music: Music | None = None
    loudness: Loudness | None = Field(None, description="target integrated LUFS")
    crf: Crf = Field(18)
    fps: Fps | None = Field(None, description="the video's rate; default: the highest rate of its clips "
                                              "(defaults.fps unless a clip is interpolated)")
    transition: Transition = Field("cut", description="between scenes: cut or {crossfade: seconds}")
    subtitles: Literal["none", "srt", "burn"] = Field(
        "srt", description="from TTS text: srt writes <name>.srt beside the video, burn also draws them in")

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        v = v[:-4] if v.endswith(".mp4") else v
        if not ID_RE.match(v):
            raise ValueError(f"'{v}' is not a valid output name (letters, digits, '-', '_')")
        return v


class Spec(Strict):
    """A CineSynth project: scenes rendered through a DAG of stages into final videos."""

    version: Literal[1] = 1
    project: str
    output: str | None = Field(None, description="output folder; default outputs/<project>")
    profile: str = Field("tiny", description="'tiny', 'production' or a models file (.yaml)")
    defaults: Defaults = Field(default_factory=Defaults)
    vars: dict[str, Any] = Field(default_factory=dict, description="template variables")
    presets: dict[str, dict[str, Any]] = Field(default_factory=dict, description="inline presets")
    allow_paths: list[str] = Field(default_factory=list,
                                   description="folders outside the project that assets may come from")
    allow_hosts: list[str] = Field(default_factory=lambda: list(DEFAULT_ALLOW_HOSTS),
                                   description="hosts URL inputs may come from (subdomains included)")
    scenes: list[Scene] = Field(min_length=1)
    assemble: list[Assemble] = Field(default_factory=lambda: [Assemble()],
                                     description="one final video, or a list of them")

    @field_validator("assemble", mode="before")
    @classmethod
    def _one_or_many(cls, v: Any) -> Any:
        return [v] if isinstance(v, dict) else v

    @field_validator("project")
    @classmethod
    def _project(cls, v: str) -> str:
        if not ID_RE.match(v):
            fix = re.sub(r"[^A-Za-z0-9_-]+", "-", v).strip("-") or "project"
            raise ValueError(f"'{v}' is not a valid project name (try '{fix}')")
        return v

    def assemblies(self) -> list[Assemble]:
        return self.assemble
