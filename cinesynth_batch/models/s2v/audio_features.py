"""The Wan2.2-S2V audio path: speech file -> wav2vec2 hidden states -> per-video-frame features.

What the official S2V code does with the audio (and what these functions reproduce):

1. Decode the file to mono float at 16 kHz (channels averaged, then resampled).
2. Normalise it with the wav2vec2 feature extractor (zero mean, unit variance) and run
   ``wav2vec2-large-xlsr-53-english`` with ``output_hidden_states=True``; keep **all** hidden states,
   stacked: ``[L, T, D]`` with ``L = num_hidden_layers + 1`` (25 for the real model), ``D`` = 1024,
   ``T`` the number of 20 ms wav2vec2 frames (50 per second).
3. Resample the time axis linearly (``align_corners=True``) from 50 Hz to a fixed intermediate rate of
   **30 Hz** (the official ``video_rate``, whatever the output fps):
   ``A = int(T / 50 * 30)`` rows.
4. For video frame ``i`` at ``fps`` (16 for S2V), take row ``round(i * 30 / fps)`` of the 30 Hz
   features (numpy rounding, half to even; ``m`` > 0 also takes neighbours ``m`` strides away,
   clamped to the ends, concatenated along the feature axis). Frames whose row is ``>= A`` (past the
   end of the audio) get zeros.
5. The frames are bucketed into clips of ``infer_frames`` frames (80 by default):
   ``num_segments = int(A / (infer_frames * 30 / fps)) + 1`` clips, i.e. ``num_segments * infer_frames``
   frame rows; the last clip is padded with zero rows. Clip ``k`` gets frames
   ``[k * infer_frames, (k + 1) * infer_frames)``.
6. The transformer receives clip ``k`` as ``[1, L, D * (2m + 1), infer_frames]`` (m = 0 for S2V).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from ...errors import CinesynthError, ModelError

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = [
    "SAMPLE_RATE",
    "W2V_FRAME_RATE",
    "AUDIO_FEATURE_RATE",
    "MIN_SPEECH_SECONDS",
    "SILENCE_PEAK",
    "AudioInputError",
    "load_wav2vec2",
    "read_speech",
    "audio_hidden_states",
    "wav2vec2_num_frames",
    "to_feature_rate",
    "frame_indices",
    "per_frame_features",
    "num_segments_for_feature_rows",
    "num_segments",
    "count_segments",
    "speech_frames",
    "speech_segments",
    "audio_embed_bucket",
    "segment_features",
]

SAMPLE_RATE = 16000          # wav2vec2 input rate
W2V_FRAME_RATE = 50          # wav2vec2 output frames per second (320-sample hop)
AUDIO_FEATURE_RATE = 30      # the official intermediate feature rate (AudioEncoder.video_rate)
MIN_SPEECH_SECONDS = 0.05    # shorter audio gives fewer than one 30 Hz feature row
SILENCE_PEAK = 2.0 ** -16    # a peak below half a 16-bit step counts as silence
FIRST_SEGMENT_DROP = 3       # frames segment 1 drops after decoding (see pipeline.py)
_W2V_KERNELS = (10, 3, 3, 3, 3, 2, 2)
_W2V_STRIDES = (5, 2, 2, 2, 2, 2, 2)


class AudioInputError(CinesynthError, ValueError):
    """The speech file cannot drive S2V: unreadable, empty, too short or silent."""


# --------------------------------------------------------------------------------------------------
# Model and audio loading
# --------------------------------------------------------------------------------------------------

def load_wav2vec2(folder: str | Path, dtype=None, device=None):
    """Load the wav2vec2 folder (``wav2vec2-large-xlsr-53-english``): ``(model, feature_extractor)``.

    The model class follows ``config.json``'s ``architectures`` (``Wav2Vec2ForCTC`` for the official
    folder, else ``Wav2Vec2Model``); both give the same hidden states. ``dtype`` defaults to float32
    (the official code runs wav2vec2 in float32). The feature extractor is what the official
    ``Wav2Vec2Processor`` applies to audio (normalisation to zero mean / unit variance).
    """
    import torch
    from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2ForCTC, Wav2Vec2Model

    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise ModelError(f"wav2vec2 folder not found or incomplete: {folder}",
                         hint="expected a Hugging Face Wav2Vec2 folder with config.json")
    try:
        config = Wav2Vec2Config.from_pretrained(str(folder))
        cls = Wav2Vec2ForCTC if "Wav2Vec2ForCTC" in (config.architectures or []) else Wav2Vec2Model
        model = cls.from_pretrained(str(folder), dtype=dtype or torch.float32)
        extractor = Wav2Vec2FeatureExtractor.from_pretrained(str(folder))
    except Exception as exc:  # noqa: BLE001
        raise ModelError(f"cannot load wav2vec2 from {folder}: {type(exc).__name__}: {exc}") from exc
    if int(extractor.sampling_rate) != SAMPLE_RATE:
        raise ModelError(f"wav2vec2 feature extractor expects {extractor.sampling_rate} Hz, not {SAMPLE_RATE}")
    if device is not None:
        model = model.to(device)
    return model.eval().requires_grad_(False), extractor


def read_speech(path: str | Path) -> tuple[np.ndarray, float]:
    """Decode any audio file PyAV reads to ``(wave, seconds)``: float32 mono at 16 kHz.

    Channels are averaged at the file's rate, then soxr resamples to 16 kHz at high quality, as
    ``librosa.load(path, sr=16000)`` does in the official code. ``seconds = len(wave) / 16000``.
    Raises :class:`AudioInputError` when the file cannot be read, has no audio stream or no samples,
    is shorter than ``MIN_SPEECH_SECONDS``, or is silent (peak below ``SILENCE_PEAK``).
    """
    from ...media.audio import probe_audio, read_audio, resample_hq

    path = Path(path)
    if not path.is_file():
        raise AudioInputError(f"audio file not found: {path}")
    if path.stat().st_size == 0:
        raise AudioInputError(f"{path}: the audio file is empty (0 bytes)")
    try:
        data = resample_hq(read_audio(path, channels=1), probe_audio(path).rate, SAMPLE_RATE)
    except Exception as exc:  # noqa: BLE001 - PyAV raises many error types for bad files
        raise AudioInputError(f"{path}: cannot read audio ({type(exc).__name__}: {exc})",
                              hint="give a wav/mp3/flac/m4a... file with an audio stream") from exc
    wave = np.ascontiguousarray(data[0] if data.ndim == 2 else data, dtype=np.float32)
    if wave.size == 0:
        raise AudioInputError(f"{path}: the audio has no samples")
    if not np.all(np.isfinite(wave)):
        raise AudioInputError(f"{path}: the audio holds non-finite samples")
    seconds = wave.size / SAMPLE_RATE
    if seconds < MIN_SPEECH_SECONDS:
        raise AudioInputError(f"{path}: the audio is too short ({seconds * 1000:.1f} ms)",
                              hint=f"speech audio needs at least {MIN_SPEECH_SECONDS * 1000:.0f} ms")
    if float(np.max(np.abs(wave))) < SILENCE_PEAK:
        raise AudioInputError(f"{path}: the audio is silent", hint="S2V needs speech to drive the motion")
    return wave, seconds


def audio_hidden_states(model, processor, wave: np.ndarray) -> "torch.Tensor":
    """All wav2vec2 hidden states of a 16 kHz mono wave, stacked: float32 ``[L, T, D]``.

    ``L = num_hidden_layers + 1`` (25 for the real model: the encoder input plus every layer, the
    last one after the final layer norm), ``D = hidden_size`` (1024), ``T`` = 50 frames per second
    (:func:`wav2vec2_num_frames`). On the model's device.
    """
    import torch

    wave = np.asarray(wave, dtype=np.float32)
    if wave.ndim != 1:
        raise ValueError(f"wave must be 1-D mono samples, got shape {wave.shape}")
    inputs = processor(wave, sampling_rate=SAMPLE_RATE, return_tensors="pt").input_values
    param = next(model.parameters())
    with torch.inference_mode():
        out = model(inputs.to(device=param.device, dtype=param.dtype), output_hidden_states=True)
    return torch.cat(out.hidden_states, dim=0).float()


# --------------------------------------------------------------------------------------------------
# Time bases
# --------------------------------------------------------------------------------------------------

def wav2vec2_num_frames(num_samples: int, conv_kernel: Sequence[int] = _W2V_KERNELS,
                        conv_stride: Sequence[int] = _W2V_STRIDES) -> int:
    """Number of wav2vec2 output frames for ``num_samples`` input samples (0 if too short)."""
    n = int(num_samples)
    for k, s in zip(conv_kernel, conv_stride):
        if n < k:
            return 0
        n = (n - k) // s + 1
    return n


def to_feature_rate(hidden: "torch.Tensor", input_rate: float = W2V_FRAME_RATE,
                    output_rate: float = AUDIO_FEATURE_RATE) -> "torch.Tensor":
    """``[L, T, D]`` at ``input_rate`` -> ``[L, int(T / input_rate * output_rate), D]``, linear with
    ``align_corners=True`` (the official ``linear_interpolation``)."""
    import torch.nn.functional as F

    if hidden.ndim != 3:
        raise ValueError(f"hidden states must be [layers, time, dim], got {tuple(hidden.shape)}")
    seq_seconds = hidden.shape[1] / float(input_rate)
    out_len = int(seq_seconds * output_rate)
    if out_len < 1:
        raise AudioInputError(f"audio too short: {hidden.shape[1]} wav2vec2 frames give no feature row")
    x = F.interpolate(hidden.float().transpose(1, 2), size=out_len, mode="linear", align_corners=True)
    return x.transpose(1, 2)


def frame_indices(num_frames: int, fps: float, feature_rate: float = AUDIO_FEATURE_RATE) -> np.ndarray:
    """Row of the ``feature_rate`` features used by each of ``num_frames`` video frames at ``fps``.

    ``round(i / fps * feature_rate)`` (numpy rounding: half to even, so at 16 fps frame 4 -> row 8 and
    frame 12 -> row 22), computed with the same floating-point steps as the official sampler and
    clipped to ``ceil(num_frames / fps * feature_rate) - 1``.
    """
    duration = num_frames / fps
    times = np.linspace(0.0, duration, num_frames, endpoint=False)
    idx = np.round(times * feature_rate).astype(np.int64)
    total = math.ceil(num_frames / fps * feature_rate)
    return np.clip(idx, 0, max(total - 1, 0))


def _gather(feats: "torch.Tensor", idx: np.ndarray, fps: float, m: int) -> "torch.Tensor":
    """Rows ``idx`` of ``[L, A, D]`` with ``m`` neighbours each side -> ``[N, L, D * (2m + 1)]``;
    zero rows where ``idx >= A``."""
    import torch

    layers, rows, dim = feats.shape
    stride = int(AUDIO_FEATURE_RATE / fps)
    offsets = np.arange(-m, m + 1, dtype=np.int64) * stride
    win = np.clip(idx[:, None] + offsets[None, :], 0, rows - 1)                # [N, 2m+1]
    win_t = torch.from_numpy(win).to(feats.device)
    out = feats[:, win_t]                                                       # [L, N, 2m+1, D]
    out = out.permute(1, 0, 2, 3).reshape(len(idx), layers, (2 * m + 1) * dim)
    valid = torch.from_numpy(idx < rows).to(feats.device)
    return out * valid[:, None, None].to(out.dtype)


def per_frame_features(hidden: "torch.Tensor", audio_seconds: float | None = None, fps: float = 16,
                       *, m: int = 0, infer_frames: int = 80) -> "torch.Tensor":
    """wav2vec2 hidden states ``[L, T, D]`` (50 Hz) -> one row per video frame: ``[F, L, D * (2m + 1)]``.

    The official resampling: linear 50 Hz -> 30 Hz (``A = int(T / 50 * 30)`` rows), then frame ``i``
    takes row ``round(i * 30 / fps)``. ``F`` counts the frames whose row lies inside the audio
    (``row < A``): the frames the audio covers (12 s at 16 fps -> 192). These are exactly the
    first ``F`` rows of :func:`audio_embed_bucket`, without its zero padding.

    The official code measures time from ``T`` (not from the file's length); ``audio_seconds``, when
    given, is only checked against ``T / 50`` to catch hidden states of another clip.
    ``infer_frames`` only picks the sampling grid the official code would use (it spans whole clips);
    it changes nothing at 16 fps and matters only at rates where ``i * 30 / fps`` lands on exact
    halves (e.g. 24 fps), where the official rounding depends on the grid's floating-point step.
    """
    if hidden.ndim != 3:
        raise ValueError(f"hidden states must be [layers, time, dim], got {tuple(hidden.shape)}")
    if audio_seconds is not None:
        t_seconds = hidden.shape[1] / W2V_FRAME_RATE
        if abs(t_seconds - float(audio_seconds)) > 0.1:
            raise ValueError(f"hidden states span {t_seconds:.2f} s of audio, not {audio_seconds:.2f} s")
    feats = to_feature_rate(hidden)
    rows = feats.shape[1]
    grid = frame_indices(num_segments_for_feature_rows(rows, fps, infer_frames) * infer_frames, fps)
    count = int(np.count_nonzero(grid < rows))
    return _gather(feats, grid[:count], fps, m)


# --------------------------------------------------------------------------------------------------
# Segments (clips of infer_frames frames)
# --------------------------------------------------------------------------------------------------

def num_segments_for_feature_rows(feature_rows: int, fps: float = 16, infer_frames: int = 80) -> int:
    """``int(A / (infer_frames * (30 / fps))) + 1`` for ``A`` rows of 30 Hz features (the official
    ``min_batch_num``)."""
    scale = AUDIO_FEATURE_RATE / fps
    return int(feature_rows / (infer_frames * scale)) + 1


def num_segments(audio_seconds: float, fps: float = 16, infer_frames: int = 80) -> int:
    """How many clips of ``infer_frames`` frames the official S2V code makes for ``audio_seconds``.

    ``num_segments = int(A / (infer_frames * 30 / fps)) + 1`` where ``A = int(T / 50 * 30)`` is the
    number of 30 Hz feature rows and ``T`` the number of wav2vec2 frames for
    ``round(audio_seconds * 16000)`` samples (conv front end: kernels 10,3,3,3,3,2,2, strides
    5,2,2,2,2,2,2, so ``T = floor((n - 400) / 320) + 1``). Roughly ``floor(seconds * fps /
    infer_frames) + 1``: always one more than the number of full clips, so audio that fills
    exactly ``k`` clips yields ``k + 1`` (the last all padding). Example: 12 s, 16 fps, 80 frames ->
    T = 599, A = 359, 359 / 150 -> 2, so 3 clips. ``generate(num_repeat=...)`` caps the clip count at
    this value.
    """
    samples = int(round(float(audio_seconds) * SAMPLE_RATE))
    t = wav2vec2_num_frames(samples)
    rows = int(t / float(W2V_FRAME_RATE) * AUDIO_FEATURE_RATE)
    return num_segments_for_feature_rows(rows, fps, infer_frames)


def speech_frames(seconds: float, fps: float) -> int:
    """Frames of a lip-sync clip of ``seconds`` of speech: cut to the speech, within half a frame."""
    return max(1, round(seconds * fps))


def count_segments(reference: int, seconds: float, fps: int, infer_frames: int) -> int:
    """Segments the pipeline makes: the reference count, or more if its frames (less the
    first segment's dropped ones) would not cover :func:`speech_frames`."""
    wanted = speech_frames(seconds, fps)
    return max(reference, math.ceil((wanted + FIRST_SEGMENT_DROP) / infer_frames))


def speech_segments(seconds: float, fps: int, infer_frames: int) -> int:
    """Segments a lip-sync of ``seconds`` of speech will have, known without the model (what
    ``plan`` shows): the reference count of :func:`num_segments`, made to cover the speech."""
    return count_segments(num_segments(seconds, fps, infer_frames), seconds, fps, infer_frames)


def audio_embed_bucket(hidden: "torch.Tensor", fps: float = 16, infer_frames: int = 80,
                       *, m: int = 0) -> tuple["torch.Tensor", int]:
    """The official ``encode_audio``: all clips' audio input at once, zero-padded to whole clips.

    ``hidden``: wav2vec2 states ``[L, T, D]`` (50 Hz). Returns ``(bucket, num_segments)``; ``bucket``
    is float32 ``[1, L, D * (2m + 1), num_segments * infer_frames]`` (``[1, D * (2m + 1), N]`` when
    ``L == 1``, as in the official code). Frames past the audio are zeros; the last clip carries the
    padding. Cast to the transformer's dtype/device yourself.
    """
    feats = to_feature_rate(hidden)
    layers, rows, _ = feats.shape
    n_seg = num_segments_for_feature_rows(rows, fps, infer_frames)
    idx = frame_indices(n_seg * infer_frames, fps)
    bucket = _gather(feats, idx, fps, m)                                     # [N, L, D']
    if layers == 1:
        return bucket[:, 0].unsqueeze(0).permute(0, 2, 1).contiguous(), n_seg
    return bucket.unsqueeze(0).permute(0, 2, 3, 1).contiguous(), n_seg


def segment_features(bucket: "torch.Tensor", segment: int, infer_frames: int = 80) -> "torch.Tensor":
    """Clip ``segment``'s audio input: ``bucket[..., k * infer_frames:(k + 1) * infer_frames]``,
    i.e. ``[1, L, D * (2m + 1), infer_frames]``."""
    total = bucket.shape[-1]
    if total % infer_frames:
        raise ValueError(f"bucket length {total} is not a multiple of infer_frames {infer_frames}")
    count = total // infer_frames
    if not 0 <= segment < count:
        raise IndexError(f"segment {segment} out of range: the audio has {count} segment(s)")
    return bucket[..., segment * infer_frames:(segment + 1) * infer_frames]
