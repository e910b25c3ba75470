"""The production models' architectures, as constructor arguments (no weights, no torch).

One place for each configuration: the ``shapes`` profile (``catalog/shapes/build.py``), its tests
and the GPU benchmarks (``bench/gpu/``) all read them from here. The S2V transformer's own
configuration stays beside its architecture (``models/s2v/transformer.py``: ``S2V_14B_CONFIG``).

Sources: the ``config.json`` / ``model_index.json`` files of the Hugging Face repositories named in
``profiles/production.yaml``, the official Wan2.2 configs (``wan/configs/``) and the released
checkpoints' tensor shapes (see docs/profiles.md for each role's parameter count).
"""

from __future__ import annotations

from fractions import Fraction
from typing import Any

# --------------------------------------------------------------------------- FLUX.2-klein-9B

#: diffusers ``Flux2Transformer2DModel`` arguments of FLUX.2-klein-9B.
FLUX2_KLEIN_9B: dict[str, Any] = dict(
    patch_size=1, in_channels=128, num_layers=8, num_single_layers=24, attention_head_dim=128,
    num_attention_heads=32, joint_attention_dim=12288, timestep_guidance_channels=256, mlp_ratio=3.0,
    axes_dims_rope=(32, 32, 32, 32), rope_theta=2000, guidance_embeds=False)

#: transformers ``Qwen3Config`` of its text encoder (Qwen3-8B; the pipeline stacks layers 9/18/27:
#: 3 x 4096 = the transformer's ``joint_attention_dim``).
QWEN3_8B: dict[str, Any] = dict(
    vocab_size=151936, hidden_size=4096, intermediate_size=12288, num_hidden_layers=36,
    num_attention_heads=32, num_key_value_heads=8, head_dim=128, max_position_embeddings=40960,
    rope_theta=1000000.0, rms_norm_eps=1e-6, tie_word_embeddings=False, hidden_act="silu",
    attention_bias=False, bos_token_id=151643, eos_token_id=151645)

#: diffusers ``AutoencoderKLFlux2`` arguments (the FLUX.2 VAE: 32 latent channels, 2x2 patches).
FLUX2_VAE: dict[str, Any] = dict(
    in_channels=3, out_channels=3, block_out_channels=(128, 256, 512, 512), layers_per_block=2,
    latent_channels=32, norm_num_groups=32, sample_size=1024, patch_size=(2, 2))

#: ``FlowMatchEulerDiscreteScheduler`` of the FLUX.2-klein pipelines.
FLUX2_SCHEDULER: dict[str, Any] = dict(
    num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
    base_image_seq_len=256, max_image_seq_len=4096, time_shift_type="exponential")

#: ``Flux2KleinPipeline(is_distilled=...)`` of FLUX.2-klein-9B (the step-distilled release).
FLUX2_KLEIN_9B_DISTILLED = True
#: ... of FLUX.2-klein-base-9B (the undistilled release of the same architecture: CFG, more steps).
FLUX2_KLEIN_BASE_9B_DISTILLED = False

# --------------------------------------------------------------------------- Wan2.2 (shared parts)

#: diffusers ``WanTransformer3DModel`` arguments of one Wan2.2-I2V-A14B expert
#: (``transformer`` and ``transformer_2`` have the same shape).
A14B_EXPERT: dict[str, Any] = dict(
    patch_size=(1, 2, 2), num_attention_heads=40, attention_head_dim=128, in_channels=36, out_channels=16,
    text_dim=4096, freq_dim=256, ffn_dim=13824, num_layers=40, cross_attn_norm=True,
    qk_norm="rms_norm_across_heads", eps=1e-6, image_dim=None, added_kv_proj_dim=None, rope_max_seq_len=1024)

#: ``boundary_ratio`` of Wan2.2-I2V-A14B: the high-noise expert runs while t >= 0.9 * 1000.
A14B_BOUNDARY_RATIO = 0.9

#: UMT5-XXL encoder (``models.s2v.components.UMT5Arch`` fields; ``umt5_config`` makes the
#: transformers config: gated-gelu, relative attention 32 buckets / max distance 128).
UMT5_XXL: dict[str, Any] = dict(vocab_size=256384, d_model=4096, d_kv=64, d_ff=10240, num_heads=64,
                                num_layers=24, num_buckets=32)

#: The Wan2.1 VAE (what Wan2.2 A14B, S2V-14B and Animate-14B use): diffusers ``AutoencoderKLWan``.
WAN21_VAE: dict[str, Any] = dict(base_dim=96, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
                                 temperal_downsample=[False, True, True], dropout=0.0)

#: ``UniPCMultistepScheduler`` of the Wan2.2 diffusers pipelines.
WAN_SCHEDULER: dict[str, Any] = dict(num_train_timesteps=1000, prediction_type="flow_prediction",
                                     use_flow_sigmas=True, flow_shift=5.0)

# --------------------------------------------------------------------------- Wan2.2-Animate-14B

#: diffusers ``WanAnimateTransformer3DModel`` arguments of the official Animate-14B checkpoint
#: (``wan/configs/wan_animate_14B.py``: dim 5120 = 40 heads x 128, ffn 13824, 40 layers, freq 256,
#: text 4096, in 36 / out 16, a face adapter every 5 blocks, motion encoder 512 / 20 / 512, face
#: encoder 4 heads; cross-attention ``k_img`` / ``v_img`` on 1280-wide CLIP features).
ANIMATE_14B: dict[str, Any] = dict(
    patch_size=(1, 2, 2), num_attention_heads=40, attention_head_dim=128, in_channels=36, latent_channels=16,
    out_channels=16, text_dim=4096, freq_dim=256, ffn_dim=13824, num_layers=40, cross_attn_norm=True,
    qk_norm="rms_norm_across_heads", eps=1e-6, image_dim=1280, added_kv_proj_dim=5120, rope_max_seq_len=1024,
    pos_embed_seq_len=None, motion_encoder_size=512, motion_style_dim=512, motion_dim=20, motion_encoder_dim=512,
    face_encoder_hidden_dim=1024, face_encoder_num_heads=4, inject_face_latents_blocks=5,
    motion_encoder_batch_size=8)

#: transformers ``CLIPVisionConfig`` of its image encoder (the ViT-H/14 tower of
#: open-clip xlm-roberta-large-vit-huge-14, as the Wan I2V/Animate diffusers folders hold it).
CLIP_VIT_H_14: dict[str, Any] = dict(
    hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=16, image_size=224,
    patch_size=14, projection_dim=1024, hidden_act="gelu", layer_norm_eps=1e-5)

#: ``CLIPImageProcessor`` of that encoder (224 x 224, OpenAI CLIP normalisation).
CLIP_PROCESSOR: dict[str, Any] = dict(
    size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224},
    image_mean=[0.48145466, 0.4578275, 0.40821073], image_std=[0.26862954, 0.26130258, 0.27577711])

# --------------------------------------------------------------------------- Wan2.2-S2V-14B

#: transformers ``Wav2Vec2Config`` of wav2vec2-large-xlsr-53-english (the S2V audio encoder:
#: 24 layers + embeddings = 25 hidden states of 1024).
WAV2VEC2_LARGE_XLSR53: dict[str, Any] = dict(
    vocab_size=33, hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
    conv_dim=(512,) * 7, conv_kernel=(10, 3, 3, 3, 3, 2, 2), conv_stride=(5, 2, 2, 2, 2, 2, 2), conv_bias=True,
    feat_extract_norm="layer", do_stable_layer_norm=True, num_conv_pos_embeddings=128,
    num_conv_pos_embedding_groups=16, hidden_act="gelu", feat_proj_dropout=0.0, hidden_dropout=0.0,
    attention_dropout=0.0, activation_dropout=0.0, layerdrop=0.0, pad_token_id=0, bos_token_id=1,
    eos_token_id=2, architectures=["Wav2Vec2ForCTC"])

# --------------------------------------------------------------------------- Real-ESRGAN, HTDemucs, AMT

#: ``models.rrdbnet.RRDBNet`` arguments of RealESRGAN_x2plus.pth (num_feat 64, 23 blocks, growth 32).
RRDBNET_X2PLUS: dict[str, Any] = dict(num_in_ch=3, num_out_ch=3, scale=2, num_feat=64, num_block=23, num_grow_ch=32)

#: ``demucs.htdemucs.HTDemucs`` arguments of the released ``htdemucs`` model (signature 955717e8:
#: the class defaults with the training grid's ``dconv_mode: 3``, 44.1 kHz stereo, 7.8 s segments).
HTDEMUCS: dict[str, Any] = dict(sources=["drums", "bass", "other", "vocals"], audio_channels=2, channels=48,
                                growth=2, nfft=4096, depth=4, t_layers=5, dconv_mode=3, bottom_channels=0,
                                samplerate=44100, segment=Fraction(39, 5))

#: The AMT configuration of ``models.amt.network.VARIANTS`` the shapes profile builds: AMT-G, the
#: model the seed's post-processing runs (``amt_interpolate.py``: ``amt-g.pth``, AMT-L only as a fallback).
AMT_VARIANT = "amt-g"
