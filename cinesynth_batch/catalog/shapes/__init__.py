"""The ``shapes`` profile: every role's production architecture at its real size, with seeded
random weights made on the device that holds them (``build.py``; no files).

This module imports no torch: the registry names a shapes model by ``ShapesSource`` and knows its
size from ``SIZES`` (parameters per component, counted on the ``meta`` device; the tests check the
table against the builders).
"""

from __future__ import annotations

from dataclasses import dataclass

#: Bytes per element of the dtypes a profile may name.
DTYPE_BYTES = {"bfloat16": 2, "bf16": 2, "float16": 2, "fp16": 2, "half": 2, "float32": 4, "fp32": 4,
               "float": 4}


@dataclass(frozen=True)
class Component:
    """One module of a shapes pipeline: parameters, those kept in float32 whatever the load dtype,
    and the bytes of its buffers."""

    name: str
    params: int
    fp32_params: int = 0
    buffer_bytes: int = 0

    def nbytes(self, dtype: str) -> int:
        size = DTYPE_BYTES[dtype]
        return (self.params - self.fp32_params) * size + self.fp32_params * 4 + self.buffer_bytes


#: Components of each shapes model as built on a GPU (exact counts; see docs/profiles.md).
SIZES: dict[str, tuple[Component, ...]] = {
    "flux2-klein-9b": (
        Component("transformer", 9_078_581_248),
        Component("text_encoder", 8_190_735_360, 0, 512),
        Component("vae", 84_046_115, 0, 1032),
    ),
    "flux2-klein-base-9b": (                     # the undistilled release: the same architecture
        Component("transformer", 9_078_581_248),
        Component("text_encoder", 8_190_735_360, 0, 512),
        Component("vae", 84_046_115, 0, 1032),
    ),
    "wan2.2-i2v-a14b": (
        Component("transformer", 14_288_901_184, 29_184_000, 1_048_576),
        Component("transformer_2", 14_288_901_184, 29_184_000, 1_048_576),
        Component("text_encoder", 5_680_910_336),
        Component("vae", 126_892_531),
    ),
    "wan2.2-s2v-14b": (
        Component("transformer", 16_295_755_609),
        Component("text_encoder", 5_680_910_336),
        Component("vae", 126_892_531),
        Component("audio_model", 315_472_545, 315_472_545),
    ),
    "wan2.2-animate-14b": (
        Component("transformer", 17_274_816_884, 29_207_040, 1_049_472),
        Component("text_encoder", 5_680_910_336),
        Component("vae", 126_892_531),
        Component("image_encoder", 630_766_080, 0, 2056),
    ),
    "realesrgan-x2plus": (Component("net", 16_703_171),),
    "htdemucs": (Component("model", 27_410_376, 27_410_376),),
    "amt-g": (Component("net", 30_638_919, 30_638_919),),
}

#: The loader kind each shapes model serves (``catalog/loaders.py``).
KINDS = {"flux2-klein-9b": "flux2-klein", "flux2-klein-base-9b": "flux2-klein", "wan2.2-i2v-a14b": "wan-i2v",
         "wan2.2-s2v-14b": "wan-s2v", "wan2.2-animate-14b": "wan-animate", "realesrgan-x2plus": "rrdbnet-x2",
         "htdemucs": "demucs", "amt-g": "amt"}


def shapes_params(name: str) -> int:
    return sum(c.params for c in SIZES[name])


def shapes_nbytes(name: str, dtype: str = "bfloat16") -> int:
    """Bytes of model ``name`` loaded in ``dtype`` (parameters and buffers, every component)."""
    return sum(c.nbytes(dtype) for c in SIZES[name])


@dataclass(frozen=True)
class ShapesSource:
    """Where a shapes model comes from: built in memory by ``build_shapes(name, ...)``, no files.
    ``Registry.local_path`` returns one for a ``shapes:`` role; ``load_model`` builds it."""

    name: str
    kind: str
    revision: str

    @property
    def label(self) -> str:
        return f"shapes/{self.name}"

    def nbytes(self, dtype: str = "bfloat16") -> int:
        return shapes_nbytes(self.name, dtype)

    def __str__(self) -> str:
        return self.label
