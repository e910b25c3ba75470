"""The parameters of each stage kind, one model per kind.

``plan/expand.py`` builds a stage's params from the spec; the stage validates them with its
kind's model (``check``) before it runs. The fields are built from ``spec/rules.py`` and the
spec's own parts (LoRAs, step cache), so the rule a spec breaks at ``file:line:col`` is the rule
a stage names when it is given the same value: ``video: frames: 6 is not 4k+1 (try 5)``.

Stage params are plain JSON values, so they are validated strictly (``True`` is not a number,
``"4"`` is not an integer). Keys a model does not name (runtime values such as ``segment``) are
left to the stage.
"""

from __future__ import annotations

from typing import Annotated, Any, Mapping, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ..errors import StageError
from .errortext import describe
from .model import AnimateLora, ImageLora, ImageModel, Inpaint, StepCache, VideoLora
from .rules import (
    AnimateAttention, AnimateMode, AnimateRunQuantize, BlockSwap, Boundary, Compile, Crf, DetectThreshold, DuckDb, End,
    EvenSide, FlowScale, Fraction, FramePosition, Frames, Fps, Guidance, InterpolateBackend, Loudness, MusicGain,
    Overlap, Precision, PreprocessBackend, PrepOutput, PrevFrames, RmsNorm, Scheduler, Seed, SegmentFrames, Shift,
    Size, SpeechResampler, Start, Steps, Stem, TtsBackend,
    WanAttention, WanQuantize, end_after_start, prev_below_window, scale_fits_backend,
)
from .yamlpos import format_path

SEPARATE_OVERLAP = 0.25

M = TypeVar("M", bound=BaseModel)


class StageParams(BaseModel):
    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)


class ImageLoraParams(ImageLora):
    """A LoRA of the spec, with the identity of its file the planner keys it by."""

    file: Any = None


class VideoLoraParams(VideoLora):
    file: Any = None


class AnimateLoraParams(AnimateLora):
    file: Any = None


def check(model: type[M], params: Mapping[str, Any], label: str, sep: str = ": ") -> M:
    """``params`` validated by ``model``; a ``StageError`` naming ``label``, the field, the value
    and the rule otherwise (``sep`` joins the label and the field)."""
    try:
        return model.model_validate(dict(params), strict=True)
    except ValidationError as exc:
        said = describe(exc.errors(include_url=False)[0])
        at = format_path(said.at)
        head = f"{label}{sep}{at}" if at else label
        raise StageError(f"{head}: {said.message}", hint=said.hint) from None


# --- generation ---------------------------------------------------------------------------------

#: The profile role of each FLUX.2-klein model an image stage may ask for (``image.model``).
IMAGE_ROLES = {"distilled": "image", "base": "image_base"}


class ImageParams(StageParams):
    """FLUX.2-klein text to image, or an edit of its ``references`` input (``stages/image.py``).
    ``width``/``height`` may be left out (None) only for an edit: the first reference sets them. With
    ``inpaint``, a masked edit of its ``source`` input at ``width`` x ``height`` (the crop's size),
    its one reference (if any) given as image 2."""

    prompt: str
    negative_prompt: str | None = None
    steps: Steps
    guidance: Guidance
    width: Size | None
    height: Size | None
    seed: Seed
    loras: list[ImageLoraParams] = Field(default_factory=list)
    model: ImageModel = "distilled"
    inpaint: Inpaint | None = None

    @model_validator(mode="after")
    def _both_sides(self) -> "ImageParams":
        if (self.width is None) != (self.height is None):
            raise ValueError("give both width and height, or neither (an edit takes the first reference's)")
        if self.inpaint is not None and self.width is None:
            raise ValueError("a masked edit runs at its crop's size: give width and height")
        return self


# --- text-prompted masks (``preprocess/segment.py``) --------------------------------------------

class DetectParams(StageParams):
    """Grounding DINO boxes for a phrase (``stages/detect.py``)."""

    text: str = Field(min_length=1)
    threshold: DetectThreshold


class SegmentParams(StageParams):
    """SAM's masks in a detector's boxes, united (``stages/segment.py``): no settings of its own."""


class WanSpeed(StageParams):
    """The speed options of a Wan stage (``runtime/accel.py``); unset ones run at ``auto``."""

    attention: WanAttention | None = None
    compile: Compile | None = None
    quantize: WanQuantize | None = None
    block_swap: BlockSwap = 0

    def speed(self) -> dict[str, Any]:
        return {"attention": self.attention or "auto", "compile": self.compile or "auto",
                "quantize": self.quantize, "block_swap": self.block_swap}


class TwoPassParams(StageParams):
    """The two-resolution hand-off of a Wan I2V clip: the high-noise expert's ``high_steps`` at
    ``base_width`` x ``base_height``, then the rest at the clip's size."""

    base_width: Size
    base_height: Size
    high_steps: Steps


class VideoParams(WanSpeed):
    """Wan2.2 I2V, one segment (``stages/video.py``)."""

    prompt: str
    negative_prompt: str | None = None
    frames: Frames
    steps: Steps
    guidance: Guidance
    guidance_2: Guidance | None = None
    shift: Shift
    boundary: Boundary
    scheduler: Scheduler = "unipc"
    cache: StepCache | None = None
    width: Size
    height: Size
    fps: Fps
    seed: Seed
    loras: list[VideoLoraParams] = Field(default_factory=list)
    lora_fuse: Compile | None = None
    two_pass: TwoPassParams | None = None

    @model_validator(mode="after")
    def _two_pass(self) -> "VideoParams":
        tp = self.two_pass
        if tp is None:
            return self
        if self.scheduler != "euler":
            raise ValueError("two_pass runs the flow-match Euler sampler: set scheduler: euler")
        if self.cache is not None and self.cache.kind != "none":
            raise ValueError("two_pass cannot take a step cache")
        if not 1 <= tp.high_steps < self.steps:
            raise ValueError(f"two_pass.high_steps {tp.high_steps} must leave the low-noise expert a step "
                             f"(steps is {self.steps})")
        if tp.base_width >= self.width or tp.base_height >= self.height:
            raise ValueError(f"two_pass base size {tp.base_width}x{tp.base_height} is not smaller than "
                             f"{self.width}x{self.height}")
        return self


class LipsyncParams(WanSpeed):
    """Wan2.2-S2V (``stages/lipsync.py``)."""

    prompt: str
    negative_prompt: str | None = None
    steps: Steps
    infer_frames: SegmentFrames
    guidance: Guidance
    shift: Shift
    boundary: Boundary
    scheduler: Scheduler = "unipc"
    width: Size
    height: Size
    fps: Fps
    seed: Seed
    loras: list[VideoLoraParams] = Field(default_factory=list)
    cache: StepCache | None = None
    resampler: SpeechResampler = "soxr_hq"


class AnimateRuntimeParams(StageParams):
    """How the Animate transformer runs (``runtime/animate.py``'s ``RuntimeSettings``)."""

    precision: Precision = "bf16"
    quantize: AnimateRunQuantize | None = None
    attention: AnimateAttention = "sdpa"
    rms_norm: RmsNorm = "pytorch"
    block_swap: BlockSwap = 0


class AnimateParams(AnimateRuntimeParams):
    """Wan2.2-Animate (``stages/animate.py``); unset values take these defaults."""

    mode: AnimateMode = "animate"
    prompt: str = ""
    negative_prompt: str | None = None
    width: Size
    height: Size
    fps: Fps = 16
    steps: Steps = 20
    guidance: Guidance = 1.0
    shift: Shift = 5.0
    scheduler: Scheduler = "unipc"
    seed: Seed
    frame_window: Frames = 77
    prev_frames: PrevFrames = 1
    loras: list[AnimateLoraParams] = Field(default_factory=list)
    lora_fuse: Compile | None = None
    cache: StepCache | None = None

    @model_validator(mode="after")
    def _prev_below_window(self) -> "AnimateParams":
        prev_below_window(self.prev_frames, self.frame_window)
        return self


class AnimatePrepParams(StageParams):
    """One conditioning video of Wan2.2-Animate from the reference (``stages/animate_prep.py``);
    unset values take these defaults."""

    output: PrepOutput
    fps: Fps = 16
    max_frames: Frames = 601
    width: EvenSide
    height: EvenSide
    backend: PreprocessBackend = "mediapipe"
    detector: str | None = None
    pose_model: str | None = None
    min_detected: Fraction = Field(0.5, description="the fraction of frames that must show a person")
    face_size: EvenSide = 512
    mask_dilate: int = Field(7, ge=1, description="square kernel side")
    mask_iterations: int = Field(3, ge=0)
    mask_grid: list[Annotated[int, Field(ge=1)]] = Field(
        default_factory=lambda: [1, 1], min_length=2, max_length=2, description="cells across and down")
    hands: bool = True
    mask_model: str = Field("pose", description="mediapipe: pose or selfie (the backend checks it)")


class MusicParams(StageParams):
    input: str = "music"
    gain_db: MusicGain | None = None
    duck_db: DuckDb | None = None


class AssembleParams(StageParams):
    """The final video (``stages/assemble.py``). Its ``fps`` may be any positive rate (the
    stage reads it as a fraction); its scenes are checked as the stage lays them out."""

    width: EvenSide
    height: EvenSide
    audio_rate: int = Field(48000, ge=1)
    crf: Crf = 18
    loudness: Loudness | None = None
    music: MusicParams | None = None


class UpscaleParams(StageParams):
    """Real-ESRGAN (``stages/upscale.py``): ``scale`` must be the model's; tiles bound memory."""

    scale: int = Field(2, ge=1)
    tile: int = Field(512, ge=0, description="input tile size, 0: the whole image")
    tile_pad: int = Field(10, ge=0, description="context pixels around each tile")


class InterpolateParams(StageParams):
    """Frame interpolation of a clip (``stages/interpolate.py``): ``fps`` is the new rate (the
    clip's own is read from it); ``scale`` is used by ``rife`` and ``amt`` only."""

    fps: Fps
    backend: InterpolateBackend = "minterpolate"
    scale: FlowScale = 1.0
    crf: Crf = 12

    @model_validator(mode="after")
    def _scale(self) -> "InterpolateParams":
        scale_fits_backend(self.backend, self.scale)
        return self


class ShadowParams(StageParams):
    """A floor shadow under the person of a clip (``stages/shadow.py``, ``preprocess/shadow.py``)."""

    opacity: float = Field(0.45, gt=0.0, le=1.0)
    crf: Crf = 12


class FaceCropParams(StageParams):
    """The seed's ``crop_face_head`` (``stages/face_crop.py``, ``preprocess/face_crop.py``): every
    value is the seed's; ``detector`` names the face detector (its model file's identity)."""

    detector: str
    confidence: Fraction = 0.4
    max_face_area: Fraction = 0.15
    padding: float = Field(2.5, gt=0.0, le=20.0)
    above: float = Field(1.0, ge=0.0, le=10.0)
    below: float = Field(1.5, ge=0.0, le=10.0)


class FitParams(StageParams):
    """A still cropped to an aspect and resized (``stages/fit.py``): the seed's avatar rule."""

    width: int = Field(ge=1, le=8192)
    height: int = Field(ge=1, le=8192)
    tolerance: float = Field(0.02, ge=0.0, le=1.0, description="aspect difference left uncropped")


# --- sources ------------------------------------------------------------------------------------

class ExtractAudioParams(StageParams):
    """The sound of a file, optionally a time range of it (``stages/extract_audio.py``)."""

    start: Start = 0.0
    end: End | None = None

    @model_validator(mode="after")
    def _range(self) -> "ExtractAudioParams":
        end_after_start(self.start, self.end)
        return self


class ExtractFrameParams(StageParams):
    """One frame of a video (``stages/extract_frame.py``)."""

    at: FramePosition = "first"


class SeparateParams(StageParams):
    """A stem of a song (``stages/separate.py``)."""

    stem: Stem
    overlap: Overlap = SEPARATE_OVERLAP


class TtsParams(StageParams):
    """Speech from text (``stages/tts.py``); the text itself is checked by the stage (an empty
    line is a spec the stage refuses, not one the spec refuses)."""

    text: str
    language: str
    backend: TtsBackend
    voice: str | None = None
    instruct: str | None = None
    seed: Seed | None = None


class SubtitleLine(StageParams):
    scene: str
    audio: str
    text: str


class SubtitlesParams(StageParams):
    """Cues from the TTS text of an assembly (``stages/subtitles.py``)."""

    fps: Fps = 16
    lines: list[SubtitleLine] = Field(default_factory=list)
