"""TeaCache step caching for Wan-style video transformers, as removable diffusers hooks.

TeaCache (Liu et al., "Timestep Embedding Tells: It's Time to Cache for Video Diffusion Model",
arXiv:2411.19108) skips the whole stack of transformer blocks on denoising steps where the model's
input has barely changed since the last fully computed step, and reuses that step's block residual.

Per transformer and per guidance branch (``cond`` / ``uncond``), on every call:

1. take an *indicator* tensor that is cheap to get before the blocks run (see ``INDICATORS``);
2. ``rel_l1 = mean|m_t - m_prev| / mean|m_prev|`` against the previous call of the same branch;
3. rescale it with a polynomial fitted per model (``use_coefficients``), clamp it at 0 and add it to
   an accumulator;
4. accumulator ``< rel_l1_thresh``: skip the blocks, ``hidden = block_input + cached_residual``;
   otherwise run the blocks, cache ``residual = blocks_output - block_input`` and zero the accumulator.

The first ``start_step`` calls of each branch always compute, and so does the last step when the
step count is known (``num_steps``, ``TeaCacheHandle.set_num_steps`` or a pipeline ``cache_context``
carrying ``step_index``/``num_inference_steps``). A threshold of 0 never skips, so it reproduces the
uncached output bit for bit.

Indicators
----------
``modulated_input``
    The first block's adaptive-norm input ``norm1(x) * (1 + scale) + shift``, with ``shift``/``scale``
    built from the timestep embedding: the paper's general definition. It reacts to the latent as
    well as to the timestep. Use it with ``use_coefficients=False`` (raw relative L1) or with
    coefficients fitted on it.
``timestep_embedding``
    The timestep embedding (``e`` in the official Wan code, ``temb`` in diffusers). Every published
    Wan2.1 polynomial without "retention steps" was fitted on this one.
``timestep_proj``
    The 6-way projection of that embedding that feeds every block's modulation (``e0`` / diffusers
    ``timestep_proj``). The published "retention steps" (``use_ret_steps``) polynomials were fitted
    on this one; the reference recipe pairs them with 5 always-computed first steps (``start_step=5``)
    and no forced last step.

A polynomial is only meaningful on the indicator it was fitted on, so a named ``model`` preset
brings its indicator along (``indicator=None``); ``indicator="modulated_input"`` is the default when
no preset polynomial is used.

Coefficient sources
-------------------
All numbers are in ``numpy.poly1d`` order (highest degree first).

* Wan2.1 sets: the official TeaCache4Wan2.1 reference, github.com/ali-vilab/TeaCache at commit
  7c10efc4702c6b619f47805f7abe4a7a08085aa0, file ``TeaCache4Wan2.1/teacache_generate.py``:
  T2V lines 883/885 (retention steps, ``e0``) and 890/892 (``e``); I2V lines 967/969 (retention
  steps, ``e0``) and 974/976 (``e``). The same values appear in kijai/ComfyUI-WanVideoWrapper
  ``nodes_model_loading.py`` (``teacache_coefficients_map``, commit
  3317577052282dbd76e3fe3c4f72c8321d761523) under the keys ``1_3B``, ``14B``, ``i2v_480``,
  ``i2v_720`` with modes ``e`` / ``e0``.
* Wan2.2 A14B: nobody has published a fit. ComfyUI-WanVideoWrapper (same file and commit, comment
  "Placeholders until TeaCache for Wan2.2 is obtained") reuses the Wan2.1 I2V-720P sets for the
  Wan2.2 I2V experts and the Wan2.1 T2V-14B sets for the Wan2.2 T2V experts; the ``wan2.2-*``
  presets below do the same and are marked as borrowed. Each expert gets its own state but the same
  polynomial.

Hook layout
-----------
``apply_teacache`` registers, through ``diffusers.hooks.HookRegistry`` (so several hooks can stack
and each is removed by name):

* on the transformer: a stateful hook that opens a "call" (which branch, which timestep) around each
  forward and receives the pipeline's ``cache_context`` name;
* on the first block: the hook that decides. To compute, it lets the model run its own block loop
  and the residual is taken from the region's last output when the forward ends; to skip, it
  returns ``input + residual``;
* on the other blocks (and on any between-block modules or methods the adapter names, such as audio
  injection): hooks that note their outputs on computed steps and hand the hidden states through
  unchanged on skipped ones;
* on the module that produces the indicator, if it is not the first block: a hook that records it.

Everything model-specific sits in a ``TeaCacheAdapter``: which blocks and between-block calls form
the region, where the hidden states are in a block call, how to build the modulated input, where
the timestep embeddings come from. ``WanDiffusersAdapter`` covers diffusers'
``WanTransformer3DModel`` (Wan2.1, Wan2.2 A14B experts, Wan2.2 TI2V); ``WanOfficialAdapter`` and
``WanS2VAdapter`` cover the official Wan code layout (``forward(x, t, ...)``, ``blocks[i].norm1``,
``blocks[i].modulation``, ``time_embedding``, ``time_projection``, and for S2V
``after_transformer_block``). Other layouts pass ``adapter=`` (see ``TeaCacheAdapter``).

Example, Wan2.2 I2V A14B (two experts, each with its own state)::

    handle = apply_teacache_to_pipeline(pipe, TeaCacheConfig(model="wan2.2-i2v-a14b"), num_inference_steps=40)
    video = pipe(image=image, prompt=prompt, num_inference_steps=40).frames[0]
    print(handle.summary()); handle.reset()  # handle.remove() to uninstall
"""

from __future__ import annotations

import copy
import inspect
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import torch
from diffusers.hooks.hooks import BaseState, HookRegistry, ModelHook, StateManager

__all__ = [
    "COEFFICIENTS",
    "INDICATORS",
    "CoefficientSet",
    "ForwardCall",
    "TeaCacheAdapter",
    "TeaCacheConfig",
    "TeaCacheHandle",
    "WanDiffusersAdapter",
    "WanOfficialAdapter",
    "WanS2VAdapter",
    "apply_teacache",
    "apply_teacache_to_pipeline",
    "default_adapter",
    "expert_step_counts",
    "remove_teacache",
]

INDICATORS = ("modulated_input", "timestep_embedding", "timestep_proj")

_MODEL_HOOK = "cinesynth_teacache"
_HEAD_HOOK = "cinesynth_teacache_head"
_BLOCK_HOOK = "cinesynth_teacache_block"
_CAPTURE_HOOK = "cinesynth_teacache_capture"


# --------------------------------------------------------------------------- coefficients


@dataclass(frozen=True)
class CoefficientSet:
    """A rescaling polynomial (``numpy.poly1d`` order) and the indicator it was fitted on."""

    indicator: str
    values: tuple[float, ...]
    source: str


_REF = "ali-vilab/TeaCache@7c10efc TeaCache4Wan2.1/teacache_generate.py"
_KIJAI = "kijai/ComfyUI-WanVideoWrapper@3317577 nodes_model_loading.py teacache_coefficients_map"

_T2V_1_3B_E = (2.39676752e03, -1.31110545e03, 2.01331979e02, -8.29855975e00, 1.37887774e-01)
_T2V_1_3B_E0 = (-5.21862437e04, 9.23041404e03, -5.28275948e02, 1.36987616e01, -4.99875664e-02)
_T2V_14B_E = (-5784.54975374, 5449.50911966, -1811.16591783, 256.27178429, -13.02252404)
_T2V_14B_E0 = (-3.03318725e05, 4.90537029e04, -2.65530556e03, 5.87365115e01, -3.15583525e-01)
_I2V_480P_E = (-3.02331670e02, 2.23948934e02, -5.25463970e01, 5.87348440e00, -2.01973289e-01)
_I2V_480P_E0 = (2.57151496e05, -3.54229917e04, 1.40286849e03, -1.35890334e01, 1.32517977e-01)
_I2V_720P_E = (-114.36346466, 65.26524496, -18.82220707, 4.91518089, -0.23412683)
_I2V_720P_E0 = (8.10705460e03, 2.13393892e03, -3.72934672e02, 1.66203073e01, -4.17769401e-02)


def _pair(e: tuple, e0: tuple, src_e: str, src_e0: str) -> dict[str, CoefficientSet]:
    return {
        "timestep_embedding": CoefficientSet("timestep_embedding", e, src_e),
        "timestep_proj": CoefficientSet("timestep_proj", e0, src_e0),
    }


# model preset -> indicator -> polynomial. The first indicator of each preset is its default.
COEFFICIENTS: dict[str, dict[str, CoefficientSet]] = {
    "wan2.1-t2v-1.3b": _pair(
        _T2V_1_3B_E, _T2V_1_3B_E0,
        f"{_REF} line 890 (Wan2.1 T2V-1.3B, e)", f"{_REF} line 883 (Wan2.1 T2V-1.3B, use_ret_steps, e0)",
    ),
    "wan2.1-t2v-14b": _pair(
        _T2V_14B_E, _T2V_14B_E0,
        f"{_REF} line 892 (Wan2.1 T2V-14B, e)", f"{_REF} line 885 (Wan2.1 T2V-14B, use_ret_steps, e0)",
    ),
    "wan2.1-i2v-14b-480p": _pair(
        _I2V_480P_E, _I2V_480P_E0,
        f"{_REF} line 974 (Wan2.1 I2V-14B-480P, e)", f"{_REF} line 967 (Wan2.1 I2V-14B-480P, use_ret_steps, e0)",
    ),
    "wan2.1-i2v-14b-720p": _pair(
        _I2V_720P_E, _I2V_720P_E0,
        f"{_REF} line 976 (Wan2.1 I2V-14B-720P, e)", f"{_REF} line 969 (Wan2.1 I2V-14B-720P, use_ret_steps, e0)",
    ),
    # Borrowed, not fitted on Wan2.2: the choice ComfyUI-WanVideoWrapper makes for Wan2.2 A14B.
    "wan2.2-i2v-a14b": _pair(
        _I2V_720P_E, _I2V_720P_E0,
        f"borrowed Wan2.1 I2V-14B-720P set ({_KIJAI} 'i2v_14B_2.2', e)",
        f"borrowed Wan2.1 I2V-14B-720P set ({_KIJAI} 'i2v_14B_2.2', e0)",
    ),
    "wan2.2-t2v-a14b": _pair(
        _T2V_14B_E, _T2V_14B_E0,
        f"borrowed Wan2.1 T2V-14B set ({_KIJAI} '14B_2.2', e)",
        f"borrowed Wan2.1 T2V-14B set ({_KIJAI} '14B_2.2', e0)",
    ),
}


def _poly(coefficients: Sequence[float], x: float) -> float:
    acc = 0.0
    for c in coefficients:
        acc = acc * x + c
    return acc


# --------------------------------------------------------------------------- config


@dataclass
class TeaCacheConfig:
    """TeaCache settings for one transformer (``apply_teacache``) or a pipeline's experts.

    * ``rel_l1_thresh``: skip while the accumulated (rescaled) distance stays below this. 0 never skips.
    * ``start_step``: the first N calls of each branch always compute.
    * ``use_coefficients``: rescale the distance with a polynomial (``coefficients``, or the
      ``model`` preset's); ``False`` uses the raw relative L1 (thresholds then ~10x smaller).
    * ``model``: a key of ``COEFFICIENTS``.
    * ``num_steps``: calls per branch in one loop *of this transformer* (for a two-expert pipeline,
      that expert's share; ``expert_step_counts`` computes it). Known, it forces the last step to
      compute. ``None``: the last step is forced only when the pipeline's ``cache_context`` says
      which step it is.
    * ``indicator``: one of ``INDICATORS``; ``None`` picks the preset's (``timestep_embedding``) when
      the preset polynomial is used, else ``modulated_input``.
    * ``max_skip_steps``: optional cap on consecutive skipped calls of a branch (``None``: no cap, as
      the reference). A guard for polynomials used outside the range they were fitted on.
    """

    rel_l1_thresh: float = 0.15
    start_step: int = 1
    use_coefficients: bool = True
    coefficients: list[float] | None = None
    model: str = "wan2.1-i2v-14b-480p"
    num_steps: int | None = None
    indicator: str | None = None
    max_skip_steps: int | None = None

    def __post_init__(self) -> None:
        if not (isinstance(self.rel_l1_thresh, (int, float)) and self.rel_l1_thresh >= 0):
            raise ValueError(f"rel_l1_thresh must be a number >= 0, got {self.rel_l1_thresh!r}")
        if not (isinstance(self.start_step, int) and self.start_step >= 0):
            raise ValueError(f"start_step must be an integer >= 0, got {self.start_step!r}")
        if self.num_steps is not None and not (isinstance(self.num_steps, int) and self.num_steps >= 1):
            raise ValueError(f"num_steps must be None or an integer >= 1, got {self.num_steps!r}")
        if self.max_skip_steps is not None and not (
            isinstance(self.max_skip_steps, int) and self.max_skip_steps >= 0
        ):
            raise ValueError(f"max_skip_steps must be None or an integer >= 0, got {self.max_skip_steps!r}")
        if self.indicator is not None and self.indicator not in INDICATORS:
            raise ValueError(f"indicator must be one of {INDICATORS}, got {self.indicator!r}")
        if self.coefficients is not None:
            vals = list(self.coefficients)
            if not vals or not all(isinstance(c, (int, float)) and math.isfinite(c) for c in vals):
                raise ValueError("coefficients must be a non-empty list of finite numbers")
            self.coefficients = [float(c) for c in vals]
        elif self.use_coefficients:
            if self.model not in COEFFICIENTS:
                raise ValueError(
                    f"unknown TeaCache model {self.model!r}; known: {', '.join(COEFFICIENTS)} "
                    "(or pass coefficients=[...], or use_coefficients=False)"
                )
            if self.indicator is not None and self.indicator not in COEFFICIENTS[self.model]:
                raise ValueError(
                    f"no published {self.model} polynomial for indicator {self.indicator!r} "
                    f"(fitted: {', '.join(COEFFICIENTS[self.model])}); pass coefficients=[...] "
                    "or use_coefficients=False"
                )

    @property
    def uses_preset(self) -> bool:
        return self.use_coefficients and self.coefficients is None

    @property
    def resolved_indicator(self) -> str:
        if self.indicator is not None:
            return self.indicator
        if self.uses_preset:
            return next(iter(COEFFICIENTS[self.model]))
        return "modulated_input"

    @property
    def coefficient_set(self) -> CoefficientSet | None:
        """The polynomial in use, or ``None`` for the raw distance."""
        if not self.use_coefficients:
            return None
        if self.coefficients is not None:
            return CoefficientSet(self.resolved_indicator, tuple(self.coefficients), "user-supplied")
        return COEFFICIENTS[self.model][self.resolved_indicator]

    def rescale(self, rel_l1: float) -> float:
        """The distance added to the accumulator: the polynomial (or identity), clamped at 0."""
        cs = self.coefficient_set
        value = rel_l1 if cs is None else _poly(cs.values, rel_l1)
        return max(value, 0.0)


# --------------------------------------------------------------------------- adapters


def _arg(args: tuple, kwargs: dict, index: int, name: str) -> Any:
    if name in kwargs:
        return kwargs[name]
    if len(args) > index:
        return args[index]
    raise TypeError(f"block call has no argument {name!r} (position {index})")


def _first_tensor(output: Any) -> torch.Tensor:
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise TypeError(f"expected a tensor output, got {type(output).__name__}")


Bypass = Callable[[tuple, dict], Any]


class TeaCacheAdapter:
    """The model-specific half of TeaCache. Subclass and override what differs.

    The cached *region* is the model's own loop over ``blocks(model)`` plus any between-block
    calls named by ``passthrough_modules`` / ``passthrough_methods``. A block call is
    ``block(*args, **kwargs)`` as the model makes it; its hidden states are argument
    ``hidden_index`` / keyword ``hidden_name`` and it returns the new hidden states. On a computed
    step the model runs the region itself and the residual is taken from the region's last output;
    on a skipped step the first block returns ``input + residual`` and every later region call hands
    its hidden states through.

    A new layout usually needs: the argument positions/names, ``modulated_input`` (the first
    block's AdaLN input), the timestep-embedding indicators (``capture_modules`` when the model
    calls those modules, else ``indicator``) and the between-block calls.
    ``models/s2v/teacache_adapter.py`` is a complete example (blocks called as
    ``block(x, temb, split, ...)`` with a two-slot modulation, audio injected between blocks).
    """

    hidden_index = 0
    hidden_name = "hidden_states"
    timestep_index = 1
    timestep_name = "timestep"
    #: True if running the region may modify its input tensor in place (the input is then cloned).
    region_may_modify_input = False

    def blocks(self, model: torch.nn.Module) -> Sequence[torch.nn.Module]:
        return list(model.blocks)

    def timestep(self, args: tuple, kwargs: dict) -> float | None:
        """The call's timestep as one number (the largest, for per-token timesteps)."""
        try:
            t = _arg(args, kwargs, self.timestep_index, self.timestep_name)
        except TypeError:
            return None
        if isinstance(t, torch.Tensor):
            return float(t.detach().max()) if t.numel() else None
        if isinstance(t, (int, float)):
            return float(t)
        return None

    def capture_modules(self, model: torch.nn.Module) -> dict[str, torch.nn.Module]:
        """Indicator name -> module whose output is that indicator (for the non-block indicators)."""
        return {}

    def modulated_input(self, block: torch.nn.Module, args: tuple, kwargs: dict) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} cannot build the modulated input")

    def indicator(
        self, kind: str, model: torch.nn.Module, block: torch.nn.Module, args: tuple, kwargs: dict,
        forward: ForwardCall,
    ) -> torch.Tensor:
        """The indicator tensor, at the first block's call (``args`` / ``kwargs``). By default the
        modulated input, or what ``capture_modules`` recorded during this forward."""
        if kind == "modulated_input":
            return self.modulated_input(block, args, kwargs)
        if kind not in forward.captured:
            raise RuntimeError(
                f"TeaCache: the {kind!r} indicator was not produced before the first block "
                f"(the model does not call the module {type(self).__name__}.capture_modules names; "
                "override indicator())"
            )
        return forward.captured[kind]

    def hidden_states(self, args: tuple, kwargs: dict) -> torch.Tensor:
        return _arg(args, kwargs, self.hidden_index, self.hidden_name)

    def with_hidden_states(self, args: tuple, kwargs: dict, hidden: torch.Tensor) -> tuple[tuple, dict]:
        if self.hidden_name in kwargs:
            return args, {**kwargs, self.hidden_name: hidden}
        args = list(args)
        args[self.hidden_index] = hidden
        return tuple(args), kwargs

    def block_output(self, args: tuple, kwargs: dict, hidden: torch.Tensor) -> Any:
        """What a block call returns when the region is skipped or already done."""
        return hidden

    def output_hidden_states(self, output: Any) -> torch.Tensor:
        return _first_tensor(output)

    def passthrough_modules(self, model: torch.nn.Module) -> list[tuple[torch.nn.Module, Bypass]]:
        """Submodules the model calls between blocks that belong to the cached region (e.g. audio
        injection), each with what its call returns on a skipped step (usually its hidden-states
        argument). Their output is taken to be the new hidden states."""
        return []

    def passthrough_methods(self, model: torch.nn.Module) -> dict[str, Bypass]:
        """The same for plain methods of the model (patched on the instance while installed)."""
        return {}


class WanDiffusersAdapter(TeaCacheAdapter):
    """diffusers ``WanTransformer3DModel``: blocks called as ``block(hidden, encoder_hidden, temb, rope)``."""

    def capture_modules(self, model):
        emb = model.condition_embedder
        return {"timestep_embedding": emb.time_embedder, "timestep_proj": emb.time_proj}

    def modulated_input(self, block, args, kwargs):
        hidden = self.hidden_states(args, kwargs)
        temb = _arg(args, kwargs, 2, "temb")
        if temb.ndim == 4:  # per-token timesteps (Wan2.2 TI2V): batch, seq, 6, dim
            shift, scale = (block.scale_shift_table.unsqueeze(0) + temb.float()).chunk(6, dim=2)[:2]
            shift, scale = shift.squeeze(2), scale.squeeze(2)
        else:  # batch, 6, dim
            shift, scale = (block.scale_shift_table + temb.float()).chunk(6, dim=1)[:2]
        return block.norm1(hidden.float()) * (1 + scale) + shift


class WanOfficialAdapter(TeaCacheAdapter):
    """Models with the official Wan names: ``blocks[i](x, e=e0, ...)``, ``blocks[i].norm1``,
    ``blocks[i].modulation``, ``time_embedding``, ``time_projection``, forward ``(x, t, ...)``."""

    hidden_name = "x"
    timestep_name = "t"

    def capture_modules(self, model):
        return {"timestep_embedding": model.time_embedding, "timestep_proj": model.time_projection}

    def _shift_scale(self, block, e: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if e.ndim == 4:  # Wan2.2 code: batch, seq, 6, dim
            shift, scale = (block.modulation.unsqueeze(0) + e.float()).chunk(6, dim=2)[:2]
            return shift.squeeze(2), scale.squeeze(2)
        shift, scale = (block.modulation + e.float()).chunk(6, dim=1)[:2]  # Wan2.1 code: batch, 6, dim
        return shift, scale

    def modulated_input(self, block, args, kwargs):
        x = self.hidden_states(args, kwargs)
        shift, scale = self._shift_scale(block, _arg(args, kwargs, 1, "e"))
        return block.norm1(x).float() * (1 + scale) + shift


class WanS2VAdapter(WanOfficialAdapter):
    """The official Wan2.2 S2V layout: ``e=[e0, seg_idx]`` with two modulation segments (noisy
    tokens, then reference/motion tokens), and ``after_transformer_block(idx, x)`` (audio injection,
    in place) after every block, which belongs to the cached region."""

    region_may_modify_input = True

    def modulated_input(self, block, args, kwargs):
        x = self.hidden_states(args, kwargs)
        e0, seg = _arg(args, kwargs, 1, "e")
        seg = min(max(0, int(seg)), x.shape[1])
        shift, scale = (block.modulation.unsqueeze(2) + e0.float()).chunk(6, dim=1)[:2]
        shift, scale = shift.squeeze(1), scale.squeeze(1)  # batch, 2 segments, dim
        norm = block.norm1(x).float()
        return torch.cat(
            [
                norm[:, :seg] * (1 + scale[:, 0:1]) + shift[:, 0:1],
                norm[:, seg:] * (1 + scale[:, 1:2]) + shift[:, 1:2],
            ],
            dim=1,
        )

    def passthrough_methods(self, model):
        return {"after_transformer_block": lambda args, kwargs: _arg(args, kwargs, 1, "hidden_states")}


def default_adapter(model: torch.nn.Module) -> TeaCacheAdapter:
    """The adapter for a known transformer layout; ``TypeError`` otherwise."""
    blocks = getattr(model, "blocks", None)
    first = blocks[0] if blocks is not None and len(blocks) else None
    if first is None:
        raise TypeError(f"{type(model).__name__} has no `blocks`; pass adapter=...")
    if hasattr(model, "condition_embedder") and hasattr(first, "scale_shift_table"):
        return WanDiffusersAdapter()
    if hasattr(model, "time_projection") and hasattr(first, "modulation") and _forward_params(model)[:2] == ["x", "t"]:
        if callable(getattr(type(model), "after_transformer_block", None)):
            return WanS2VAdapter()
        return WanOfficialAdapter()
    raise TypeError(f"no TeaCache adapter for {type(model).__name__}; pass adapter=...")


def _forward_params(model: torch.nn.Module) -> list[str]:
    try:
        params = list(inspect.signature(type(model).forward).parameters)
    except (TypeError, ValueError):
        return []
    return params[1:]


# --------------------------------------------------------------------------- state


# armed: before the first block; computing: the model runs the region, its outputs are noted;
# done: the region is over for this call (skipped, or computed and its end passed).
_ARMED, _COMPUTING, _DONE = "armed", "computing", "done"


@dataclass
class ForwardCall:
    """One forward call of a cached transformer, as adapters see it.

    ``args`` / ``kwargs``: the transformer's forward arguments; ``timestep``: from
    ``TeaCacheAdapter.timestep``; ``branch``: the ``cache_context`` name or ``cond`` / ``uncond`` by
    call parity; ``captured``: indicator name -> recorded module output; ``step_index`` /
    ``num_inference_steps``: from the pipeline's ``cache_context`` when it gives them.
    """

    args: tuple
    kwargs: dict
    branch: str
    timestep: float | None
    step_index: int | None = None
    num_inference_steps: int | None = None
    captured: dict = field(default_factory=dict)
    phase: str = _ARMED
    state: Any = None
    start: torch.Tensor | None = None
    last: torch.Tensor | None = None


class _Branch:
    """Cache state of one guidance branch within one denoising loop."""

    def __init__(self) -> None:
        self.step = 0
        self.prev_indicator: torch.Tensor | None = None
        self.residual: torch.Tensor | None = None
        self.accumulated = 0.0
        self.skips_in_row = 0
        self.last_t: float | None = None
        self.shape: tuple | None = None


class _BranchStats:
    def __init__(self) -> None:
        self.computed = 0
        self.skipped = 0
        self.pattern: list[str] = []  # current / last loop: "C" computed, "S" skipped
        self.rel_l1: list[float | None] = []  # current / last loop, raw distances

    def as_dict(self) -> dict:
        return {
            "computed": self.computed,
            "skipped": self.skipped,
            "pattern": "".join(self.pattern),
            "rel_l1": list(self.rel_l1),
        }


class _ContextOnly(BaseState):
    def reset(self, *args, **kwargs) -> None:
        pass


class _Controller:
    """All TeaCache state of one transformer."""

    def __init__(self, name: str, model: torch.nn.Module, config: TeaCacheConfig, adapter: TeaCacheAdapter):
        self.name = name
        self.model = model
        self.config = config
        self.adapter = adapter
        self.kind = config.resolved_indicator
        self.num_steps = config.num_steps
        self.blocks = list(adapter.blocks(model))
        if not self.blocks:
            raise ValueError(f"{name}: no transformer blocks to cache")
        self.call: ForwardCall | None = None
        self.branches: dict[str, _Branch] = {}
        self.stats: dict[str, _BranchStats] = {}
        self.loops = 0
        self.loop_open = False
        self.group: list[_Controller] = []
        self._parity_t: float | None = None
        self._parity_n = -1
        self._patched: dict[str, tuple[bool, Any]] = {}

    # ---- lifecycle

    def reset_cache(self) -> None:
        self.branches.clear()
        self.loop_open = False
        self._parity_t, self._parity_n = None, -1

    def reset(self) -> None:
        self.reset_cache()
        self.stats.clear()
        self.loops = 0

    # ---- per forward call

    def _branch_name(self, context, t: float | None) -> str:
        if context is not None and getattr(context, "name", None):
            return str(context.name)
        # No context: the pipeline alternates cond / uncond calls at one timestep.
        if t is not None and t == self._parity_t:
            self._parity_n += 1
        else:
            self._parity_n = 0 if t is not None else self._parity_n + 1
        self._parity_t = t
        return "cond" if self._parity_n % 2 == 0 else "uncond"

    def begin(self, context, args: tuple, kwargs: dict) -> ForwardCall | None:
        for other in self.group:
            if other is not self and (other.branches or other.loop_open):
                other.reset_cache()  # its phase is over: free its residuals
        t = self.adapter.timestep(args, kwargs)
        previous = self.call
        self.call = ForwardCall(
            args=args,
            kwargs=kwargs,
            branch=self._branch_name(context, t),
            timestep=t,
            step_index=getattr(context, "step_index", None),
            num_inference_steps=getattr(context, "num_inference_steps", None),
        )
        return previous

    def end(self, previous: ForwardCall | None) -> None:
        self.call = previous

    def capture(self, kind: str, output: Any) -> None:
        if self.call is not None and self.call.phase == _ARMED and kind == self.kind:
            self.call.captured[kind] = _first_tensor(output).detach()

    @property
    def bypassing(self) -> bool:
        return self.call is not None and self.call.phase == _DONE

    def region_call(self, original: Callable, bypass: Bypass, args: tuple, kwargs: dict) -> Any:
        """A region call after the first block: handed through once the region is done, noted while
        the model computes it."""
        call = self.call
        if call is not None and call.phase == _DONE:
            return bypass(args, kwargs)
        out = original(*args, **kwargs)
        if call is not None and call.phase == _COMPUTING:
            call.last = self.adapter.output_hidden_states(out)
        return out

    def finish(self, call: ForwardCall) -> None:
        """End of a forward: a computed region leaves its residual."""
        if call.phase == _COMPUTING and call.last is not None:
            call.state.residual = (call.last - call.start).detach()
        call.phase = _DONE
        call.start = call.last = None

    # ---- the decision and the region

    def _state_for(self, call: ForwardCall, hidden: torch.Tensor) -> _Branch:
        shape = tuple(hidden.shape)
        state = self.branches.get(call.branch)
        if state is not None and state.step > 0:
            went_up = call.timestep is not None and state.last_t is not None and call.timestep > state.last_t
            if went_up or state.shape != shape:
                self.reset_cache()  # a new denoising loop
                state = None
        if not self.loop_open:
            self.loop_open = True
            self.loops += 1
            for st in self.stats.values():
                st.pattern.clear()
                st.rel_l1.clear()
        if state is None:
            state = self.branches[call.branch] = _Branch()
        state.last_t, state.shape = call.timestep, shape
        return state

    def _is_last(self, state: _Branch, call: ForwardCall) -> bool:
        if call.step_index is not None and call.num_inference_steps is not None:
            return call.step_index >= call.num_inference_steps - 1
        return self.num_steps is not None and state.step >= self.num_steps - 1

    def _decide(self, state: _Branch, call: ForwardCall, indicator: torch.Tensor) -> tuple[bool, float | None]:
        cfg = self.config
        rel = None
        prev = state.prev_indicator
        if prev is not None and prev.shape == indicator.shape:
            denom = float(prev.abs().mean())
            rel = float((indicator - prev).abs().mean()) / denom if denom > 0 else math.inf
        forced = (
            state.step < cfg.start_step
            or state.residual is None
            or rel is None
            or not math.isfinite(rel)
            or self._is_last(state, call)
            or (cfg.max_skip_steps is not None and state.skips_in_row >= cfg.max_skip_steps)
        )
        if forced:
            state.accumulated = 0.0
            return True, rel
        state.accumulated += cfg.rescale(rel)
        if state.accumulated < cfg.rel_l1_thresh:
            return False, rel
        state.accumulated = 0.0
        return True, rel

    def head(self, block: torch.nn.Module, original: Callable, args: tuple, kwargs: dict) -> Any:
        call = self.call
        if call is None or call.phase != _ARMED:
            return original(*args, **kwargs)
        adapter = self.adapter
        hidden = adapter.hidden_states(args, kwargs)
        indicator = adapter.indicator(self.kind, self.model, block, args, kwargs, call).detach().float()
        state = self._state_for(call, hidden)
        compute, rel = self._decide(state, call, indicator)
        if compute:
            call.state = state
            call.start = hidden.clone() if adapter.region_may_modify_input else hidden
            call.phase = _COMPUTING
            out = original(*args, **kwargs)
            call.last = adapter.output_hidden_states(out)
            state.skips_in_row = 0
        else:
            out = adapter.block_output(args, kwargs, hidden + state.residual)
            call.phase = _DONE
            state.skips_in_row += 1
        state.prev_indicator = indicator
        state.step += 1
        st = self.stats.setdefault(call.branch, _BranchStats())
        if compute:
            st.computed += 1
        else:
            st.skipped += 1
        st.pattern.append("C" if compute else "S")
        st.rel_l1.append(rel)
        return out

    def as_dict(self) -> dict:
        branches = {name: st.as_dict() for name, st in self.stats.items()}
        computed = sum(b["computed"] for b in branches.values())
        skipped = sum(b["skipped"] for b in branches.values())
        total = computed + skipped
        return {
            "computed": computed,
            "skipped": skipped,
            "skip_ratio": skipped / total if total else 0.0,
            "loops": self.loops,
            "indicator": self.kind,
            "branches": branches,
        }


# --------------------------------------------------------------------------- hooks


class _ModelHook(ModelHook):
    """On the transformer: one call record per forward; receives the pipeline's ``cache_context``."""

    _is_stateful = True

    def __init__(self, controller: _Controller):
        super().__init__()
        self.controller = controller
        self.context_receiver = StateManager(_ContextOnly)

    def new_forward(self, module, *args, **kwargs):
        c = self.controller
        previous = c.begin(getattr(self.context_receiver, "_context", None), args, kwargs)
        try:
            out = self.fn_ref.original_forward(*args, **kwargs)
            c.finish(c.call)
            return out
        finally:
            c.end(previous)

    def reset_state(self, module):
        self.controller.reset_cache()
        return module


class _HeadHook(ModelHook):
    def __init__(self, controller: _Controller):
        super().__init__()
        self.controller = controller

    def new_forward(self, module, *args, **kwargs):
        return self.controller.head(module, self.fn_ref.original_forward, args, kwargs)


class _RegionHook(ModelHook):
    """On the later blocks and on between-block modules of the region."""

    def __init__(self, controller: _Controller, bypass: Bypass):
        super().__init__()
        self.controller = controller
        self.bypass = bypass

    def new_forward(self, module, *args, **kwargs):
        return self.controller.region_call(self.fn_ref.original_forward, self.bypass, args, kwargs)


class _CaptureHook(ModelHook):
    def __init__(self, controller: _Controller, kind: str):
        super().__init__()
        self.controller = controller
        self.kind = kind

    def post_forward(self, module, output):
        self.controller.capture(self.kind, output)
        return output


# --------------------------------------------------------------------------- handle


class TeaCacheHandle:
    """TeaCache on one or more transformers: statistics, reset and removal."""

    def __init__(self, controllers: Mapping[str, _Controller]):
        self._controllers = dict(controllers)

    @property
    def names(self) -> list[str]:
        return list(self._controllers)

    def stats(self) -> dict[str, dict]:
        """Per transformer: ``computed``, ``skipped``, ``skip_ratio``, ``loops`` (denoising loops
        seen), ``indicator`` and ``branches`` (``cond`` / ``uncond`` / context name -> ``computed``,
        ``skipped``, and for the current or last loop ``pattern`` ("C" computed, "S" skipped, one
        letter per call) and ``rel_l1`` (raw distances, ``None`` where there was no previous call)).
        Counts add up until ``reset()``; the cache itself resets at every new denoising loop."""
        return {name: c.as_dict() for name, c in self._controllers.items()}

    def totals(self) -> tuple[int, int]:
        """(computed, skipped) over every transformer and branch."""
        s = self.stats().values()
        return sum(x["computed"] for x in s), sum(x["skipped"] for x in s)

    def summary(self) -> str:
        parts = []
        for name, s in self.stats().items():
            n = s["computed"] + s["skipped"]
            br = ", ".join(
                f"{b} {v['computed']}/{v['computed'] + v['skipped']}" for b, v in s["branches"].items()
            )
            parts.append(f"{name} {s['computed']}/{n} computed" + (f" ({br})" if br else ""))
        return "teacache: " + ("; ".join(parts) if parts else "no calls")

    def reset(self) -> None:
        """Forget cached tensors and statistics (between videos)."""
        for c in self._controllers.values():
            c.reset()

    def set_num_steps(self, num_steps: int | Mapping[str, int] | None) -> None:
        """Calls per branch in one loop, for all transformers or per name (forces the last step)."""
        for name, c in self._controllers.items():
            n = num_steps.get(name, c.num_steps) if isinstance(num_steps, Mapping) else num_steps
            if n is not None and not (isinstance(n, int) and n >= 1):
                raise ValueError(f"num_steps must be None or an integer >= 1, got {n!r}")
            c.num_steps = n

    def remove(self) -> None:
        for c in list(self._controllers.values()):
            remove_teacache(c.model)

    def __repr__(self) -> str:
        return f"TeaCacheHandle({', '.join(self.names)})"


# --------------------------------------------------------------------------- apply / remove


def _controller_of(model: torch.nn.Module) -> _Controller | None:
    registry = getattr(model, "_diffusers_hook", None)
    hook = registry.get_hook(_MODEL_HOOK) if registry is not None else None
    return hook.controller if hook is not None else None


def apply_teacache(
    transformer: torch.nn.Module,
    config: TeaCacheConfig | None = None,
    *,
    adapter: TeaCacheAdapter | None = None,
    name: str = "transformer",
) -> TeaCacheHandle:
    """Install TeaCache on ``transformer``; ``remove_teacache`` (or ``handle.remove()``) undoes it."""
    config = config if config is not None else TeaCacheConfig()
    if _controller_of(transformer) is not None:
        raise ValueError(f"TeaCache is already applied to {name}; remove_teacache() it first")
    if getattr(transformer, "_cache_config", None) is not None:
        raise ValueError(f"{name} already has a diffusers cache enabled ({type(transformer._cache_config).__name__})")
    adapter = adapter if adapter is not None else default_adapter(transformer)
    controller = _Controller(name, transformer, config, adapter)

    capture = adapter.capture_modules(transformer) if controller.kind != "modulated_input" else {}

    def through(args, kwargs):
        return adapter.block_output(args, kwargs, adapter.hidden_states(args, kwargs))

    root = HookRegistry.check_if_exists_or_initialize(transformer)
    root.register_hook(_ModelHook(controller), _MODEL_HOOK)
    try:
        if controller.kind in capture:
            reg = HookRegistry.check_if_exists_or_initialize(capture[controller.kind])
            reg.register_hook(_CaptureHook(controller, controller.kind), _CAPTURE_HOOK)
        head = HookRegistry.check_if_exists_or_initialize(controller.blocks[0])
        head.register_hook(_HeadHook(controller), _HEAD_HOOK)
        region = [(block, through) for block in controller.blocks[1:]]
        region += list(adapter.passthrough_modules(transformer))
        for module, bypass in region:
            reg = HookRegistry.check_if_exists_or_initialize(module)
            reg.register_hook(_RegionHook(controller, bypass), _BLOCK_HOOK)
        for attr, bypass in adapter.passthrough_methods(transformer).items():
            _patch_method(controller, attr, bypass)
    except Exception:
        remove_teacache(transformer)
        raise
    root.invalidate_child_registries_cache()
    return TeaCacheHandle({name: controller})


def _patch_method(controller: _Controller, attr: str, bypass: Bypass) -> None:
    model = controller.model
    original = getattr(model, attr)
    controller._patched[attr] = (attr in model.__dict__, model.__dict__.get(attr))

    def wrapper(*args, **kwargs):
        return controller.region_call(original, bypass, args, kwargs)

    object.__setattr__(model, attr, wrapper)


def remove_teacache(transformer: torch.nn.Module) -> bool:
    """Remove TeaCache from ``transformer``; ``False`` if it had none."""
    controller = _controller_of(transformer)
    if controller is None:
        return False
    root = HookRegistry.check_if_exists_or_initialize(transformer)
    for hook_name in (_MODEL_HOOK, _CAPTURE_HOOK, _HEAD_HOOK, _BLOCK_HOOK):
        root.remove_hook(hook_name, recurse=True)
    for attr, (had_own, value) in controller._patched.items():
        if had_own:
            object.__setattr__(transformer, attr, value)
        else:
            object.__delattr__(transformer, attr)
    controller._patched.clear()
    controller.reset_cache()
    for other in controller.group:
        if other is not controller:
            other.group = [g for g in other.group if g is not controller]
    controller.group = []
    root.invalidate_child_registries_cache()
    return True


_EXPERTS = ("transformer", "transformer_2")


def expert_step_counts(pipe: Any, num_inference_steps: int) -> dict[str, int]:
    """How many denoising steps each expert of a (two-expert) Wan pipeline runs, from a copy of its
    scheduler and its ``boundary_ratio`` (the split ``WanImageToVideoPipeline`` makes)."""
    scheduler = copy.deepcopy(pipe.scheduler)
    scheduler.set_timesteps(num_inference_steps, device="cpu")
    timesteps = [float(t) for t in scheduler.timesteps]
    ratio = getattr(pipe.config, "boundary_ratio", None)
    if ratio is None or getattr(pipe, "transformer_2", None) is None:
        return {"transformer": len(timesteps)}
    boundary = ratio * scheduler.config.num_train_timesteps
    high = sum(1 for t in timesteps if t >= boundary)
    return {"transformer": high, "transformer_2": len(timesteps) - high}


def apply_teacache_to_pipeline(
    pipe: Any,
    config: TeaCacheConfig | None = None,
    *,
    num_inference_steps: int | None = None,
    exclusive: bool = True,
    adapter: TeaCacheAdapter | None = None,
) -> TeaCacheHandle:
    """TeaCache on each of ``pipe.transformer`` / ``pipe.transformer_2`` that exists, each with its
    own state. ``num_inference_steps`` sets each expert's step count (see ``expert_step_counts``);
    call ``handle.set_num_steps(expert_step_counts(pipe, n))`` when it changes. ``exclusive``: when
    one expert is called, the other's cached tensors are dropped (its phase is over)."""
    config = config if config is not None else TeaCacheConfig()
    models = [(n, getattr(pipe, n, None)) for n in _EXPERTS]
    models = [(n, m) for n, m in models if m is not None]
    if not models:
        raise ValueError("the pipeline has no transformer")
    handles: dict[str, _Controller] = {}
    try:
        for n, m in models:
            handles.update(apply_teacache(m, config, adapter=adapter, name=n)._controllers)
    except Exception:
        for c in handles.values():
            remove_teacache(c.model)
        raise
    if exclusive and len(handles) > 1:
        group = list(handles.values())
        for c in group:
            c.group = group
    handle = TeaCacheHandle(handles)
    if num_inference_steps is not None:
        handle.set_num_steps(expert_step_counts(pipe, num_inference_steps))
    return handle
