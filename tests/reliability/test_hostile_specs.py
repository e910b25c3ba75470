"""Hostile specs through the real CLI: each refused with exit 2, one located line per problem,
no traceback, within a memory and time limit, and nothing written outside the work folder.

One row per kind of hostile input, grouped by the class of failure it stands for. Every row runs
``python -m cinesynth_batch.cli validate`` in a subprocess (the rows marked ``render`` run
``render`` too) under ``RLIMIT_AS`` and a timeout.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from projects import new_project

REPO = Path(__file__).resolve().parents[2]
LOCATED = re.compile(r"^[^\s:][^:]*:\d+:\d+: \S")
MEMORY_LIMIT = 2 << 30          # address space of one CLI run (validate imports no torch)
RENDER_MEMORY_LIMIT = 8 << 30   # render imports torch, which maps more
TIME_LIMIT = 60.0


@dataclass
class Run:
    code: int
    out: str
    err: str
    seconds: float

    def lines(self) -> list[str]:
        return [ln for ln in self.err.splitlines() if ln.strip()]


#: The CLI under an address-space limit, set by the child itself before it imports anything: no
#: ``preexec_fn`` (Python code between fork and exec can deadlock on a lock another thread of
#: this multi-threaded test process held at the fork).
LAUNCH = ("import resource, runpy, sys; limit = int(sys.argv.pop(1)); "
          "resource.setrlimit(resource.RLIMIT_AS, (limit, limit)); "
          "runpy.run_module('cinesynth_batch.cli', run_name='__main__', alter_sys=True)")


def cli(args: list[str], cwd: Path, home: Path, memory: int = MEMORY_LIMIT) -> Run:
    """``python -m cinesynth_batch.cli ARGS`` in ``cwd`` under a memory and time limit."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "CINESYNTH_HOME": str(home), "OMP_NUM_THREADS": "1",
           "HF_HUB_OFFLINE": "1", "NO_COLOR": "1", "COLUMNS": "200"}
    env.pop("CINESYNTH_PROJECT", None)
    env.pop("CINESYNTH_CACHE", None)
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", LAUNCH, str(memory), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, errors="replace", timeout=TIME_LIMIT,
                          start_new_session=True)
    return Run(done.returncode, done.stdout, done.stderr, time.monotonic() - started)


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``folder``: size and modification time."""
    out = {}
    for p in sorted(folder.rglob("*")):
        if p.is_file() or p.is_symlink():
            st = p.lstat()
            out[str(p.relative_to(folder))] = (st.st_size, st.st_mtime_ns)
    return out


BASE = """
project: p
defaults: {resolution: 64x64, seed: 1}
scenes:
  - id: one
    image: {prompt: a cat, steps: 1}
"""


def scene(extra: str) -> str:
    """A spec whose one scene is ``extra`` (YAML under ``- id: one``)."""
    return "project: p\ndefaults: {resolution: 64x64, seed: 1}\nscenes:\n  - id: one\n" + \
        textwrap.indent(textwrap.dedent(extra).strip("\n"), "    ") + "\n"


def alias_bomb() -> str:
    lines = ["project: p", "vars:", '  a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, 10):
        refs = ",".join([f"*a{i - 1}"] * 9)
        lines.append(f"  a{i}: &a{i} [{refs}]")
    return "\n".join(lines) + "\nscenes:\n  - id: one\n    image: {prompt: cat}\n"


def preset_bomb() -> str:
    """A preset of 20,000 nodes (under yaml_nodes) used by 2,500 matrix scenes."""
    body = "[" + ",".join(["1"] * 20_000) + "]"
    values = ", ".join(str(i) for i in range(50))
    return (f"project: p\npresets:\n  big: {{image: {{prompt: cat}}, vars_in_preset: {body}}}\nscenes:\n"
            f"  - id: s-{{{{ a }}}}-{{{{ b }}}}\n    preset: big\n    matrix: {{a: [{values}], b: [{values}]}}\n")


def matrix_bomb() -> str:
    keys = "".join(f"      k{i}: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]\n" for i in range(12))
    return "project: p\nscenes:\n  - id: s\n    matrix:\n" + keys + "    image: {prompt: cat}\n"


# name -> (spec text or bytes, expected text in the first problem, limit name or None, commands)
ROWS = {
    # a small spec that would exhaust memory or time
    "alias_bomb": (alias_bomb(), "expands to more than 200000 nodes", "yaml_nodes", ("validate", "render")),
    "recursive_alias": ("project: p\nvars: &v {self: *v}\nscenes: [{id: one, image: {prompt: cat}}]\n",
                        "nests deeper than 64 levels", "yaml_depth", ("validate",)),
    "matrix_explosion": (matrix_bomb(), "over the limit of 5000", "scenes", ("validate",)),
    "preset_explosion": (preset_bomb(), "make more than 1000000 YAML nodes", "expanded_nodes", ("validate",)),
    "template_repeat": (scene("image: {prompt: \"{{ 'x' * 10**11 }}\"}"),
                        "template a repeated value would be 100000000000 long", "template_chars",
                        ("validate", "render")),
    "template_nested_range": (scene('image: {prompt: "{% for i in range(99999) %}{% for j in range(99999) %}'
                                    '{% endfor %}{% endfor %}x"}'),
                              "ranges made more than 100000 items", "template_range", ("validate",)),
    "template_huge_range": (scene('image: {prompt: "{{ range(10**9) | list | length }}"}'),
                            "range of 1000000000 items", "template_range", ("validate",)),
    "template_power": (scene('image: {prompt: "{{ 10 ** 1000000 }}"}'),
                       "has more digits than the limit", "template_chars", ("validate",)),
    "template_center": (scene('image: {prompt: "{{ \'x\' | center(10**9) }}"}'),
                        "a number given to a function would be 1000000000 long", "template_chars",
                        ("validate",)),
    "template_concat": ("vars: {p: " + "x" * 30_000 + "}\n" + scene('image: {prompt: "{{ p ~ p ~ p ~ p }}"}'),
                        "a joined value would be 120000 long", "template_chars", ("validate",)),
    "template_format_width": (scene("image: {prompt: \"{{ '%0999999999d' % 1 }}\"}"),
                              "a width in a format string would be 999999999 long", "template_chars",
                              ("validate",)),
    "huge_prompt_file": (scene("image: {prompt: \"" + "x" * (50 << 20) + "\"}"),
                         "bytes, over the limit of 4194304", "spec_bytes", ("validate",)),
    "long_prompt": (scene("image: {prompt: \"" + "x" * 30_000 + "\"}"),
                    "the text is 30000 characters", "prompt_chars", ("validate",)),
    # numbers without an upper bound
    "huge_frames": (scene("image: {prompt: cat}\nvideo: {prompt: walk, frames: 100000001}"),
                    "100000001, over the limit of 9601", "frames", ("validate", "render")),
    "huge_width": (scene("image: {prompt: cat, width: 1048576}"), "1048576, over the limit of 4096",
                   "side", ("validate",)),
    "huge_resolution": (scene("resolution: 8000x16\nimage: {prompt: cat}"), "has a side of 8000 pixels",
                        "side", ("validate",)),
    "duration_inf": (scene("duration: .inf\nimage: {prompt: cat}"), "input should be a finite number",
                     None, ("validate", "render")),
    "duration_nan": (scene("duration: .nan\nimage: {prompt: cat}"), "input should be a finite number",
                     None, ("validate",)),
    "duration_huge": (scene("duration: 1e9\nimage: {prompt: cat}"), "1e+09, over the limit of 3600",
                      "duration", ("validate",)),
    "frame_at_inf": (scene("image: {prompt: cat}\nvideo: {prompt: w, frames: 5, image: {frame: "
                           "{source: assets/dance.mp4, at: .inf}}}"),
                     "inf is not a frame position", None, ("validate",)),
    "huge_segments": (scene("image: {prompt: cat}\nvideo: {prompt: w, frames: 5, segments: 100000}"),
                      "100000, over the limit of 256", "segments", ("validate",)),
    "huge_steps": (scene("image: {prompt: cat, steps: 1000000}"), "1000000, over the limit of 200", "steps",
                   ("validate",)),
    "huge_integer": (scene("image: {prompt: cat, steps: " + "9" * 5000 + "}"), "cannot read this value",
                     None, ("validate",)),
    # undecodable text and unusable paths
    "latin1_file": (BASE.replace("a cat", "un café").encode("latin-1"), "byte 0xe9 is not UTF-8", None,
                    ("validate", "render")),
    "utf16_file": (BASE.encode("utf-16"), "the file is UTF-16, not UTF-8", None, ("validate",)),
    "control_char": (BASE.replace("a cat", "a \x07cat"), "control character 0x07 is not allowed", None,
                     ("validate",)),
    "nul_byte_raw": (BASE.replace("a cat", "a \x00cat"), "control character 0x00 is not allowed", None,
                     ("validate",)),
    "nul_in_path": (scene('image: {prompt: cat}\naudio: "assets/line1\\0.wav"'),
                    "the path holds a control character", None, ("validate", "render")),
    "long_path": (scene("image: {prompt: cat}\naudio: assets/" + "a" * 300 + ".wav"),
                  "a path component is longer than 255 bytes", None, ("validate", "render")),
    "long_preset_name": (scene("preset: " + "p" * 300 + "\nimage: {prompt: cat}"),
                         "preset name is 300 characters", "name_chars", ("validate",)),
    "preset_path_name": (scene("preset: ../../etc/passwd\nimage: {prompt: cat}"),
                         "is not a preset name", None, ("validate",)),
    "long_project_name": (BASE.replace("project: p", "project: " + "p" * 300),
                          "the name is 300 characters", "name_chars", ("validate",)),
    "long_output": (BASE + "output: outputs/" + "o" * 300 + "\n", "a path component is longer than 255",
                    None, ("validate",)),
    # the project boundary
    "output_escape": (BASE + "output: ../escape_out\n", "output folder '../escape_out' is outside the project",
                      None, ("validate", "render")),
    "output_absolute": (BASE + "output: /tmp\n", "output folder '/tmp' is outside the project", None,
                        ("validate",)),
    "lora_dotdot": (scene("image: {prompt: cat, loras: [{name: ../../outside/evil}]}"),
                    "a LoRA name may not hold '..'", None, ("validate", "render")),
    "lora_absolute": (scene("image: {prompt: cat, loras: [{name: /etc/passwd}]}"),
                      "not an absolute path", None, ("validate",)),
    "lora_backslash": (scene("image: {prompt: cat, loras: [{name: '..\\\\evil'}]}"),
                       "the path holds a backslash", None, ("validate",)),
    "allow_paths_root": ("allow_paths: ['/']\n" + BASE, "'/' is not a folder the operator allowed", None,
                         ("validate", "render")),
    "asset_outside": (scene("image: {prompt: cat}\naudio: /etc/hostname"), "is outside the project", None,
                      ("validate",)),
    "allow_hosts_widening": ("allow_hosts: ['127.0.0.1']\n" + scene(
        "image: {prompt: cat}\naudio: {extract: {source: 'http://127.0.0.1:9/a.mp4'}}"),
        "host '127.0.0.1' is not one the operator allowed", None, ("validate", "render")),
    "url_userinfo": (scene("image: {prompt: cat}\naudio: {extract: {source: 'http://127.0.0.1:9@youtube.com/'}}"),
                     "a URL may not hold a user name or password", None, ("validate",)),
    "url_backslash": (scene("image: {prompt: cat}\naudio: {extract: {source: 'http://127.0.0.1:9\\\\@youtube.com/'}}"),
                      "a URL may not hold a backslash", None, ("validate",)),
    "file_url": (scene("image: {prompt: cat}\naudio: 'file:///etc/passwd'"),
                 "only http:// and https:// URLs are downloaded", None, ("validate",)),
    "ftp_url": (scene("image: {prompt: cat}\naudio: 'ftp://youtube.com/a.wav'"),
                "only http:// and https:// URLs are downloaded", None, ("validate",)),
    # validate reports what plan and render would find
    "unknown_lora": ("profile: production\n" + scene("image: {prompt: cat, loras: [{name: nope}]}"),
                     "LoRA 'nope' not found", None, ("validate",)),
    "missing_models_file": ("profile: models/missing.yaml\n" + BASE, "models file 'models/missing.yaml' not found",
                            None, ("validate", "render")),
    "broken_models_file": ("profile: models.yaml\n" + BASE, "models file models.yaml:4:1: YAML syntax error",
                           None, ("validate",)),
    "models_file_outside": ("profile: /etc/hostname\n" + BASE, "is outside the project", None, ("validate",)),
    "missing_asset": (scene("image: {prompt: cat}\naudio: assets/nope.wav"), "audio file 'assets/nope.wav' not found",
                      None, ("validate",)),
}
CLASSES = {
    "resource exhaustion": ["alias_bomb", "recursive_alias", "matrix_explosion", "preset_explosion",
                                       "template_repeat",
                                       "template_nested_range", "template_huge_range", "template_power",
                                       "template_center", "template_concat", "template_format_width",
                                       "huge_prompt_file", "long_prompt"],
    "unbounded numbers": ["huge_frames", "huge_width", "huge_resolution", "duration_inf",
                                     "duration_nan", "duration_huge", "frame_at_inf", "huge_segments",
                                     "huge_steps", "huge_integer"],
    "decode and path errors": ["latin1_file", "utf16_file", "control_char", "nul_byte_raw",
                                          "nul_in_path", "long_path", "long_preset_name", "preset_path_name",
                                          "long_project_name", "long_output"],
    "project boundary": ["output_escape", "output_absolute", "lora_dotdot", "lora_absolute",
                                    "lora_backslash", "allow_paths_root", "asset_outside",
                                    "allow_hosts_widening", "url_userinfo", "url_backslash", "file_url",
                                    "ftp_url"],
    "validate knows what render knows": ["unknown_lora", "missing_models_file",
                                                    "broken_models_file", "models_file_outside",
                                                    "missing_asset"],
}


def test_every_row_has_a_class():
    listed = [name for names in CLASSES.values() for name in names]
    assert sorted(listed) == sorted(ROWS) and len(set(listed)) == len(listed)


# render imports torch (seconds): a few rows render by default, every row marked render with
# CINESYNTH_HOSTILE_RENDER=all
RENDER_ROWS = ("output_escape", "allow_hosts_widening", "nul_in_path")
WORKERS = 4


def make_work(tmp: Path) -> tuple[Path, Path, Path]:
    """``tmp/work/p`` (the project), a sibling ``tmp/outside`` holding a file, and a home."""
    outside = tmp / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("keep")
    root = new_project(tmp / "work" / "p")
    (root / "models.yaml").write_text("name: broken\nmodels: [\n  x: {\n")
    home = tmp / "work" / "home"
    home.mkdir()
    return tmp, root, home


@pytest.fixture
def work(tmp_path: Path):
    return make_work(tmp_path)


def _commands(name: str) -> list[str]:
    every = os.environ.get("CINESYNTH_HOSTILE_RENDER") == "all"
    return [c for c in ROWS[name][3] if c == "validate" or every or name in RENDER_ROWS]


@dataclass
class Outcome:
    runs: list[tuple[str, Run]]
    outside_before: dict
    outside_after: dict
    tmp: Path
    root: Path
    home: Path


def _attack(name: str, tmp: Path) -> Outcome:
    tmp, root, home = make_work(tmp)
    text = ROWS[name][0]
    (root / "s.yaml").write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    before = snapshot(tmp / "outside")
    runs = []
    for command in _commands(name):
        args = ["render", "s.yaml", "--no-progress"] if command == "render" else [command, "s.yaml"]
        memory = RENDER_MEMORY_LIMIT if command == "render" else MEMORY_LIMIT
        runs.append((command, cli(args, root, home, memory)))
    return Outcome(runs, before, snapshot(tmp / "outside"), tmp, root, home)


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory) -> dict[str, Outcome]:
    """Every row attacked once, a few CLI runs at a time."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(WORKERS) as pool:
        futures = {name: pool.submit(_attack, name, tmp_path_factory.mktemp(name)) for name in ROWS}
        return {name: f.result() for name, f in futures.items()}


def _check(run: Run, expected: str, limit: str | None, spec_name: str) -> None:
    assert "Traceback" not in run.err + run.out, run.err[-2000:]
    assert run.code == 2, (run.code, run.err[-2000:])
    lines = run.lines()
    assert lines, "no message"
    for line in lines:
        assert LOCATED.match(line), line[:300]
        assert len(line) < 2000
    first = lines[0]
    assert first.startswith(f"{spec_name}:"), first[:300]
    assert expected in first, first[:300]
    if limit:
        assert f"({limit})" in first, first[:300]


@pytest.mark.parametrize("name", list(ROWS))
def test_hostile_spec_is_refused(name: str, outcomes):
    _, expected, limit, _ = ROWS[name]
    got = outcomes[name]
    assert [c for c, _ in got.runs] == _commands(name)
    for _command, run in got.runs:
        _check(run, expected, limit, "s.yaml")
        assert run.seconds < TIME_LIMIT
    assert got.outside_after == got.outside_before
    assert sorted(p.name for p in got.tmp.iterdir()) == ["outside", "work"]
    assert sorted(p.name for p in (got.tmp / "work").iterdir()) == ["home", "p"]
    assert not (got.root / "outputs").exists() and not (got.root / ".cinesynth").exists()
    assert list(got.home.iterdir()) == []


def test_hostile_counts(outcomes, record_property):
    """The figures: inputs tried per class and CLI runs made (printed with -s)."""
    per_class = {cls: len(names) for cls, names in CLASSES.items()}
    runs = sum(len(o.runs) for o in outcomes.values())
    renders = sum(1 for o in outcomes.values() for c, _ in o.runs if c == "render")
    refused = sum(1 for o in outcomes.values() for _, r in o.runs if r.code == 2 and "Traceback" not in r.err)
    slowest = max((r.seconds, n, c) for n, o in outcomes.items() for c, r in o.runs)
    print(f"\nhostile specs: {len(ROWS)} inputs, {runs} CLI runs ({renders} render), {refused} refused "
          f"with exit 2; per class: {per_class}; slowest run {slowest[0]:.1f} s ({slowest[1]} {slowest[2]})")
    for name, o in outcomes.items():
        print(f"  {name}: " + ", ".join(f"{c} {r.seconds:.1f} s" for c, r in o.runs))
    record_property("hostile_inputs", len(ROWS))
    record_property("hostile_runs", runs)
    assert refused == runs


def test_several_problems_are_one_line_each(work):
    tmp, root, home = work
    spec = root / "s.yaml"
    spec.write_text(scene("image: {prompt: \"{{ 'x' * 10**11 }}\", width: 1048576, steps: 100000}\n"
                          "audio: assets/" + "a" * 300 + ".wav").replace("project: p", "project: p\noutput: ../x"))
    run = cli(["validate", "s.yaml"], root, home)
    _check(run, "", None, "s.yaml")
    assert len(run.lines()) == 5, run.err
    assert {"(template_chars)", "(side)", "(steps)", "longer than 255", "outside the project"} <= \
        {k for k in ("(template_chars)", "(side)", "(steps)", "longer than 255", "outside the project")
         if any(k in ln for ln in run.lines())}


def test_limits_come_from_cinesynth_toml_not_the_spec(work):
    tmp, root, home = work
    spec = root / "s.yaml"
    spec.write_text(scene("image: {prompt: cat, steps: 300}"))
    run = cli(["validate", "s.yaml"], root, home)
    _check(run, "300, over the limit of 200", "steps", "s.yaml")
    spec.write_text("limits: {steps: 500}\n" + scene("image: {prompt: cat, steps: 300}"))
    run = cli(["validate", "s.yaml"], root, home)
    _check(run, "unknown key 'limits'", None, "s.yaml")
    (root / "cinesynth.toml").write_text("[limits]\nsteps = 500\n")
    spec.write_text(scene("image: {prompt: cat, steps: 300}"))
    run = cli(["validate", "s.yaml"], root, home)
    assert run.code == 0 and run.out.strip() == "s.yaml: ok (1 scene)", run.err
