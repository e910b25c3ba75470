"""Wan2.2-S2V non-transformer components: Wan2.1 VAE, UMT5 encoder, tokenizer and the audio path."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from cinesynth_batch.errors import ModelError  # noqa: E402
from cinesynth_batch.media.audio import read_audio, write_tone  # noqa: E402
from cinesynth_batch.models.s2v import audio_features as af  # noqa: E402
from cinesynth_batch.models.s2v import components as comp  # noqa: E402
from cinesynth_batch.catalog.tiny.s2v import (  # noqa: E402
    TINY_T5_DIM,
    TINY_W2V_DIM,
    TINY_W2V_LAYERS,
    build_tiny_s2v_components,
)

torch.set_flush_denormal(True)
torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))

DATA = Path(__file__).resolve().parents[1] / "data"


def _key_file(name: str) -> dict[str, tuple[int, ...]]:
    out = {}
    for line in (DATA / name).read_text().splitlines():
        key, shape = line.split("\t")
        out[key] = tuple(int(s) for s in shape.split(",") if s)
    return out


def _shapes(sd) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in sd.items()}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return build_tiny_s2v_components(tmp_path_factory.mktemp("s2v") / "Wan2.2-S2V-14B")


@pytest.fixture(scope="module")
def w2v(tiny):
    return af.load_wav2vec2(tiny / comp.WAV2VEC2_DIR)


# ------------------------------------------------------------------ full-size key lists (meta device)

def test_full_size_vae_keys_match_official_definition():
    from diffusers import AutoencoderKLWan

    with torch.device("meta"):
        model = AutoencoderKLWan()
    official = comp.wan21_vae_state_dict_to_official(model.state_dict())
    assert _shapes(official) == _key_file("wan21_vae_keys.txt")
    assert comp.infer_wan21_vae_arch(official) == comp.Wan21VAEArch()
    # and back: the official names map onto exactly the model's names
    assert _shapes(comp.wan21_vae_state_dict_to_diffusers(official)) == _shapes(model.state_dict())


def test_full_size_umt5_xxl_keys_match_official_definition():
    from transformers import UMT5EncoderModel

    ref = _key_file("umt5_xxl_enc_keys.txt")
    meta_official = {k: torch.empty(s, device="meta") for k, s in ref.items()}
    arch = comp.infer_umt5_arch(meta_official)
    assert arch == comp.UMT5Arch(vocab_size=256384, d_model=4096, d_kv=64, d_ff=10240, num_heads=64,
                                 num_layers=24, num_buckets=32)
    with torch.device("meta"):
        model = UMT5EncoderModel(comp.umt5_config(arch))
    cfg = model.config
    assert (cfg.d_model, cfg.d_ff, cfg.num_heads, cfg.num_layers, cfg.vocab_size) == (4096, 10240, 64, 24, 256384)
    assert cfg.is_gated_act and cfg.dense_act_fn == "gelu_new"
    assert _shapes(comp.umt5_state_dict_to_official(model.state_dict())) == ref
    assert _shapes(comp.umt5_state_dict_to_hf(meta_official)) == _shapes(model.state_dict())


# ------------------------------------------------------------------ tiny VAE

def test_tiny_vae_loads_and_encodes_decodes(tiny):
    raw = torch.load(tiny / comp.VAE_FILE, map_location="cpu", weights_only=True)
    assert "encoder.conv1.weight" in raw and "decoder.upsamples.0.residual.0.gamma" in raw
    assert all(v.dtype == torch.float32 for v in raw.values())

    vae = comp.load_wan21_vae(tiny / comp.VAE_FILE, torch.float32)
    assert vae.config.z_dim == 16 and list(vae.config.dim_mult) == [1, 2, 4, 4]
    assert list(vae.config.temperal_downsample) == [False, True, True]
    clip = torch.rand(1, 3, 5, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        latents = vae.encode(clip).latent_dist.mode()
        video = vae.decode(latents).sample
    assert latents.shape == (1, 16, 2, 4, 4)
    assert video.shape == (1, 3, 5, 32, 32)
    assert torch.isfinite(latents).all() and torch.isfinite(video).all()


def test_vae_mapping_round_trips_exactly(tiny):
    official = comp.read_state_dict(tiny / comp.VAE_FILE)
    diff = comp.wan21_vae_state_dict_to_diffusers(official)
    back = comp.wan21_vae_state_dict_to_official(diff)
    assert set(back) == set(official)
    assert all(torch.equal(back[k], official[k]) for k in official)

    vae = comp.load_wan21_vae(tiny / comp.VAE_FILE)
    again = comp.wan21_vae_state_dict_to_official(vae.state_dict())
    assert set(again) == set(official)
    assert all(torch.equal(again[k], official[k]) for k in official)
    # bf16 load casts every tensor
    assert all(p.dtype == torch.bfloat16 for p in comp.load_wan21_vae(tiny / comp.VAE_FILE, torch.bfloat16).parameters())


def test_vae_strict_load_rejects_missing_and_extra_keys(tiny, tmp_path):
    official = comp.read_state_dict(tiny / comp.VAE_FILE)
    missing = dict(official)
    missing.pop("decoder.head.2.bias")
    torch.save(missing, tmp_path / "missing.pth")
    with pytest.raises(ModelError, match="missing"):
        comp.load_wan21_vae(tmp_path / "missing.pth")
    extra = dict(official, **{"encoder.bogus.weight": torch.zeros(1)})
    torch.save(extra, tmp_path / "extra.pth")
    with pytest.raises(ModelError, match="no mapping"):
        comp.load_wan21_vae(tmp_path / "extra.pth")


# ------------------------------------------------------------------ tiny UMT5 + tokenizer

def test_tiny_t5_encodes_a_prompt(tiny):
    raw = torch.load(tiny / comp.T5_FILE, map_location="cpu", weights_only=True)
    assert "blocks.0.pos_embedding.embedding.weight" in raw and "token_embedding.weight" in raw
    assert all(v.dtype == torch.bfloat16 for v in raw.values())

    model, tok = comp.load_umt5_encoder(tiny / comp.T5_FILE, tiny / comp.T5_TOKENIZER_DIR, torch.bfloat16)
    assert (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2)
    assert model.shared.weight is model.encoder.embed_tokens.weight
    ids = tok("a woman talks to the camera").input_ids
    assert ids[-1] == 1 and 2 not in ids
    assert tok.decode(ids, skip_special_tokens=True) == "a woman talks to the camera"

    states = comp.encode_prompts(model, tok, ["a  woman talks to the camera", "hi &amp; bye"])
    assert [s.shape for s in states] == [(len(ids), TINY_T5_DIM), (states[1].shape[0], TINY_T5_DIM)]
    assert states[0].dtype == torch.bfloat16 and all(torch.isfinite(s.float()).all() for s in states)

    back = comp.umt5_state_dict_to_official(model.state_dict())
    assert set(back) == set(raw) and all(torch.equal(back[k], raw[k]) for k in raw)


# ------------------------------------------------------------------ audio

def test_audio_path_on_a_stereo_44k_tone(tiny, w2v, tmp_path):
    model, extractor = w2v
    path = write_tone(tmp_path / "tone.wav", seconds=12.0, freq=220.0, rate=44100, channels=2)
    wave, seconds = af.read_speech(path)
    assert wave.dtype == np.float32 and wave.ndim == 1
    assert wave.size == 12 * 16000 and seconds == 12.0

    hidden = af.audio_hidden_states(model, extractor, wave)
    assert af.wav2vec2_num_frames(wave.size) == 599                          # (192000 - 400) // 320 + 1
    assert hidden.shape == (TINY_W2V_LAYERS + 1, 599, TINY_W2V_DIM) and hidden.dtype == torch.float32

    frames = af.per_frame_features(hidden, seconds, fps=16)
    assert frames.shape == (192, TINY_W2V_LAYERS + 1, TINY_W2V_DIM)          # one row per video frame
    feats30 = af.to_feature_rate(hidden)
    assert torch.equal(frames[5], feats30[:, round(5 * 30 / 16)])             # frame 5 -> 30 Hz row 9

    bucket, count = af.audio_embed_bucket(hidden, fps=16, infer_frames=80)
    assert count == af.num_segments(seconds, fps=16, infer_frames=80) == 3
    assert bucket.shape == (1, TINY_W2V_LAYERS + 1, TINY_W2V_DIM, 3 * 80)
    assert torch.equal(bucket[0].permute(2, 0, 1)[:192], frames)
    last = af.segment_features(bucket, 2, 80)
    assert last.shape == (1, TINY_W2V_LAYERS + 1, TINY_W2V_DIM, 80)
    assert last[..., :32].abs().sum() > 0 and not last[..., 32:].any()      # 192 - 160 real frames, then padding
    with pytest.raises(IndexError):
        af.segment_features(bucket, 3, 80)


@pytest.mark.parametrize("rate", [16000, 22050, 24000, 44100, 48000])
def test_speech_reaches_16k_through_soxr_hq_after_the_channel_mean(tmp_path, rate):
    """The official S2V code reads speech with ``librosa.load(sr=16000)``: channels averaged at
    the file's rate, then soxr at high quality. PyAV's own resampler is measurably different on
    broadband sound, so the path taken is visible in the samples."""
    import wave as wav
    import soxr

    rng = np.random.default_rng(rate)
    stereo = np.clip(rng.normal(0, 0.2, (rate * 2, 2)), -1, 1)
    stereo[:, 1] *= 0.5                                           # channels differ
    pcm = np.round(stereo * 32767).astype("<i2")
    path = tmp_path / f"noise{rate}.wav"
    with wav.open(str(path), "wb") as w:
        w.setnchannels(2), w.setsampwidth(2), w.setframerate(rate), w.writeframes(pcm.tobytes())

    wave, seconds = af.read_speech(path)
    mono = (pcm.astype(np.float32) / 32768.0).mean(axis=1)
    expected = mono if rate == 16000 else soxr.resample(mono, rate, 16000, quality="HQ")
    assert wave.shape == expected.shape and seconds == wave.size / 16000 == 2.0
    # librosa fixes the length to ceil(n * 16000 / rate), padding soxr's output with zeros
    odd, _ = af.read_speech(write_tone(tmp_path / "odd.wav", seconds=1.0001, rate=rate, channels=2))
    assert odd.size == -(-round(1.0001 * rate) * 16000 // rate)
    np.testing.assert_allclose(wave, expected, rtol=0, atol=2e-6)
    if rate != 16000:
        swr = read_audio(path, rate=16000, channels=1)[0][:wave.size]
        assert np.linalg.norm(swr - wave) / np.linalg.norm(wave) > 1e-3


def _official_count(seconds: float, fps: float, infer_frames: int) -> int:
    n = round(seconds * 16000)
    t = (n - 400) // 320 + 1                      # wav2vec2 frames (50 Hz)
    rows = int(t / 50 * 30)                       # 30 Hz rows
    return int(rows / (infer_frames * (30 / fps))) + 1


@pytest.mark.parametrize("seconds,frames,expected", [
    (12.0, 80, 3), (10.0, 80, 2), (5.0, 80, 1), (5.005, 80, 2), (0.5, 80, 1), (12.0, 48, 4), (12.1, 48, 5), (30.0, 80, 6),
])
def test_num_segments_follows_the_official_rule(seconds, frames, expected):
    assert af.num_segments(seconds, fps=16, infer_frames=frames) == _official_count(seconds, 16, frames) == expected


def test_read_speech_errors(tmp_path):
    bad = tmp_path / "noise.wav"
    bad.write_bytes(b"this is not an audio file at all" * 8)
    with pytest.raises(af.AudioInputError, match="cannot read audio"):
        af.read_speech(bad)
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    with pytest.raises(af.AudioInputError, match="empty"):
        af.read_speech(empty)
    no_samples = write_tone(tmp_path / "nosamples.wav", seconds=0.0)
    with pytest.raises(af.AudioInputError, match="no samples|cannot read"):
        af.read_speech(no_samples)
    silent = write_tone(tmp_path / "silent.wav", seconds=1.0, amplitude=0.0, rate=22050, channels=2)
    with pytest.raises(af.AudioInputError, match="silent"):
        af.read_speech(silent)
    with pytest.raises(af.AudioInputError, match="not found"):
        af.read_speech(tmp_path / "missing.wav")


# ------------------------------------------------------------------ tiny build

def test_tiny_build_is_deterministic_small_and_fast(tiny, tmp_path):
    start = time.perf_counter()
    other = build_tiny_s2v_components(tmp_path / "again")
    elapsed = time.perf_counter() - start

    def digests(root: Path) -> dict[str, str]:
        return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(root.rglob("*")) if p.is_file()}

    first, second = digests(tiny), digests(other)
    assert first == second
    for name in (comp.VAE_FILE, comp.T5_FILE, f"{comp.T5_TOKENIZER_DIR}/tokenizer.json",
                 f"{comp.WAV2VEC2_DIR}/config.json", f"{comp.WAV2VEC2_DIR}/preprocessor_config.json"):
        assert name in first
    assert sum(p.stat().st_size for p in tiny.rglob("*") if p.is_file()) < 3 * 1024 * 1024
    assert elapsed < 5.0
