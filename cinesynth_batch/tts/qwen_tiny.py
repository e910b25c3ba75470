"""A tiny random Qwen3-TTS CustomVoice model in the ``Qwen/Qwen3-TTS-12Hz-*`` folder layout.

Runs in the tts worker environment (it needs ``qwen_tts`` and transformers 4.57.3), as
``python qwen_tiny.py DEST``; it imports nothing from this project. The folder holds what the
real one holds: ``config.json`` (``qwen3_tts``, ``tts_model_type: custom_voice``, the nine
CustomVoice speakers and ten languages), ``generation_config.json``, ``model.safetensors``, a
Qwen2 tokenizer (byte-level BPE over the 256-symbol alphabet plus the special tokens) and
``speech_tokenizer/`` (``qwen3_tts_tokenizer_12hz``: Mimi encoder + code-to-wave decoder,
``preprocessor_config.json``). Every weight is drawn from a fixed seed: two builds with the same
torch give the same bytes. The voice is noise.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

SPEAKERS = ["vivian", "serena", "uncle_fu", "dylan", "eric", "ryan", "aiden", "ono_anna", "sohee"]
DIALECTS = {"dylan": "beijing_dialect", "eric": "sichuan_dialect"}
LANGUAGES = ["chinese", "english", "japanese", "korean", "german", "french", "russian", "portuguese",
             "spanish", "italian", "beijing_dialect", "sichuan_dialect"]
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<tts_pad>", "<tts_text_bos>", "<tts_text_eod>"]
ROLE_WORDS = ["assistant", "user", "system", "\n"]
CODEBOOK = 2048
QUANTIZERS = 16
TALKER_VOCAB = 3072
SEED = 20260115


def _tokenizer(dst: Path) -> dict[str, int]:
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from transformers import Qwen2TokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL])
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in ROLE_WORDS])
    fast = Qwen2TokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                              unk_token=None, bos_token=None, errors="replace")
    fast.save_pretrained(str(dst))
    return {t: tok.token_to_id(t) for t in SPECIAL}


def _speech_tokenizer(dst: Path) -> None:
    import torch
    from qwen_tts.core import Qwen3TTSTokenizerV2Config, Qwen3TTSTokenizerV2Model

    config = Qwen3TTSTokenizerV2Config(
        encoder_config={"hidden_size": 16, "num_filters": 4, "num_residual_layers": 1,
                        "codebook_size": CODEBOOK, "codebook_dim": 16, "num_hidden_layers": 1,
                        "num_attention_heads": 2, "num_key_value_heads": 2, "head_dim": 8,
                        "intermediate_size": 32, "num_quantizers": QUANTIZERS, "num_semantic_quantizers": 1,
                        "sampling_rate": 24000, "frame_rate": 12.5, "upsampling_ratios": [8, 6, 5, 4],
                        "upsample_groups": 16},
        decoder_config={"codebook_size": CODEBOOK, "codebook_dim": 16, "hidden_size": 16, "latent_dim": 16,
                        "num_attention_heads": 2, "num_key_value_heads": 2, "head_dim": 8,
                        "intermediate_size": 32, "num_hidden_layers": 1, "num_quantizers": QUANTIZERS,
                        "upsample_rates": [8, 5, 4, 3], "upsampling_ratios": [2, 2], "decoder_dim": 32,
                        "sliding_window": 72},
        encoder_valid_num_quantizers=QUANTIZERS, input_sample_rate=24000, output_sample_rate=24000,
        decode_upsample_rate=1920, encode_downsample_rate=1920)
    config.architectures = ["Qwen3TTSTokenizerV2Model"]
    torch.manual_seed(SEED + 1)
    model = Qwen3TTSTokenizerV2Model(config).eval()
    # Trained codebooks hold the running sums of their clusters; fresh ones are zeros, which would
    # decode every code to silence. Random sums make the tiny voice audible noise.
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("_codebook.embedding_sum"):
                param.normal_(0.0, 1.0)
        # Random convolutions shrink the signal ~10^4 times: scale the last one so that the
        # noise peaks near half of full scale.
        codes = torch.randint(0, CODEBOOK, (1, QUANTIZERS, 12), generator=torch.Generator().manual_seed(SEED))
        peak = float(model.decoder(codes).abs().max())
        model.decoder.decoder[-1].conv.weight.mul_(0.5 / max(peak, 1e-12))
    model.save_pretrained(str(dst), safe_serialization=True)
    (dst / "preprocessor_config.json").write_text(json.dumps({
        "feature_extractor_type": "EncodecFeatureExtractor", "feature_size": 1, "padding_side": "right",
        "padding_value": 0.0, "return_attention_mask": True, "sampling_rate": 24000,
        "chunk_length_s": None, "overlap": None}, indent=2, sort_keys=True) + "\n")


def build(dst: Path) -> None:
    import torch
    from qwen_tts.core.models import Qwen3TTSConfig, Qwen3TTSForConditionalGeneration

    torch.use_deterministic_algorithms(True)
    dst.mkdir(parents=True, exist_ok=True)
    ids = _tokenizer(dst)
    specials = list(range(TALKER_VOCAB - 1024 + 100, TALKER_VOCAB))
    codec = {"codec_pad_id": specials[0], "codec_bos_id": specials[1], "codec_eos_token_id": specials[2],
             "codec_think_id": specials[3], "codec_nothink_id": specials[4],
             "codec_think_bos_id": specials[5], "codec_think_eos_id": specials[6]}
    languages = {name: specials[10 + i] for i, name in enumerate(LANGUAGES)}
    speakers = {name: specials[40 + i] for i, name in enumerate(SPEAKERS)}
    head = {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
            "num_key_value_heads": 1, "head_dim": 8, "max_position_embeddings": 4096,
            "rms_norm_eps": 1e-6, "rope_theta": 10000, "hidden_act": "silu"}
    config = Qwen3TTSConfig(
        talker_config={**head, "vocab_size": TALKER_VOCAB, "num_code_groups": QUANTIZERS,
                       "text_hidden_size": 16, "text_vocab_size": 512, "position_id_per_seconds": 13,
                       "rope_scaling": {"mrope_section": [2, 1, 1], "interleaved": True, "rope_type": "default"},
                       "code_predictor_config": {**head, "vocab_size": CODEBOOK, "num_code_groups": QUANTIZERS},
                       "spk_id": speakers, "spk_is_dialect": {s: DIALECTS.get(s, False) for s in SPEAKERS},
                       "codec_language_id": languages, **codec},
        tokenizer_type="qwen3_tts_tokenizer_12hz", tts_model_size="1b7", tts_model_type="custom_voice",
        im_start_token_id=ids["<|im_start|>"], im_end_token_id=ids["<|im_end|>"],
        tts_pad_token_id=ids["<tts_pad>"], tts_bos_token_id=ids["<tts_text_bos>"],
        tts_eos_token_id=ids["<tts_text_eod>"])
    config.architectures = ["Qwen3TTSForConditionalGeneration"]
    torch.manual_seed(SEED)
    model = Qwen3TTSForConditionalGeneration(config).eval()
    model.save_pretrained(str(dst), safe_serialization=True)
    # A CustomVoice model has no speaker encoder; its saved sub-config (with a model_type key
    # the config class does not accept) would not load back.
    saved = json.loads((dst / "config.json").read_text())
    saved.pop("speaker_encoder_config", None)
    (dst / "config.json").write_text(json.dumps(saved, indent=2, sort_keys=True) + "\n")
    (dst / "generation_config.json").write_text(json.dumps({
        "do_sample": True, "top_k": 50, "top_p": 1.0, "temperature": 0.9, "repetition_penalty": 1.05,
        "subtalker_dosample": True, "subtalker_top_k": 50, "subtalker_top_p": 1.0,
        "subtalker_temperature": 0.9, "max_new_tokens": 24}, indent=2, sort_keys=True) + "\n")
    _speech_tokenizer(dst / "speech_tokenizer")


if __name__ == "__main__":
    build(Path(sys.argv[1]))
