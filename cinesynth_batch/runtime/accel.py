"""Speed paths for the Wan transformers: attention kernel, regional compile, fp8 compute, offload.

``SpeedSettings`` is what a stage asks for; ``prepare_transformer(model, settings, device)`` applies
it to one transformer and returns a report of what was used (recorded in the render manifest).

``attention``  see ``runtime/attention.py`` (``auto``: FA3 > cuDNN on CUDA, SDPA elsewhere).
``compile``    ``auto`` / ``on`` / ``off``: regional ``torch.compile`` of the repeated transformer
               blocks' forwards (``fullgraph=True``; hooks such as TeaCache or offloading wrap
               the compiled forward and stay eager). Each distinct input shape compiles once per process
               (about 15 s for a 40-block A14B expert), after which a 480p step takes ~15 % less
               time. ``auto`` compiles on CUDA when Triton imports and never on the CPU (compiling
               costs more there than a tiny render takes).
``quantize``   ``None`` or ``fp8``: the Linear layers inside the transformer blocks compute in
               float8 e4m3 with per-row scales for weights and activations (torchao
               ``Float8DynamicActivationFloat8WeightConfig(PerRow)``); lossy, opt-in, CUDA
               with compute capability >= 8.9 only. ``fp8_e4m3fn`` (fp8 *storage*, bf16 compute) is
               the Animate stage's own setting.
``offload``    ``None`` or ``blocks``: block-level group offloading with a prefetch stream
               (diffusers ``enable_group_offload``): each block is copied from pinned host RAM
               while the previous one computes, so a 14B expert runs in a few GiB of VRAM.

Settings that cannot run on this machine fall back to the nearest exact alternative with a
``SpeedFallbackWarning`` naming the setting and the reason.

Keys name what ran: the output-changing settings (``quantize``, a lossy ``attention``) are part of a
stage's key, and ``keyed_speed(params, device, dtype)`` gives the key's params with those settings
as ``resolve`` will decide them here (a setting that falls back leaves the key). The executor keys
a run on that; the stage checks with ``check_keyed`` that what its transformers used is what the
key names, and refuses to store its output otherwise.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass
from typing import Any

from ..errors import FallbackWarning
from ..errors import StageError
from .attention import LOSSY, NAMES as ATTENTION_NAMES, resolve_attention, set_attention

COMPILE_MODES = ("auto", "on", "off")
QUANTIZE_MODES = (None, "fp8")
OFFLOAD_MODES = (None, "blocks")
_APPLIED_ATTR = "_cinesynth_speed"


class SpeedFallbackWarning(FallbackWarning):
    """A requested speed setting cannot be used here; a stated alternative is used."""


@dataclass(frozen=True)
class SpeedSettings:
    attention: str = "auto"
    compile: str = "auto"
    quantize: str | None = None
    offload: str | None = None

    def __post_init__(self) -> None:
        if self.attention not in ATTENTION_NAMES:
            raise ValueError(f"attention must be one of {', '.join(ATTENTION_NAMES)}, got {self.attention!r}")
        if self.compile not in COMPILE_MODES:
            raise ValueError(f"compile must be one of {', '.join(COMPILE_MODES)}, got {self.compile!r}")
        if self.quantize not in QUANTIZE_MODES:
            raise ValueError(f"quantize must be null or 'fp8', got {self.quantize!r}")
        if self.offload not in OFFLOAD_MODES:
            raise ValueError(f"offload must be null or 'blocks', got {self.offload!r}")

    @property
    def lossless(self) -> bool:
        return self.quantize is None and self.attention not in LOSSY


def _compute_dtype(model: Any):
    import torch

    for p in model.parameters():
        if p.is_floating_point() and p.dtype != torch.float32:
            return p.dtype
    return torch.float32


def _triton_ok() -> tuple[bool, str]:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False, "Triton is not installed"
    return True, ""


def _fp8_ok(device: str) -> tuple[bool, str]:
    import torch

    if not str(device).startswith("cuda"):
        return False, f"fp8 compute runs on CUDA devices only, this run is on {device}"
    if torch.cuda.get_device_capability(torch.device(device)) < (8, 9):
        return False, "fp8 matrix products need compute capability 8.9 or newer"
    try:
        import torchao  # noqa: F401
    except ImportError:
        return False, "the torchao package is not installed"
    return True, ""


def resolve(settings: SpeedSettings, device: str, dtype: Any,
            head_dim: int | None = None) -> tuple[dict[str, Any], list[str]]:
    """What runs for ``settings`` here: a dict of used values, and one reason per fallback."""
    cuda = str(device).startswith("cuda")
    reasons: list[str] = []
    attention = resolve_attention(settings.attention, device, dtype, head_dim)
    if attention.reason:
        reasons.append(f"attention={settings.attention!r}: {attention.reason}")
    compile_on = False
    if settings.compile == "on" or (settings.compile == "auto" and cuda):
        ok, why = _triton_ok() if cuda else (False, "compiling for the CPU costs more than it saves here")
        if ok:
            compile_on = True
        elif settings.compile == "on":
            reasons.append(f"compile='on': {why}; running eager")
    quantize = settings.quantize
    if quantize == "fp8":
        ok, why = _fp8_ok(device)
        if not ok:
            reasons.append(f"quantize='fp8': {why}; computing in {str(dtype).replace('torch.', '')}")
            quantize = None
    offload = settings.offload
    if offload and not cuda:
        reasons.append(f"offload={offload!r}: offloading streams blocks to a CUDA device; on {device} "
                       "every block is in RAM already")
        offload = None
    used = {"attention": attention.used, "attention_backend": attention.backend, "compile": compile_on,
            "quantize": quantize, "offload": offload}
    return used, reasons


def lossy_used(used: dict[str, Any]) -> dict[str, Any]:
    """The output-changing part of a ``resolve`` result (or a ``prepare_transformer`` report): the
    keyed settings it runs with, absent when exact."""
    out: dict[str, Any] = {}
    if used.get("quantize"):
        out["quantize"] = used["quantize"]
    if used.get("attention") in LOSSY:
        out["attention"] = used["attention"]
    return out


def keyed_speed(params: dict[str, Any], device: str, dtype: Any) -> dict[str, Any]:
    """``params`` (a stage's keyed params) with its output-changing speed settings as this machine
    will run them, decided by ``resolve``: a setting that falls back leaves the key, so the key
    names what runs. Params without such a setting come back unchanged (and nothing is imported)."""
    if not params.get("quantize") and params.get("attention") not in LOSSY:
        return params
    from .dtypes import torch_dtype

    try:
        settings = SpeedSettings(attention=params.get("attention") or "auto", quantize=params.get("quantize"),
                                 compile="off")
    except ValueError:
        return params          # the stage refuses these params itself, with its own message
    used, _ = resolve(settings, device, torch_dtype(dtype))
    out = {k: v for k, v in params.items() if k not in ("quantize", "attention")}
    return {**out, **lossy_used(used)}


def check_keyed(stage: str, keyed: dict[str, Any], reports: dict[str, Any]) -> None:
    """Raise unless every transformer ran with the output-changing settings ``keyed`` names (the
    key's params for this machine): a run that differs must not be stored under that key."""
    wanted = lossy_used(keyed)
    for name, report in reports.items():
        if not isinstance(report, dict) or "quantize" not in report:
            continue
        ran = lossy_used(report)
        if ran != wanted:
            raise StageError(f"{stage}: {name} ran with {ran or 'exact settings'} but the key names "
                             f"{wanted or 'exact settings'}; the output is not stored",
                             hint="the model runs in another dtype or on another device than the render was keyed for: "
                             "pass --dtype/--device matching the model, or drop the setting from the spec")


def fp8_filter(module: Any, fqn: str) -> bool:
    """Linear layers inside the repeated blocks (attention projections, FFN); not the embeddings,
    the modulation tables or the output head, which are small and sensitive."""
    import torch

    return isinstance(module, torch.nn.Linear) and fqn.startswith("blocks.") and module.in_features % 16 == 0 \
        and module.out_features % 16 == 0


def quantize_fp8(model: Any) -> int:
    """Swap the blocks' Linear weights for torchao float8 (per-row) tensors; returns the layer count."""
    from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, quantize_

    count = sum(1 for name, mod in model.named_modules() if fp8_filter(mod, name))
    quantize_(model, Float8DynamicActivationFloat8WeightConfig(granularity=PerRow()), filter_fn=fp8_filter)
    return count


_EAGER_FORWARD = "_cinesynth_eager_forward"


def repeated_blocks(model: Any) -> list:
    names = tuple(getattr(model, "_repeated_blocks", None) or ())
    return [m for m in model.modules() if m.__class__.__name__ in names] if names else list(model.blocks)


def compile_blocks(model: Any, fullgraph: bool = True, backend: str = "inductor") -> int:
    """Regional compile: each repeated block's ``forward`` is replaced by its compiled version
    (one graph shared by all blocks of a class). Hooks registered afterwards (step caching,
    offloading) wrap the compiled forward and stay eager. Returns the block count."""
    import torch

    blocks = repeated_blocks(model)
    for block in blocks:
        eager = block.__dict__.get(_EAGER_FORWARD) or block.forward
        block.__dict__[_EAGER_FORWARD] = eager
        block.forward = torch.compile(eager, fullgraph=fullgraph, dynamic=False, backend=backend)
    return len(blocks)


def uncompile_blocks(model: Any) -> None:
    """Put the eager forwards back (hooks must be removed first)."""
    for block in repeated_blocks(model):
        eager = block.__dict__.pop(_EAGER_FORWARD, None)
        if eager is None:
            continue
        if getattr(eager, "__func__", None) is type(block).forward:
            block.__dict__.pop("forward", None)      # back to the class's own method
        else:
            block.forward = eager


def offload_blocks(model: Any, device: str) -> None:
    """Block-level group offloading with a copy stream: weights in pinned RAM, one block on the
    device at a time (plus the one being prefetched)."""
    import torch

    model.enable_group_offload(onload_device=torch.device(device), offload_device=torch.device("cpu"),
                               offload_type="block_level", num_blocks_per_group=1, use_stream=True,
                               record_stream=True, low_cpu_mem_usage=False)


def prepare_transformer(model: Any, settings: SpeedSettings, device: str, label: str = "transformer",
                        warn: bool = True) -> dict[str, Any]:
    """Apply ``settings`` to ``model`` (once: a model prepared with other settings is refused, the
    caller reloads it). Returns the report of what is used."""
    previous = getattr(model, _APPLIED_ATTR, None)
    if previous is not None:
        if previous["settings"] != settings:
            raise RuntimeError(f"{label} was prepared with {previous['settings']}, not {settings}")
        return previous["report"]
    dtype = _compute_dtype(model)
    config = getattr(model, "config", None)
    head_dim = getattr(config, "attention_head_dim", None) if config is not None else None
    used, reasons = resolve(settings, device, dtype, head_dim if isinstance(head_dim, int) else None)
    if warn:
        for reason in reasons:
            warnings.warn(f"{label}: {reason}", SpeedFallbackWarning, stacklevel=2)
    if used["quantize"] == "fp8":
        used["fp8_layers"] = quantize_fp8(model)
    used["attention_processors"] = set_attention(model, used["attention"])
    if not used["attention_processors"]:       # the model calls torch SDPA itself
        used["attention"], used["attention_backend"] = "sdpa", "native"
    if used["compile"]:
        used["compiled_blocks"] = compile_blocks(model)
    if used["offload"]:
        offload_blocks(model, device)
    report = {"requested": asdict(settings), **used, "fallbacks": reasons}
    setattr(model, _APPLIED_ATTR, {"settings": settings, "report": report})
    return report


_PIPE_OFFLOAD_ATTR = "_cinesynth_group_offload"


def prepare_pipeline(pipe: Any, settings: SpeedSettings, device: str, over_budget: bool = False,
                     warn: bool = True) -> dict[str, Any]:
    """``prepare_transformer`` on each of the pipeline's transformers; when the pipeline does not
    fit the VRAM budget (``over_budget``, on CUDA), every component is group-offloaded block by
    block with a prefetch stream. Returns ``{component: report}`` plus ``offload``."""
    import torch

    offload = bool(over_budget and str(device).startswith("cuda"))
    reports: dict[str, Any] = {}
    for name in ("transformer", "transformer_2"):
        model = getattr(pipe, name, None)
        if model is not None:
            reports[name] = prepare_transformer(model, settings, device, label=name, warn=warn)
    if offload and not getattr(pipe, _PIPE_OFFLOAD_ATTR, False):
        if hasattr(pipe, "enable_group_offload"):
            pipe.enable_group_offload(onload_device=torch.device(device), offload_device=torch.device("cpu"),
                                      offload_type="block_level", num_blocks_per_group=1, use_stream=True,
                                      record_stream=True, low_cpu_mem_usage=False)
        else:
            for name in ("transformer", "transformer_2"):
                if getattr(pipe, name, None) is not None:
                    getattr(pipe, name).to("cpu")
                    offload_blocks(getattr(pipe, name), device)
        setattr(pipe, _PIPE_OFFLOAD_ATTR, True)
    reports["offload"] = "blocks" if getattr(pipe, _PIPE_OFFLOAD_ATTR, False) else None
    return reports


def settings_from_params(params: dict[str, Any]) -> SpeedSettings:
    return SpeedSettings(attention=params.get("attention") or "auto", compile=params.get("compile") or "auto",
                         quantize=params.get("quantize"))


def prepared_pipeline(ctx: Any, role: str, params: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """The stage's pipeline with ``params``' speed options applied (reloaded when an earlier stage of
    this render prepared it otherwise), and the report for the manifest."""
    from .swap import model_nbytes

    settings = settings_from_params(params)
    pipe = ctx.models.get(role)
    budget = getattr(ctx.models, "budget", None)
    over = budget is not None and model_nbytes(pipe) > budget
    try:
        return pipe, prepare_pipeline(pipe, settings, ctx.device, over_budget=over)
    except RuntimeError as exc:
        if "was prepared with" not in str(exc) or not hasattr(ctx.models, "reload"):
            raise
    pipe = ctx.models.reload(role)
    return pipe, prepare_pipeline(pipe, settings, ctx.device, over_budget=over)
