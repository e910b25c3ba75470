"""Many specs in one session: every spec is checked first, then the valid ones are planned
into one DAG and run with one set of loaded models (``batch_dag.py``).

Each spec keeps its own plan, lock, outputs, manifest and report, written exactly as
``cinesynth render SPEC`` writes them, and uses the cache a single render of it would use. A
stage that several specs share by key (in one cache) runs once; models stay loaded for the whole
batch (``ModelPool``); a failure stays inside its spec, the others still render. An index page
lists the specs with links to their reports (``batch_index.py``).
"""

from __future__ import annotations

import glob
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..errors import CinesynthError, RenderError, SpecError

GLOB_CHARS = set("*?[")
EXIT_OK, EXIT_FAILED, EXIT_INVALID = 0, 1, 2


def is_pattern(arg: str | Path) -> bool:
    """Whether an argument is a pattern to expand (not a file that happens to hold ``*``)."""
    return not Path(arg).exists() and bool(GLOB_CHARS & set(str(arg)))


def expand_specs(args: list[str | Path]) -> list[Path]:
    """The spec files the arguments name: a file as given, a folder as the ``*.yaml`` files in it
    (sorted), a pattern as the ``.yaml`` files it matches (sorted). A name given twice renders once."""
    found: list[Path] = []
    for arg in args:
        text = str(arg)
        path = Path(text)
        if path.is_dir():
            found += sorted(p for p in path.glob("*.yaml") if p.is_file())
        elif is_pattern(text):
            matches = sorted(Path(m) for m in glob.glob(text))
            found += [m for m in matches if m.is_file() and m.suffix == ".yaml"] + \
                [p for m in matches if m.is_dir() for p in sorted(m.glob("*.yaml")) if p.is_file()]
        else:
            found.append(path)            # a missing file is reported by the spec check
    seen: set[Path] = set()
    unique = []
    for p in found:
        if p.resolve() not in seen:
            seen.add(p.resolve())
            unique.append(p)
    return unique


def same_models(a: Any, b: Any) -> bool:
    """Whether two model registries resolve every role to the same model."""
    return (a.name, a.base_dir, a.dtype, a.lora_dirs, a.models) == \
        (b.name, b.base_dir, b.dtype, b.lora_dirs, b.models)


@dataclass
class ModelPool:
    """One residency lent to the renders of a batch: a model loaded for one spec is still
    loaded for the next. A spec with other models (another profile or models file) gets a
    residency of its own and the previous one is let go, so at most one set is held."""

    current: Any = None
    earlier: Counter = field(default_factory=Counter)

    def residency(self, executor: Any, plan: Any) -> Any:
        cur = self.current
        if cur is not None and same_models(cur.registry, plan.registry):
            return cur
        if cur is not None:
            self.earlier.update(cur.loads)
            cur.clear()
        self.current = executor.make_residency(plan)
        return self.current

    @property
    def loads(self) -> dict[str, int]:
        total = Counter(self.earlier)
        if self.current is not None:
            total.update(self.current.loads)
        return dict(sorted(total.items()))


@dataclass
class SpecResult:
    """One line of the batch summary."""

    spec: str
    project: str | None
    status: str                   # rendered | failed | invalid | planned (dry run)
    ran: int = 0
    cached: int = 0
    failed: int = 0
    seconds: float = 0.0
    error: str | None = None
    output_dir: str | None = None
    summary: str = ""
    would_run: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        del data["summary"], data["would_run"], data["output_dir"]
        return data


@dataclass
class BatchResult:
    specs: list[SpecResult]
    model_loads: dict[str, int]
    index: Path | None = None             # the index page written (none for a dry run)

    @property
    def exit_code(self) -> int:
        """0 every spec rendered, 1 some spec failed, 2 some spec is invalid (its valid
        neighbours are still rendered)."""
        if any(s.status == "invalid" for s in self.specs):
            return EXIT_INVALID
        if any(s.status == "failed" for s in self.specs):
            return EXIT_FAILED
        return EXIT_OK

    def to_json(self) -> dict[str, Any]:
        return {"specs": [s.to_json() for s in self.specs], "model_loads": self.model_loads,
                "exit_code": self.exit_code}


def render_batch(specs: list[Path], *, profile: str | None = None,
                 allow_paths: list[str] | None = None, allow_hosts: list[str] | None = None,
                 warn: Callable[[str], None] | None = None,
                 on_spec: Callable[[SpecResult], None] | None = None,
                 index: Path | None = None, **options: Any) -> BatchResult:
    """Check every spec, then render the valid ones as one DAG with one ``ModelPool``
    (``batch_dag.py``). ``options`` are ``render``'s (``keep_going``, ``dry_run``, ``device``...),
    the same for every spec; ``on_spec`` hears each spec's result (an invalid spec at once,
    the others when the batch has run). Then the batch's index page is written at ``index``
    (None: ``outputs/index.html`` of the first spec's project; none for a dry run)."""
    result = _render_all(specs, profile, allow_paths, allow_hosts, warn, on_spec, options)
    if not options.get("dry_run") and specs:
        from .batch_index import default_index, write_index

        result.index = write_index(result, index or default_index(specs))
    return result


def _render_all(specs: list[Path], profile: str | None, allow_paths: list[str] | None,
                allow_hosts: list[str] | None, warn: Callable[[str], None] | None,
                on_spec: Callable[[SpecResult], None] | None, options: dict[str, Any]) -> BatchResult:
    from .session import check_spec

    results: dict[int, SpecResult] = {}
    valid: list[tuple[int, Path, str]] = []
    for i, spec in enumerate(specs):
        try:
            loaded, _ = check_spec(spec, profile, allow_paths, allow_hosts)
        except CinesynthError as exc:
            results[i] = SpecResult(str(spec), None, "invalid", error=exc.render())
            _tell(on_spec, results[i])
            continue
        valid.append((i, spec, loaded.spec.project))
    pool = ModelPool()
    if options.get("dry_run") or options.get("executor") is not None:
        # a dry run plans spec by spec; another executor (Ray) renders the specs one after
        # another on its own workers, which keep their models from spec to spec
        for i, spec, project in valid:
            results[i] = _render_one(spec, project, pool, profile, allow_paths, allow_hosts, warn, options)
            _tell(on_spec, results[i])
        return BatchResult([results[i] for i in range(len(specs))], pool.loads)
    from .batch_dag import render_dag

    options = {k: v for k, v in options.items() if k != "dry_run"}
    ended = render_dag([spec for _, spec, _ in valid], pool, profile=profile, allow_paths=allow_paths,
                       allow_hosts=allow_hosts, warn=warn, **options)
    for (i, spec, project), end in zip(valid, ended):
        results[i] = _row(spec, project, end.result, end.error)
        _tell(on_spec, results[i])
    if pool.current is not None:
        pool.current.clear()
    return BatchResult([results[i] for i in range(len(specs))], pool.loads)


def _row(spec: Path, project: str, result: Any, error: BaseException | None) -> SpecResult:
    """A spec's summary line from how its render ended. ``seconds``: the time its own stages
    ran (a stage shared with an earlier spec of the batch counts for that one)."""
    row = SpecResult(str(spec), project, "rendered")
    if isinstance(error, SpecError):
        row.status, row.error = "invalid", error.render()
    elif error is not None:
        row.status = "failed"
        row.error = error.render() if isinstance(error, CinesynthError) else f"{type(error).__name__}: {error}"
    if result is not None:
        row.ran, row.cached = len(result.outcome.ran), len(result.outcome.cached)
        row.failed = len(result.outcome.failed)
        row.summary, row.output_dir = result.summary, str(result.output_dir)
        row.seconds = round(sum(result.outcome.seconds.values()), 3)
    return row


def _render_one(spec: Path, project: str, pool: ModelPool, profile: str | None,
                allow_paths: list[str] | None, allow_hosts: list[str] | None,
                warn: Callable[[str], None] | None, options: dict[str, Any]) -> SpecResult:
    from .render import render

    started = time.time()
    row = SpecResult(str(spec), project, "rendered")
    try:
        result = render(spec, profile=profile, allow_paths=allow_paths, allow_hosts=allow_hosts,
                        warn=warn, models=pool, **options)
    except SpecError as exc:                # changed on disk since it was checked
        row.status, row.error = "invalid", exc.render()
        result = None
    except (CinesynthError, OSError) as exc:
        row.status = "failed"
        row.error = exc.render() if isinstance(exc, CinesynthError) else f"{type(exc).__name__}: {exc}"
        result = getattr(exc, "result", None) if isinstance(exc, RenderError) else None
    if result is not None:
        row.ran, row.cached = len(result.outcome.ran), len(result.outcome.cached)
        row.failed = len(result.outcome.failed)
        row.summary, row.output_dir = result.summary, str(result.output_dir)
        if result.outcome.dry_run:
            row.status = "planned"
            row.would_run = [f"{st.id}: {st.reason}" for st in result.plan.to_run()]
    row.seconds = round(time.time() - started, 3)
    return row


def _tell(on_spec: Callable[[SpecResult], None] | None, row: SpecResult) -> None:
    if on_spec is not None:
        on_spec(row)
