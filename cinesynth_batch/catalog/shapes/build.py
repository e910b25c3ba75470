"""Production pipelines at full size with seeded random weights, built on the device that holds them.

``build_shapes(name, device, dtype)`` returns the object the production loader
(``catalog/loaders.py``) returns for the same role, of the same classes and configurations, with
random weights instead of the released ones:

* ``flux2-klein-9b``: ``Flux2KleinPipeline`` (transformer, Qwen3-8B text encoder, FLUX.2 VAE); a
  component named in ``host`` (the text encoder, when the loader keeps it off the device) is built
  in host RAM (drawn on the GPU when there is one, then copied: the same values);
  ``flux2-klein-base-9b`` is the same pipeline undistilled (``is_distilled=False``);
* ``wan2.2-i2v-a14b``: ``WanImageToVideoPipeline`` with both experts, UMT5-XXL and the Wan VAE;
* ``wan2.2-s2v-14b``: our ``WanS2VPipeline`` (transformer, Wan2.1 VAE, UMT5-XXL, wav2vec2-large);
  for both, the components named in ``host`` (those a pipeline loaded to stream its blocks keeps
  off the device) are built in host RAM, drawn on the GPU as the text encoder of FLUX.2-klein is;
* ``wan2.2-animate-14b``: ``WanAnimatePipeline`` with its CLIP ViT-H/14 image encoder; as
  ``load_animate_pipeline`` does, the transformer stays in host RAM (its rest copy: drawn on the GPU
  when there is one, then copied) and the other components go to ``device``;
* ``realesrgan-x2plus``: an RRDBNet 64/23/32 x2 ``Upscaler``;
* ``htdemucs``: a ``BagOfModels`` of one ``HTDemucs`` at the released size;
* ``amt-g``: an AMT-G ``AmtInterpolator`` (float32, as ``load_amt`` runs it).

Tokenizers and processors are the tiny profile's (``catalog/tiny``): a T5 tokenizer built offline
for UMT5, a byte-level Qwen2 tokenizer for Qwen3, the CLIP image processor of the real size. Every
token id they make is valid for the full-size vocabularies. The output is noise; the shapes, dtypes,
memory and compute are the production ones.
"""

from __future__ import annotations

from typing import Any, Callable

from . import configs as C
from .materialize import build_module, empty_model, materialize

FLUX2_KLEIN_9B = "flux2-klein-9b"
FLUX2_KLEIN_BASE_9B = "flux2-klein-base-9b"
WAN_I2V_A14B = "wan2.2-i2v-a14b"
WAN_S2V_14B = "wan2.2-s2v-14b"
WAN_ANIMATE_14B = "wan2.2-animate-14b"
RRDBNET_X2PLUS = "realesrgan-x2plus"
HTDEMUCS = "htdemucs"
AMT_G = "amt-g"

# One seed per component, so each is the same tensor whatever else is built.
_SEEDS = {"transformer": 11, "transformer_2": 12, "text_encoder": 13, "vae": 14, "image_encoder": 15,
          "audio_model": 16, "net": 17, "demucs": 18, "amt": 19}


def _dtype(dtype: str):
    from ...runtime.dtypes import torch_dtype

    return torch_dtype(dtype)


# --------------------------------------------------------------------------- components


def umt5_xxl(device: str, dtype, draw_on: str | None = None):
    from transformers import UMT5EncoderModel

    from ...models.s2v.components import UMT5Arch, umt5_config

    model = empty_model(lambda: UMT5EncoderModel(umt5_config(UMT5Arch(**C.UMT5_XXL))))
    model.set_input_embeddings(model.shared)        # one embedding tensor, as load_umt5_encoder makes it
    return materialize(model, device, dtype, _SEEDS["text_encoder"], draw_on=draw_on)


def wan21_vae(device: str, dtype, draw_on: str | None = None):
    from diffusers import AutoencoderKLWan

    return build_module(lambda: AutoencoderKLWan(**C.WAN21_VAE), device, dtype, _SEEDS["vae"], draw_on=draw_on)


def wan_expert(device: str, dtype, seed_key: str = "transformer", draw_on: str | None = None):
    from diffusers import WanTransformer3DModel

    return build_module(lambda: WanTransformer3DModel(**C.A14B_EXPERT), device, dtype, _SEEDS[seed_key],
                        draw_on=draw_on)


def _wan_scheduler():
    from diffusers import UniPCMultistepScheduler

    return UniPCMultistepScheduler(**C.WAN_SCHEDULER)


# --------------------------------------------------------------------------- pipelines


def _home(device: str, host: bool) -> tuple[str, str | None]:
    """(where a component is built, where its random values are drawn): host RAM for one kept off
    the GPU, drawn on the GPU so its values are those it would have there."""
    import torch

    dev = torch.device(device)
    if not host or dev.type in ("cpu", "meta"):
        return device, None
    return "cpu", device


def build_flux2_klein(device: str, dtype, host: tuple[str, ...] = (),
                      distilled: bool = C.FLUX2_KLEIN_9B_DISTILLED) -> Any:
    from diffusers import AutoencoderKLFlux2, FlowMatchEulerDiscreteScheduler, Flux2KleinPipeline, Flux2Transformer2DModel
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from ..tiny.build import _qwen2_tokenizer

    tokenizer = _qwen2_tokenizer()
    home, draw = _home(device, "text_encoder" in host)
    text_encoder = build_module(lambda: Qwen3ForCausalLM(Qwen3Config(**C.QWEN3_8B)), home, dtype,
                                _SEEDS["text_encoder"], draw_on=draw)
    vae = build_module(lambda: AutoencoderKLFlux2(**C.FLUX2_VAE), device, dtype, _SEEDS["vae"])
    transformer = build_module(lambda: Flux2Transformer2DModel(**C.FLUX2_KLEIN_9B), device, dtype,
                               _SEEDS["transformer"])
    pipe = Flux2KleinPipeline(scheduler=FlowMatchEulerDiscreteScheduler(**C.FLUX2_SCHEDULER), vae=vae,
                              text_encoder=text_encoder, tokenizer=tokenizer, transformer=transformer,
                              is_distilled=distilled)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def build_flux2_klein_base(device: str, dtype, host: tuple[str, ...] = ()) -> Any:
    return build_flux2_klein(device, dtype, host, distilled=C.FLUX2_KLEIN_BASE_9B_DISTILLED)


def build_wan_i2v(device: str, dtype, host: tuple[str, ...] = ()) -> Any:
    from diffusers import WanImageToVideoPipeline

    from ..tiny.parts import t5_tokenizer

    def at(name: str) -> dict:
        home, draw = _home(device, name in host)
        return {"device": home, "draw_on": draw}

    pipe = WanImageToVideoPipeline(
        tokenizer=t5_tokenizer(), text_encoder=umt5_xxl(dtype=dtype, **at("text_encoder")),
        vae=wan21_vae(dtype=dtype, **at("vae")), scheduler=_wan_scheduler(), image_processor=None,
        image_encoder=None, transformer=wan_expert(dtype=dtype, seed_key="transformer", **at("transformer")),
        transformer_2=wan_expert(dtype=dtype, seed_key="transformer_2", **at("transformer_2")),
        boundary_ratio=C.A14B_BOUNDARY_RATIO)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def build_wan_s2v(device: str, dtype, host: tuple[str, ...] = ()) -> Any:
    import torch
    from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2ForCTC

    from ...models.s2v.pipeline import WanS2VPipeline
    from ...models.s2v.transformer import S2V_14B_CONFIG, WanS2VTransformer3DModel
    from ..tiny.parts import t5_tokenizer

    home, draw = _home(device, "transformer" in host)
    transformer = build_module(lambda: WanS2VTransformer3DModel(**S2V_14B_CONFIG), home, dtype,
                               _SEEDS["transformer"], draw_on=draw)
    # WanS2VPipeline.from_folder: the VAE in float32 on the CPU, else in the load dtype; wav2vec2 in float32.
    vae = wan21_vae(device, torch.float32 if torch.device(device).type == "cpu" else dtype)
    audio_model = build_module(lambda: Wav2Vec2ForCTC(Wav2Vec2Config(**C.WAV2VEC2_LARGE_XLSR53)), device,
                               torch.float32, _SEEDS["audio_model"])
    extractor = Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, padding_value=0.0,
                                         do_normalize=True, return_attention_mask=True)
    home, draw = _home(device, "text_encoder" in host)
    return WanS2VPipeline(transformer, vae, umt5_xxl(home, dtype, draw_on=draw), t5_tokenizer(), audio_model,
                          extractor, device=device, dtype=dtype)


def build_wan_animate(device: str, dtype) -> Any:
    import torch
    from diffusers import WanAnimatePipeline, WanAnimateTransformer3DModel
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

    from ...runtime.animate import DEVICE_ATTR
    from ..tiny.parts import t5_tokenizer

    dev = torch.device(device)
    home = "meta" if dev.type == "meta" else "cpu"        # the rest copy lives in host RAM
    draw = device if dev.type == "cuda" else None
    transformer = build_module(lambda: WanAnimateTransformer3DModel(**C.ANIMATE_14B), home, dtype,
                               _SEEDS["transformer"], draw_on=draw)
    image_encoder = build_module(lambda: CLIPVisionModel(CLIPVisionConfig(**C.CLIP_VIT_H_14)), device, dtype,
                                 _SEEDS["image_encoder"])
    pipe = WanAnimatePipeline(tokenizer=t5_tokenizer(), text_encoder=umt5_xxl(device, dtype),
                              vae=wan21_vae(device, dtype), scheduler=_wan_scheduler(),
                              image_processor=CLIPImageProcessor(**C.CLIP_PROCESSOR), image_encoder=image_encoder,
                              transformer=transformer)
    pipe.set_progress_bar_config(disable=True)
    setattr(pipe, DEVICE_ATTR, str(dev))
    return pipe


def build_rrdbnet(device: str, dtype) -> Any:
    from ...models.rrdbnet import RRDBNet, Upscaler

    net = build_module(lambda: RRDBNet(**C.RRDBNET_X2PLUS), device, dtype, _SEEDS["net"])
    return Upscaler(net, device=device, dtype=dtype)


def build_htdemucs(device: str, dtype) -> Any:
    import torch
    from demucs.apply import BagOfModels
    from demucs.htdemucs import HTDemucs

    model = build_module(lambda: HTDemucs(**C.HTDEMUCS), device, torch.float32, _SEEDS["demucs"])
    return BagOfModels([model]).eval().to(device)


def build_amt(device: str, dtype) -> Any:
    import torch

    from ...models.amt.network import AMT, VARIANTS
    from ...models.amt.runner import AmtInterpolator

    net = build_module(lambda: AMT(VARIANTS[C.AMT_VARIANT]), device, torch.float32, _SEEDS["amt"])
    return AmtInterpolator(net, device)


BUILDERS: dict[str, Callable[[str, Any], Any]] = {
    FLUX2_KLEIN_9B: build_flux2_klein,
    FLUX2_KLEIN_BASE_9B: build_flux2_klein_base,
    WAN_I2V_A14B: build_wan_i2v,
    WAN_S2V_14B: build_wan_s2v,
    WAN_ANIMATE_14B: build_wan_animate,
    RRDBNET_X2PLUS: build_rrdbnet,
    HTDEMUCS: build_htdemucs,
    AMT_G: build_amt,
}


def build_shapes(name: str, device: str = "cuda", dtype: str = "bfloat16", host: tuple[str, ...] = ()) -> Any:
    """The production pipeline ``name`` at full size with seeded random weights on ``device``;
    ``host``: components of a FLUX.2-klein, Wan2.2-I2V or S2V pipeline built in host RAM instead."""
    from ...errors import ModelError
    from ...runtime.dtypes import quiet_libraries

    if name not in BUILDERS:
        raise ModelError(f"no shapes model named {name!r}", hint=f"known: {', '.join(sorted(BUILDERS))}")
    quiet_libraries()
    td = _dtype(dtype) if isinstance(dtype, str) else dtype
    if host:
        if name not in (FLUX2_KLEIN_9B, FLUX2_KLEIN_BASE_9B, WAN_I2V_A14B, WAN_S2V_14B):
            raise ModelError(f"shapes model {name!r} builds every component on its device")
        return BUILDERS[name](device, td, tuple(host))
    return BUILDERS[name](device, td)
