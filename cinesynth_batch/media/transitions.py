"""Filter-graph pieces for scene transitions and music ducking (used by ``stages/assemble``).

Transitions. A crossfade of ``d`` seconds into scene *i* overlaps it with the end of scene
*i - 1* by ``D = round(d * fps)`` frames: the picture dissolves with ``xfade`` (``fade``)
and the sound with ``acrossfade`` (triangular gains) over the same span. The programme is
``sum(frames) - sum(D)`` frames long. A cut is a plain concatenation.

Ducking. The music is fed through ``sidechaincompress`` keyed by the scene sound (speech):
threshold -60 dBFS, ratio 20, attack 20 ms, release 250 ms, and a dry/wet ``mix`` of
``1 - 10^(-depth/20)``, so the music never drops by more than ``depth`` dB (default 12) and
reaches nearly that depth under speech louder than about -30 dBFS; between lines the music
comes back within about a quarter second.
"""

from __future__ import annotations

from fractions import Fraction
from typing import Callable

DUCK_THRESHOLD = 0.001      # -60 dBFS: the compressor's floor is 0.000976563
DUCK_RATIO = 20.0
DUCK_ATTACK_MS = 20.0
DUCK_RELEASE_MS = 250.0

Add = Callable[[str], None]


def overlap_frames(transition: dict | None, fps: Fraction) -> int:
    """Frames a transition into a scene overlaps the scene before it (0 for a cut)."""
    if transition in (None, "cut"):
        return 0
    value = transition.get("crossfade") if isinstance(transition, dict) else None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"transition {transition!r} is not cut or {{crossfade: seconds > 0}}")
    return max(1, round(Fraction(str(float(value))) * fps))


def join_video(add: Add, scene_labels: list[list[str]], frames: list[int], overlaps: list[int],
               fps: Fraction, out: str) -> str:
    """Join each scene's segment labels, then the scenes: concat at cuts, ``xfade`` where
    ``overlaps[i]`` > 0. Returns the output label."""
    rate = f"{fps.numerator}/{fps.denominator}"
    tb = f"{fps.denominator}/{fps.numerator}"
    scenes = []
    for i, labels in enumerate(scene_labels):
        head = "".join(labels)
        join = f"concat=n={len(labels)}:v=1:a=0," if len(labels) > 1 else ""
        add(f"{head}{join}settb={tb},setpts=N,fps=fps={rate}[sc{i}]")
        scenes.append(f"[sc{i}]")
    current, length = scenes[0], frames[0]
    for i in range(1, len(scenes)):
        label = f"[xj{i}]"
        if overlaps[i]:
            offset = Fraction(length - overlaps[i]) / fps
            add(f"{current}{scenes[i]}xfade=transition=fade:duration={_sec(Fraction(overlaps[i]) / fps)}"
                f":offset={_sec(offset)},settb={tb},setpts=N{label}")
        else:
            add(f"{current}{scenes[i]}concat=n=2:v=1:a=0,settb={tb},setpts=N{label}")
        current, length = label, length + frames[i] - overlaps[i]
    add(f"{current}trim=end_frame={length},settb={tb},setpts=N,format=yuv420p{out}")
    return out


def join_audio(add: Add, labels: list[str], overlap_samples: list[int], out: str) -> str:
    """Join scene sounds: concat at cuts, ``acrossfade`` of ``overlap_samples[i]`` samples."""
    current = labels[0]
    for i in range(1, len(labels)):
        label = f"[xa{i}]"
        if overlap_samples[i]:
            add(f"{current}{labels[i]}acrossfade=ns={overlap_samples[i]}:o=1:c1=tri:c2=tri{label}")
        else:
            add(f"{current}{labels[i]}concat=n=2:v=0:a=1{label}")
        current = label
    add(f"{current}asetpts=N/SR/TB{out}")
    return out


def duck(add: Add, speech: str, music: str, depth_db: float) -> tuple[str, str]:
    """Lower ``music`` under ``speech`` by up to ``depth_db``; returns (speech, ducked music)."""
    mix = 1.0 - 10.0 ** (-float(depth_db) / 20.0)
    add(f"{speech}asplit=2[speech_main][speech_key]")
    add(f"{music}[speech_key]sidechaincompress=threshold={DUCK_THRESHOLD}:ratio={DUCK_RATIO:g}"
        f":attack={DUCK_ATTACK_MS:g}:release={DUCK_RELEASE_MS:g}:makeup=1:mix={mix:.6f}[music_ducked]")
    return "[speech_main]", "[music_ducked]"


def _sec(value: Fraction) -> str:
    return f"{float(value):.6f}"
