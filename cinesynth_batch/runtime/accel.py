"""Speed paths for the Wan transformers: attention kernel, regional compile, fp8, offload.

``SpeedSettings`` is what a stage asks for; ``prepare_transformer(model, settings, device)`` applies
it to one transformer and returns a report of what was used (recorded in the render manifest).

``attention``  see ``runtime/attention.py`` (``auto``: FA3 > cuDNN on CUDA, SDPA elsewhere).
``compile``    ``auto`` / ``on`` / ``off``: regional ``torch.compile`` of the repeated transformer
               blocks' forwards (``fullgraph=True``; hooks such as TeaCache or offloading wrap
               the compiled forward and stay eager). Each distinct input shape compiles once per process
               (about 15 s for a 40-block A14B expert), after which a 480p step takes ~15 % less
               time. ``auto`` compiles on CUDA when Triton imports and never on the CPU (compiling
               costs more there than a tiny render takes).
``quantize``   ``None``, ``fp8`` or ``fp8_e4m3fn``. ``fp8`` (fp8 *compute*): the Linear layers inside
               the transformer blocks compute in float8 e4m3 with per-row scales for weights and
               activations (torchao ``Float8DynamicActivationFloat8WeightConfig(PerRow)``); CUDA with
               compute capability >= 8.9 only. ``fp8_e4m3fn`` (fp8 *storage*, see
               ``runtime/memory.py``): the transformer's weights are stored as float8 and each layer
               computes in the model's dtype (diffusers' layerwise casting); it runs wherever torch
               has the float8 dtype, and runs eager (its per-layer casts cannot be compiled into
               one graph). Both are lossy and opt-in.
``offload``    ``None`` or ``blocks``: every transformer block is offloaded (``runtime/memory.py``
               ``offload_blocks``: pinned host RAM, one block copied in while the previous one
               computes), so a 14B expert runs in a few GiB of VRAM. The stages set it when a
               pipeline does not fit the VRAM budget, even with the components it can move
               itself off the device (the video stage: the text encoder and one expert,
               ``runtime/placement.py``).
``block_swap`` ``N``: the first ``N`` blocks of each transformer are offloaded that way, the others
               stay on the device (the same function); not keyed (exact). CUDA only.

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
from typing import Any, Callable, get_args

from ..errors import FallbackWarning
from ..errors import StageError
from ..spec.params import WanSpeed, check
from ..spec.rules import WanQuantize
from .attention import LOSSY, resolve_attention, set_attention

FP8_COMPUTE, FP8_STORAGE = get_args(WanQuantize)          # "fp8" (torchao compute), "fp8_e4m3fn" (storage)
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
    block_swap: int = 0

    def __post_init__(self) -> None:
        """The stage params' own rules (``spec/params.py``'s ``WanSpeed``); ``offload`` is set by
        the renderer, not by a spec."""
        check(WanSpeed, {"attention": self.attention, "compile": self.compile, "quantize": self.quantize,
                         "block_swap": self.block_swap}, "speed")
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


def triton_ok() -> tuple[bool, str]:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False, "Triton is not installed"
    return True, ""


def fp8_ok(device: str) -> tuple[bool, str]:
    if not str(device).startswith("cuda"):
        return False, f"fp8 compute runs on CUDA devices only, this run is on {device}"
    import torch

    if torch.cuda.get_device_capability(torch.device(device)) < (8, 9):
        return False, "fp8 matrix products need compute capability 8.9 or newer"
    try:
        import torchao  # noqa: F401
    except ImportError:
        return False, "the torchao package is not installed"
    return True, ""


def fp8_storage_ok() -> tuple[bool, str]:
    """Whether this torch stores fp8 weights (every torch this project installs does: 2.1 and later)."""
    import torch

    if not hasattr(torch, "float8_e4m3fn"):  # pragma: no cover
        return False, "this torch has no float8_e4m3fn dtype"
    return True, ""


def _resolve_quantize(quantize: str | None, device: str, dtype: Any) -> tuple[str | None, str]:
    """The quantization that runs here for ``quantize``, and the reason when it falls back."""
    name = str(dtype).replace("torch.", "")
    if quantize == FP8_COMPUTE:
        ok, why = fp8_ok(device)
        if not ok:
            return None, f"quantize='fp8': {why}; computing in {name}"
    return quantize, ""             # fp8 storage runs on any device (fp8_storage_ok)


def resolve(settings: SpeedSettings, device: str, dtype: Any,
            head_dim: int | None = None) -> tuple[dict[str, Any], list[str]]:
    """What runs for ``settings`` here: a dict of used values, and one reason per fallback."""
    cuda = str(device).startswith("cuda")
    reasons: list[str] = []
    attention = resolve_attention(settings.attention, device, dtype, head_dim)
    if attention.reason:
        reasons.append(f"attention={settings.attention!r}: {attention.reason}")
    quantize, quantize_reason = _resolve_quantize(settings.quantize, device, dtype)
    compile_on = False
    if settings.compile == "on" or (settings.compile == "auto" and cuda):
        ok, why = triton_ok() if cuda else (False, "compiling for the CPU costs more than it saves here")
        if ok and quantize == FP8_STORAGE:
            ok, why = False, "fp8 storage casts each layer in a hook that cannot be compiled into one graph"
        if ok:
            compile_on = True
        elif settings.compile == "on":
            reasons.append(f"compile='on': {why}; running eager")
    if quantize_reason:
        reasons.append(quantize_reason)
    offload = settings.offload
    if offload and not cuda:
        reasons.append(f"offload={offload!r}: offloading streams blocks to a CUDA device; on {device} "
                       "every block is in RAM already")
        offload = None
    block_swap = settings.block_swap
    if block_swap and not cuda:
        reasons.append(f"block_swap={block_swap}: block swap streams blocks from RAM to a CUDA device; on {device} "
                       "every block is in RAM already; using no swap")
        block_swap = 0
    used = {"attention": attention.used, "attention_backend": attention.backend, "compile": compile_on,
            "quantize": quantize, "offload": offload,
            "block_swap": block_swap}
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
    except StageError:
        return params          # the stage refuses these params itself, with its own message
    cuda = str(device).startswith("cuda")           # only a CUDA kernel's choice needs the torch dtype
    used, _ = resolve(settings, device, torch_dtype(dtype) if cuda else dtype)
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
    if used["quantize"] == FP8_COMPUTE:
        used["fp8_layers"] = quantize_fp8(model)
    elif used["quantize"] == FP8_STORAGE:
        from .memory import store_fp8

        stored = store_fp8(model, dtype)
        used["fp8_layers"], used["fp8_bytes_saved"] = stored.layers, stored.bytes_saved
    used["attention_processors"] = set_attention(model, used["attention"])
    if not used["attention_processors"]:       # the model calls torch SDPA itself
        used["attention"], used["attention_backend"] = "sdpa", "native"
    if used["compile"]:
        used["compiled_blocks"] = compile_blocks(model)
    if used["offload"] or used["block_swap"]:
        from .memory import offload_blocks

        done = offload_blocks(model, device, None if used["offload"] else used["block_swap"])
        used["offloaded_blocks"] = done.count
    report = {"requested": asdict(settings), **used, "fallbacks": reasons}
    setattr(model, _APPLIED_ATTR, {"settings": settings, "report": report})
    return report


_PIPE_OFFLOAD_ATTR = "_cinesynth_group_offload"
TRANSFORMERS = ("transformer", "transformer_2")


def prepare_pipeline(pipe: Any, settings: SpeedSettings, device: str, over_budget: bool = False,
                     warn: bool = True) -> dict[str, Any]:
    """``prepare_transformer`` on each of the pipeline's transformers; when the pipeline does not
    fit the VRAM budget (``over_budget``, on CUDA), every block of its transformers is offloaded
    (``runtime/memory.py`` ``offload_blocks``) and so is each other component of a diffusers
    pipeline (text and image encoders, VAE: diffusers' block-level group offloading, as its
    ``enable_group_offload`` does). Returns
    ``{component: report}`` plus ``offload``."""
    from .memory import drop_offload, offload_blocks, offloaded

    offload = bool(over_budget and str(device).startswith("cuda"))
    reports: dict[str, Any] = {}
    for name in TRANSFORMERS:
        model = getattr(pipe, name, None)
        if model is not None:
            reports[name] = prepare_transformer(model, settings, device, label=name, warn=warn)
    if offload and not getattr(pipe, _PIPE_OFFLOAD_ATTR, False):
        from diffusers import DiffusionPipeline

        if isinstance(pipe, DiffusionPipeline):
            components = pipe.components
        else:                               # our S2V pipeline: its transformer
            components = {name: getattr(pipe, name, None) for name in TRANSFORMERS}
        for name, module in components.items():
            if not _is_module(module):
                continue
            done = offloaded(module)
            if done is not None and not done.delegated and done.count < done.total:
                drop_offload(module)          # a block swap of some blocks becomes all of them
            elif done is not None:
                continue
            offload_blocks(module, device)
            if name in reports:
                reports[name]["offloaded_blocks"] = offloaded(module).count
        setattr(pipe, _PIPE_OFFLOAD_ATTR, True)
    reports["offload"] = "blocks" if getattr(pipe, _PIPE_OFFLOAD_ATTR, False) else None
    return reports


def _is_module(value: Any) -> bool:
    import torch

    return isinstance(value, torch.nn.Module)


def settings_from_params(params: dict[str, Any]) -> SpeedSettings:
    return SpeedSettings(attention=params.get("attention") or "auto", compile=params.get("compile") or "auto",
                         quantize=params.get("quantize"), block_swap=params.get("block_swap") or 0)


def prepared_pipeline(ctx: Any, role: str, params: dict[str, Any],
                      need: Callable[[Any], int] | None = None) -> tuple[Any, dict[str, Any]]:
    """The stage's pipeline with ``params``' speed options applied (reloaded when an earlier stage of
    this render prepared it otherwise), and the report for the manifest. Its blocks are offloaded
    when it needs more than the VRAM budget: ``need(pipe)`` bytes (the fewest its stage can run in
    by moving components itself, ``runtime/placement.py``), else its whole size, and always when
    its loader kept it in host RAM to stream (``loaded_to_stream``)."""
    from .placement import loaded_to_stream
    from .swap import model_nbytes

    settings = settings_from_params(params)
    pipe = ctx.models.get(role)
    budget = getattr(ctx.models, "budget", None)

    def over(pipe: Any) -> bool:
        return (budget is not None and (need or model_nbytes)(pipe) > budget) or loaded_to_stream(pipe)

    try:
        return pipe, prepare_pipeline(pipe, settings, ctx.device, over_budget=over(pipe))
    except RuntimeError as exc:
        if "was prepared with" not in str(exc) or not hasattr(ctx.models, "reload"):
            raise
    pipe = ctx.models.reload(role)
    return pipe, prepare_pipeline(pipe, settings, ctx.device, over_budget=over(pipe))
