"""Which components of a pipeline sit on the GPU, and when they move.

Inside one stage run, a component that is not computing need not hold GPU memory:

* the text encoder (UMT5; Qwen3 as below) is on the device only while the prompts are encoded;
  it leaves for pinned host RAM right after and comes back when the next run encodes again;
* a pipeline with one transformer (FLUX.2-klein) keeps every component on the device, the text
  encoder too, when they fit its budget together (faster: nothing moves, where copying the text
  encoder back for the next prompt costs about as much as a still's few steps; a still's
  activations are small beside a video's); when they do not, the transformer waits in pinned
  host RAM while the prompts are encoded and comes back before the first step, and the text
  encoder leaves after encoding;
* the two Wan2.2 experts (``transformer`` for the high-noise steps, ``transformer_2`` for the
  low-noise ones) both stay on the device when they fit its budget together (faster: nothing
  moves); when they do not, the idle one waits in pinned host RAM: ``transformer_2`` until the
  boundary step, ``transformer`` from then on (and both while the prompts are encoded, when the
  first one and the text encoder do not fit together).

``plan_placement`` decides the moves from sizes, the budget and where each component is now; it
is pure (no torch), so the choice is tested with made-up sizes. The stages carry the moves out
through ``runtime/swap.py`` (``swap_component``: pinned host copies, moved at copy speed) and
record each one in their facts (``placement.moves``). On the CPU every component is in RAM
already, and a pipeline whose blocks are offloaded streams them from pinned RAM already: no moves.

``host_at_load`` says which components a loader puts in pinned host RAM rather than on the device
(the text encoder of a pipeline that does not fit its budget whole), so that the device never
holds the text encoder and the transformer together; ``place_loaded`` puts them there.

A video or lip-sync pipeline that needs more device memory than its budget (``device_need``)
runs with every transformer block streamed from pinned RAM (``runtime/accel.py``
``prepared_pipeline``). ``stream_at_load`` tells its loader so: the blocks are never put on the
device whole, only in host RAM, where the stage's offloading pins them (``streamed_components``:
what stays in host RAM for it, and what waits in pinned RAM for the stage to bring in).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence, Union

TEXT_ENCODER = "text_encoder"
#: Model kinds whose stage streams every transformer block from pinned RAM when the pipeline needs
#: more device memory than its budget.
STREAMED_KINDS = ("wan-i2v", "wan-s2v")
_STREAMED_ATTR = "_cinesynth_loaded_to_stream"
EXPERTS = ("transformer", "transformer_2")
ONE_TRANSFORMER = ("transformer",)
HOST, DEVICE = "host", "device"

# when a move happens: "encode" (before the prompts are encoded), "encoded" (right after), or an
# int i: before denoising step i (0: before the first step)
At = Union[str, int]


@dataclass(frozen=True)
class Move:
    at: At
    component: str
    to: str                      # HOST or DEVICE


@dataclass(frozen=True)
class PlacementPlan:
    moves: tuple[Move, ...] = ()
    swap_experts: bool = False
    reasons: tuple[str, ...] = ()   # why a component does not move

    def at(self, when: At) -> list[Move]:
        return [m for m in self.moves if m.at == when]


def step_experts(timesteps: Sequence[float], boundary_timestep: float | None) -> list[str]:
    """The expert each denoising step uses, as ``WanImageToVideoPipeline`` picks it: ``transformer``
    for ``t >= boundary_timestep`` (every step when there is no boundary), else ``transformer_2``."""
    return [EXPERTS[0] if boundary_timestep is None or float(t) >= boundary_timestep else EXPERTS[1]
            for t in timesteps]


def least_device_bytes(sizes: dict[str, int], experts: Sequence[str] = EXPERTS) -> int:
    """The fewest bytes the pipeline needs on the device with this placement: every other component,
    plus the largest of the text encoder and the experts (one of them is on the device at a time)."""
    movable = [TEXT_ENCODER, *experts]
    rest = sum(size for name, size in sizes.items() if name not in movable)
    return rest + max([sizes.get(name, 0) for name in movable], default=0)


def experts_fit(sizes: dict[str, int], available: int | None, experts: Sequence[str] = EXPERTS) -> bool:
    """Whether both experts fit ``available`` device bytes together with every component but the
    text encoder (which leaves after encoding). ``None``: no budget, they fit."""
    if available is None:
        return True
    return sum(size for name, size in sizes.items() if name != TEXT_ENCODER) <= available


def plan_placement(*, cuda: bool, sizes: dict[str, int], where: dict[str, str], available: int | None,
                   steps: Sequence[str] = (), experts: Sequence[str] = EXPERTS,
                   encoder_offloaded: bool = False, experts_streamed: bool = False) -> PlacementPlan:
    """The moves of one run. ``sizes``: bytes per component; ``where``: ``"host"``/``"device"`` per
    component now; ``available``: device bytes this pipeline may hold (``None``: no budget);
    ``steps``: the expert each denoising step uses (``step_experts``); ``experts``: the pipeline's
    experts (``ONE_TRANSFORMER`` for a pipeline whose one transformer may wait on the host while the
    prompts are encoded; none for one that keeps it on the device); ``encoder_offloaded``: the text encoder streams
    from pinned RAM already (block offload); ``experts_streamed``: some expert blocks do."""
    if not cuda:
        return PlacementPlan(reasons=("on the CPU every component is in RAM already",))
    state = dict(where)
    moves: list[Move] = []
    reasons: list[str] = []

    def move(at: At, component: str, to: str) -> None:
        if component in state and state[component] != to:
            moves.append(Move(at, component, to))
            state[component] = to

    present = [e for e in experts if e in sizes]
    used = [e for e in dict.fromkeys(steps) if e in present]
    swap = False
    keep_encoder = False
    if len(present) == 1 and TEXT_ENCODER in sizes and not encoder_offloaded and not experts_streamed:
        if available is None or sum(sizes.values()) <= available:
            reasons.append("the transformer and the text encoder fit the device budget together: "
                           "they stay on the device")
            keep_encoder = True
        else:                           # it waits on the host while the prompts are encoded
            move("encode", present[0], HOST)
    if len(present) > 1:
        if experts_streamed:
            reasons.append("the experts' blocks stream from pinned RAM already (block offload)")
        elif experts_fit(sizes, available, present):
            reasons.append("both experts fit the device budget: they stay on the device")
        else:
            swap = bool(used)
    if swap:
        rest = sum(size for name, size in sizes.items() if name not in (TEXT_ENCODER, *present))
        with_encoder = available is not None and rest + sizes.get(TEXT_ENCODER, 0) + sizes[used[0]] > available
        for name in present:            # the first expert waits too when it cannot share with the encoder
            if name != used[0] or (with_encoder and not encoder_offloaded and TEXT_ENCODER in sizes):
                move("encode", name, HOST)
    if TEXT_ENCODER in sizes:
        if encoder_offloaded:
            reasons.append("the text encoder streams from pinned RAM already (block offload)")
        else:
            move("encode", TEXT_ENCODER, DEVICE)
            if not keep_encoder:
                move("encoded", TEXT_ENCODER, HOST)
    if swap:
        move(0, steps[0], DEVICE)
        for i in range(1, len(steps)):
            if steps[i] != steps[i - 1]:
                move(i, steps[i - 1], HOST)
                move(i, steps[i], DEVICE)
    elif not experts_streamed:
        for name in present:            # one parked by an earlier run under another budget
            move(0, name, DEVICE)
    return PlacementPlan(tuple(moves), swap, tuple(reasons))


def host_at_load(sizes: dict[str, int], available: int | None, *, cuda: bool) -> tuple[str, ...]:
    """The components to load into pinned host RAM rather than onto the device: the text encoder
    of a pipeline that does not fit ``available`` device bytes whole (it comes to the device only
    to encode, ``plan_placement``). None off CUDA or without a budget."""
    if not cuda or available is None or TEXT_ENCODER not in sizes or sum(sizes.values()) <= available:
        return ()
    return (TEXT_ENCODER,)


def device_need(kind: str, sizes: dict[str, int]) -> int:
    """The device bytes a pipeline of ``kind`` needs to run without streaming its blocks: the video
    stage moves its text encoder and experts in turn (``least_device_bytes``); the lip-sync
    pipeline holds every component."""
    return least_device_bytes(sizes) if kind == "wan-i2v" else sum(sizes.values())


def stream_at_load(kind: str, sizes: dict[str, int], available: int | None, *, cuda: bool) -> bool:
    """Whether the loader keeps a pipeline of ``kind`` and these ``sizes`` off the device: its stage
    will stream every block from pinned RAM since it needs more than ``available`` device bytes."""
    return cuda and available is not None and kind in STREAMED_KINDS and device_need(kind, sizes) > available


def streamed_components(kind: str, names: Sequence[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(components left in host RAM for the stage's block offloading, components sent to pinned
    host RAM for the stage to bring in) of a ``kind`` pipeline loaded to stream. The video stage
    offloads every component of its diffusers pipeline; the lip-sync stage streams the
    transformer's blocks and moves the text encoder in only to encode; the rest goes to the device."""
    if kind == "wan-i2v":
        return tuple(names), ()
    return (tuple(n for n in names if n in EXPERTS),
            tuple(n for n in names if n == TEXT_ENCODER))


def loaded_to_stream(pipe) -> bool:
    """Whether ``pipe`` was loaded to stream its blocks (``place_loaded`` with ``stay``)."""
    return bool(getattr(pipe, _STREAMED_ATTR, False))


@dataclass
class MoveLog:
    """The moves a run made, for its facts: ``[{"component", "to", "bytes", "at"}, ...]``."""

    moves: list[dict] = field(default_factory=list)

    def add(self, move: Move, nbytes: int) -> None:
        self.moves.append({"component": move.component, "to": move.to, "bytes": int(nbytes), "at": move.at})

    def facts(self, plan: PlacementPlan) -> dict:
        out: dict = {"moves": self.moves, "swap_experts": plan.swap_experts,
                     "bytes_moved": sum(m["bytes"] for m in self.moves)}
        if plan.reasons:
            out["kept"] = list(plan.reasons)
        return out


# --------------------------------------------------------------------------- carrying a plan out


def components_of(pipe) -> dict[str, object]:
    """The pipeline's torch modules by name (``pipe.components``)."""
    import torch

    return {name: module for name, module in (getattr(pipe, "components", None) or {}).items()
            if isinstance(module, torch.nn.Module)}


def component_sizes(pipe) -> dict[str, int]:
    from .swap import model_nbytes

    return {name: model_nbytes(module) for name, module in components_of(pipe).items()}


def component_places(pipe) -> dict[str, str]:
    """``"device"`` for a component whose first tensor is off the CPU, else ``"host"``."""
    out = {}
    for name, module in components_of(pipe).items():
        first = next(iter(module.parameters()), None)
        out[name] = DEVICE if first is not None and first.device.type not in ("cpu", "meta") else HOST
    return out


def place_loaded(pipe, device: str, on_host: Sequence[str] = (), stay: Sequence[str] = ()):
    """Put a loaded pipeline's components on ``device``, but those named in ``on_host``, which go
    to pinned host RAM through the pipeline's pinned copy (``swap_component``: they stay there when
    the whole pipeline comes back to the device, until a stage moves them by name), and those named
    in ``stay``, left in host RAM for the stage to stream (the pipeline is marked so:
    ``loaded_to_stream``)."""
    from .swap import move_model, swap_component

    if stay:
        setattr(pipe, _STREAMED_ATTR, True)
    elif not on_host:
        return move_model(pipe, device)
    for name, module in components_of(pipe).items():
        if name in stay:
            continue
        if name in on_host:
            swap_component(pipe, name, HOST)
        else:
            module.to(device)
    return pipe


def carry_out(pipe, moves: Sequence[Move], device: str, log: MoveLog) -> None:
    """Make ``moves`` (those to the host first, so the device has room for what comes in)."""
    from .swap import swap_component

    for move in sorted(moves, key=lambda m: m.to != HOST):
        log.add(move, swap_component(pipe, move.component, HOST if move.to == HOST else device))
