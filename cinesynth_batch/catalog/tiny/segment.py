"""Tiny random Grounding DINO and SAM folders, in the transformers layout of the real ones
(``IDEA-Research/grounding-dino-tiny``, ``facebook/sam-vit-huge``): config, safetensors weights and
the processor files, loaded through the same ``from_pretrained`` calls.

The detector's BERT tokenizer knows a few hundred word pieces (the seed's clothing phrase, letters
and their ``##`` continuations), so any phrase tokenizes. Its decoder's last norm is scaled down
so that the box scores spread over (0, 1) instead of sitting at 1: a threshold keeps some boxes and
drops others, as with the real model. The segmenter's weights are drawn wider than transformers'
initialisation (which makes every box give the same mask), so that its masks change with the boxes.
"""

from __future__ import annotations

import string
from pathlib import Path

from .parts import seeded

TINY_DINO = "grounding-dino"
TINY_SAM = "sam"
_SCORE_SPREAD = 0.2
_WORDS = ("clothing garment dress top bottom shirt skirt pants hair face person woman man outfit jacket "
          "shoes hat the a and of with in on").split()


def _bert_tokenizer(folder: Path):
    from transformers import BertTokenizerFast

    letters = string.ascii_lowercase + string.digits
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *string.punctuation, *_WORDS, *letters,
             *[f"##{c}" for c in letters]]
    file = folder / "vocab.txt"
    file.write_text("\n".join(dict.fromkeys(vocab)) + "\n", encoding="utf-8")
    tokenizer = BertTokenizerFast(vocab_file=str(file), do_lower_case=True, model_max_length=256)
    file.unlink()
    return tokenizer


def build_tiny_grounding_dino(dst: Path) -> None:
    import torch
    from transformers import BertConfig, GroundingDinoConfig, GroundingDinoForObjectDetection, GroundingDinoProcessor, SwinConfig
    from transformers.models.grounding_dino.image_processing_pil_grounding_dino import GroundingDinoImageProcessorPil

    dst = Path(dst)
    dst.mkdir(parents=True)
    tokenizer = _bert_tokenizer(dst)
    backbone = SwinConfig(image_size=128, patch_size=4, embed_dim=8, depths=[1, 1, 1, 1], num_heads=[1, 1, 1, 1],
                          window_size=4, out_features=["stage2", "stage3", "stage4"])
    text = BertConfig(vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=1, num_attention_heads=1,
                      intermediate_size=16, max_position_embeddings=256)
    config = GroundingDinoConfig(backbone_config=backbone, text_config=text, d_model=32, encoder_layers=1,
                                 decoder_layers=2, encoder_attention_heads=2, decoder_attention_heads=2,
                                 encoder_ffn_dim=16, decoder_ffn_dim=16, num_queries=16, encoder_n_points=1,
                                 decoder_n_points=1, max_text_len=256)
    with seeded(8101):
        model = GroundingDinoForObjectDetection(config).eval()
    with torch.no_grad():
        norm = model.model.decoder.layer_norm
        norm.weight.mul_(_SCORE_SPREAD)
        norm.bias.mul_(_SCORE_SPREAD)
    images = GroundingDinoImageProcessorPil(size={"shortest_edge": 128, "longest_edge": 192})
    model.save_pretrained(dst)
    GroundingDinoProcessor(image_processor=images, tokenizer=tokenizer).save_pretrained(dst)


def build_tiny_sam(dst: Path) -> None:
    import torch
    from transformers import (SamConfig, SamMaskDecoderConfig, SamModel, SamProcessor, SamPromptEncoderConfig,
                              SamVisionConfig)
    from transformers.models.sam.image_processing_pil_sam import SamImageProcessorPil

    side, patch = 64, 8
    vision = SamVisionConfig(hidden_size=16, output_channels=8, num_hidden_layers=2, num_attention_heads=2,
                             image_size=side, patch_size=patch, window_size=4, global_attn_indexes=[1],
                             num_pos_feats=4, mlp_dim=32)
    prompt = SamPromptEncoderConfig(hidden_size=8, image_size=side, patch_size=patch, mask_input_channels=4)
    decoder = SamMaskDecoderConfig(hidden_size=8, mlp_dim=16, num_hidden_layers=2, num_attention_heads=2,
                                   iou_head_hidden_dim=8)
    with seeded(8102):
        model = SamModel(SamConfig(vision_config=vision, prompt_encoder_config=prompt,
                                   mask_decoder_config=decoder)).eval()
    gen = torch.Generator().manual_seed(8103)
    with torch.no_grad():
        for _, param in sorted(model.named_parameters()):
            if param.dim() > 1:
                param.copy_(torch.randn(param.shape, generator=gen) * (2.0 / param[0].numel() ** 0.5))
            else:
                param.add_(torch.randn(param.shape, generator=gen) * 0.1)
    images = SamImageProcessorPil(size={"longest_edge": side}, pad_size={"height": side, "width": side})
    dst = Path(dst)
    model.save_pretrained(dst)
    SamProcessor(image_processor=images).save_pretrained(dst)
