"""The ``cinesynth`` command. No logic of its own: it parses options and prints results.

``validate``, ``plan``, ``status``, ``schema`` and ``models list`` import no torch.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, Callable, List, Optional

import typer

from .errors import CinesynthError

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="CineSynth: render AI video from declarative YAML specs.")
models_app = typer.Typer(no_args_is_help=True, help="Model profiles and the tiny models.")
app.add_typer(models_app, name="models")
cache_app = typer.Typer(no_args_is_help=True, help="The content-addressed cache.")
app.add_typer(cache_app, name="cache")


def _err(text: str) -> None:
    sys.stderr.write(text.rstrip("\n") + "\n")


def _guard(fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except CinesynthError as exc:
        _err(exc.render())
        raise typer.Exit(exc.exit_code)
    except KeyboardInterrupt:
        _err("interrupted: finished stages are cached; run the same command to resume")
        raise typer.Exit(130)


ALLOW_PATH_HELP = ("a folder outside the project that inputs may come from (repeatable; adds to "
                   "cinesynth.toml [trust] allow_paths)")
ALLOW_HOST_HELP = ("a host URL inputs may be downloaded from (repeatable; adds to cinesynth.toml "
                   "[trust] allow_hosts)")


def _allow_path_option() -> Any:
    return typer.Option(None, "--allow-path", help=ALLOW_PATH_HELP)


def _allow_host_option() -> Any:
    return typer.Option(None, "--allow-host", help=ALLOW_HOST_HELP)


@app.command()
def validate(specs: List[Path] = typer.Argument(..., help="spec files"),
             profile: Optional[str] = typer.Option(None, help="override the spec's profile"),
             allow_path: Optional[List[str]] = _allow_path_option(),
             allow_host: Optional[List[str]] = _allow_host_option()) -> None:
    """Check specs: every problem knowable before running (the spec, its files, its models file
    and LoRA names), at once, with file:line:col and a fix."""
    from .execute.session import check_spec

    failed = 0
    for spec in specs:
        try:
            loaded, _ = check_spec(spec, profile, allow_path, allow_host)
        except CinesynthError as exc:
            _err(exc.render())
            failed = max(failed, exc.exit_code)
            continue
        typer.echo(f"{spec}: ok ({len(loaded.spec.scenes)} scenes)")
    if failed:
        raise typer.Exit(failed)


def _open_plan(spec: Path, profile: Optional[str], allow_path: Optional[List[str]] = None,
               allow_host: Optional[List[str]] = None, **options):
    from .execute.session import Session

    session = Session.open(spec, profile=profile, warn=_err, allow_paths=allow_path,
                           allow_hosts=allow_host)
    return session, session.plan(**options)


@app.command()
def plan(spec: Path,
         format: str = typer.Option("table", "--format", "-f", help="table | json | mermaid"),
         profile: Optional[str] = typer.Option(None, help="override the spec's profile"),
         only: Optional[List[str]] = typer.Option(None, help="stage id, scene id or kind"),
         until: Optional[str] = typer.Option(None, help="stop after this stage kind"),
         force: bool = typer.Option(False, help="plan as if nothing were cached"),
         offline: bool = typer.Option(False, help="fail if a URL input is not downloaded yet"),
         allow_path: Optional[List[str]] = _allow_path_option(),
         allow_host: Optional[List[str]] = _allow_host_option()) -> None:
    """Show the stage DAG: each stage's key, whether it is cached, and why it would run."""
    from .plan.show import as_json, as_mermaid, as_table

    def go():
        _, p = _open_plan(spec, profile, allow_path, allow_host, force=force, only=only, until=until,
                          offline=offline)
        if format == "json":
            typer.echo(json.dumps(as_json(p), indent=2))
        elif format == "mermaid":
            typer.echo(as_mermaid(p))
        elif format == "table":
            typer.echo(as_table(p))
        else:
            raise CinesynthError(f"unknown format '{format}'", hint="use table, json or mermaid")

    _guard(go)


@app.command()
def status(spec: Path, profile: Optional[str] = typer.Option(None),
           offline: bool = typer.Option(False, help="fail if a URL input is not downloaded yet"),
           allow_path: Optional[List[str]] = _allow_path_option(),
           allow_host: Optional[List[str]] = _allow_host_option()) -> None:
    """What is cached, what would run and why, and which outputs exist."""
    from .plan.show import as_status

    def go():
        session, p = _open_plan(spec, profile, allow_path, allow_host, offline=offline)
        typer.echo(as_status(p, session.output_dir))

    _guard(go)


@app.command()
def render(specs: List[Path] = typer.Argument(..., help="spec files, folders (their *.yaml) or "
                                                        "patterns; several render in one session"),
           only: Optional[List[str]] = typer.Option(None, help="stage id, scene id or kind (repeatable)"),
           until: Optional[str] = typer.Option(None, help="run stages up to this kind"),
           force: bool = typer.Option(False, help="re-run selected stages even if cached"),
           keep_going: bool = typer.Option(False, help="after a failure, run what does not depend on it"),
           dry_run: bool = typer.Option(False, help="plan and report, run nothing"),
           profile: Optional[str] = typer.Option(None, help="tiny | production | shapes | models file"),
           events: Optional[Path] = typer.Option(None, help="write one JSON event per line here"),
           device: str = typer.Option("auto", help="auto | cpu | cuda | cuda:N"),
           dtype: Optional[str] = typer.Option(None, help="float32 | bfloat16 | float16"),
           vram_budget: Optional[str] = typer.Option(
               None, help="memory for models on the device, e.g. 24GiB; for the whole node: split "
                          "between its ranks (default: 90% of each GPU, 60% of the RAM on the CPU)"),
           host_budget: Optional[str] = typer.Option(
               None, help="pinned host RAM for models off the GPU, e.g. 64GiB; for the whole node: "
                          "split between its ranks (default: half the RAM on a GPU node, none on the CPU)"),
           reseed: bool = typer.Option(False, help="draw new seeds for seed: -1"),
           progress: bool = typer.Option(True, help="progress bars on a terminal"),
           parallel: str = typer.Option("auto", help="dp: stages spread over ranks | sp: heavy "
                                                      "stages split over ranks (GPUs) | auto"),
           nproc: Optional[str] = typer.Option(None, help="ranks to start with torchrun: N or auto "
                                                          "(one per GPU)"),
           offline: bool = typer.Option(False, help="download nothing: URL inputs must be cached"),
           allow_path: Optional[List[str]] = _allow_path_option(),
           allow_host: Optional[List[str]] = _allow_host_option(),
           executor: str = typer.Option("local", help="local (this process, or the ranks of --nproc) | "
                                                      "ray (worker actors on a Ray cluster)"),
           ray_address: str = typer.Option("auto", help="--executor ray: auto (this machine's cluster), "
                                                        "HOST:PORT (its head) or local (a private one)"),
           ray_worker_cpus: float = typer.Option(1.0, help="--executor ray on a cluster without GPUs: "
                                                           "CPUs per worker (one worker per GPU otherwise)"),
           summary: Optional[Path] = typer.Option(
               None, help="write a JSON summary here: one entry per spec (status, stages run and "
                          "cached, seconds, error) and the model loads of the session")) -> None:
    """Render specs: run what is not cached, then write outputs, render.lock and the report.
    Several specs (or a folder) render in one session: one line per spec; exit 0 all rendered,
    1 some failed, 2 some spec invalid (the valid ones are still rendered)."""
    from .catalog.residency import parse_size

    _plain_fallback_warnings()
    if executor not in ("local", "ray"):
        _err(CinesynthError(f"unknown executor '{executor}'", hint="use local or ray").render())
        raise typer.Exit(2)
    on_ray = None
    if executor == "ray" and not dry_run:
        on_ray = _guard(lambda: _ray_executor(
            nproc, parallel, ray_address, ray_worker_cpus, device=device, dtype=dtype,
            vram=parse_size(vram_budget) if vram_budget else None,
            host=parse_size(host_budget) if host_budget else None, keep_going=keep_going,
            force=force, profile=profile, allow_paths=allow_path, allow_hosts=allow_host))
        device = on_ray.device
    try:
        _render_specs(specs, summary, nproc, parallel, on_ray, only=only, until=until, force=force,
                      keep_going=keep_going, dry_run=dry_run, profile=profile, events=events,
                      device=device, dtype=dtype, vram_budget=vram_budget, host_budget=host_budget,
                      reseed=reseed, progress=progress, offline=offline, allow_path=allow_path,
                      allow_host=allow_host)
    finally:
        if on_ray is not None:
            on_ray.close()


def _ray_executor(nproc: Optional[str], parallel: str, address: str, worker_cpus: float,
                  **options: Any) -> Any:
    """The Ray executor, joined to its cluster (the render's device is the workers')."""
    from .execute.ray_executor import RayExecutor, RayOptions

    if nproc is not None or parallel == "sp":
        raise CinesynthError("--executor ray spreads whole stages over the cluster's workers: "
                             "--nproc and --parallel sp are for torchrun",
                             hint="leave out --nproc / --parallel sp, or use the local executor")
    if worker_cpus <= 0:
        raise CinesynthError(f"--ray-worker-cpus must be above 0, got {worker_cpus}")
    ex = RayExecutor(options=RayOptions(address=address, worker_cpus=worker_cpus), **options)
    ex.connect()
    return ex


def _render_specs(specs: List[Path], summary: Optional[Path], nproc: Optional[str], parallel: str,
                  on_ray: Any, *, only, until, force, keep_going, dry_run, profile, events, device,
                  dtype, vram_budget, host_budget, reseed, progress, offline, allow_path,
                  allow_host) -> None:
    from .execute.render import render as do_render
    from .execute.batch import is_pattern
    from .catalog.residency import parse_size

    extra = {} if on_ray is None else {"executor": on_ray}
    if len(specs) > 1 or summary is not None or any(p.is_dir() or is_pattern(p) for p in specs):
        return _guard(lambda: _render_batch(
            specs, summary, nproc, parallel, profile=profile, allow_paths=allow_path,
            allow_hosts=allow_host, only=only, until=until, force=force, keep_going=keep_going,
            dry_run=dry_run, reseed=reseed, events=events, device=device, dtype=dtype,
            budget=parse_size(vram_budget) if vram_budget else None,
            host_budget=parse_size(host_budget) if host_budget else None,
            progress=progress, offline=offline, **extra))
    spec = specs[0]

    def go():
        from .execute import distributed, parallel as par

        options = par.Options(mode=parallel)
        budget = parse_size(vram_budget) if vram_budget else None
        pinned = parse_size(host_budget) if host_budget else None
        if nproc is not None and not distributed.in_torchrun() and not dry_run:
            return _launch(spec, par.parse_nproc(nproc), options, device, events, _forwarded_render_args(
                only=only, until=until, force=force, keep_going=keep_going, profile=profile,
                device=device, dtype=dtype, vram_budget=vram_budget, host_budget=host_budget,
                reseed=reseed,
                progress=progress, parallel=parallel, offline=offline, allow_path=allow_path,
                allow_host=allow_host))
        if distributed.in_torchrun():
            result = distributed.run_rank(spec, options=options, profile=profile, only=only,
                                          until=until, force=force, keep_going=keep_going,
                                          dry_run=dry_run, reseed=reseed, events=events,
                                          device=device, dtype=dtype, budget=budget,
                                          host_budget=pinned, progress=progress, warn=_err, offline=offline,
                                          allow_paths=allow_path, allow_hosts=allow_host)
            if result is None:
                return
        else:
            if options.mode == "sp" and not dry_run:
                par.refuse_sp(par.Topology(1, _device_kind(device)), None)
            result = do_render(spec, profile=profile, only=only, until=until, force=force,
                               keep_going=keep_going, dry_run=dry_run, reseed=reseed, events=events,
                               device=device, dtype=dtype, budget=budget, host_budget=pinned,
                               progress=progress, warn=_err,
                               offline=offline, allow_paths=allow_path, allow_hosts=allow_host, **extra)
        if dry_run:
            for st in result.plan.to_run():
                typer.echo(f"would run {st.id}: {st.reason}")
        else:
            loads = result.outcome.model_loads
            if loads:
                typer.echo("model loads: " + ", ".join(f"{k} {v}" for k, v in sorted(loads.items())))
            typer.echo(f"outputs: {os.path.relpath(result.output_dir)}")
        typer.echo(result.summary)

    _guard(go)


def _render_batch(specs: List[Path], summary: Optional[Path], nproc: Optional[str], parallel: str,
                  **options: Any) -> None:
    """Render several specs in one session; one line per spec, then the model loads and a total."""
    from .execute import distributed
    from .execute.batch import expand_specs, render_batch

    def refuse(message: str, hint: str) -> None:     # a command that names no valid batch: exit 2
        _err(CinesynthError(message, hint=hint).render())
        raise typer.Exit(2)

    if options.get("executor") is None and (nproc is not None or distributed.in_torchrun()
                                            or parallel == "sp"):
        refuse("several specs render in one process: --nproc, torchrun and --parallel sp take one "
               "spec", "render each spec on its own")
    files = expand_specs(specs)
    if not files:
        refuse(f"no spec files in {' '.join(str(p) for p in specs)}",
               "a folder argument renders the *.yaml files in it")

    def line(row) -> None:
        if row.status == "invalid":
            _err(row.error or "")
            typer.echo(f"{row.spec}: invalid")
        elif row.status == "failed":
            _err(f"{row.spec}: {row.error}")
            typer.echo(f"{row.spec}: failed ({row.summary or 'nothing run'}, {row.seconds:.1f} s)")
        elif row.status == "planned":
            for text in row.would_run:
                typer.echo(f"{row.spec}: would run {text}")
            typer.echo(f"{row.spec}: {row.summary}")
        else:
            typer.echo(f"{row.spec}: rendered ({row.summary}, {row.seconds:.1f} s) -> "
                       f"{os.path.relpath(row.output_dir or '.')}")

    result = render_batch(files, warn=_err, on_spec=line, **options)
    if result.model_loads:
        typer.echo("model loads: " + ", ".join(f"{k} {v}" for k, v in result.model_loads.items()))
    counts = {s: sum(r.status == s for r in result.specs) for s in ("rendered", "planned", "failed", "invalid")}
    typer.echo(", ".join(f"{n} {s}" for s, n in counts.items() if n or s == "rendered") + " spec(s)")
    if summary is not None:
        from .cache.files import write_atomic

        summary.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(summary, json.dumps(result.to_json(), indent=2))
    if result.exit_code:
        raise typer.Exit(result.exit_code)


def _device_kind(device: str) -> str:
    if device == "auto":
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return "cuda" if device.startswith("cuda") else "cpu"


def _forwarded_render_args(**opts: Any) -> list[str]:
    """The render options a launcher passes on to each rank."""
    args: list[str] = []
    for name, value in opts.items():
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            if name == "progress":
                args += [] if value else ["--no-progress"]
            elif value:
                args.append(flag)
        elif isinstance(value, list):
            for item in value:
                args += [flag, str(item)]
        elif value is not None:
            args += [flag, str(value)]
    return args


def _launch(spec: Path, nproc: int, options: Any, device: str, events: Optional[Path],
            args: list[str]) -> None:
    """Check what can be checked here, start the ranks with torchrun, report how they ended."""
    from .execute import parallel as par
    from .execute.launch import launch
    from .spec.load import load_spec

    load_spec(spec, allow_paths=_flag_values(args, "--allow-path"),   # spec errors: exit 2
              allow_hosts=_flag_values(args, "--allow-host"))         # before any rank starts
    if options.mode == "sp":
        par.refuse_sp(par.Topology(nproc, _device_kind(device)), None)
    code, message = launch(nproc, [str(spec), *args], events)
    if message:
        _err(message)
    if code:
        raise typer.Exit(code)


def _flag_values(args: list[str], flag: str) -> list[str]:
    return [args[i + 1] for i, a in enumerate(args[:-1]) if a == flag]


def _plain_fallback_warnings() -> None:
    """Settings a machine cannot honour are said once each, as one plain line."""
    import warnings

    from .errors import FallbackWarning

    warnings.filterwarnings("once", category=FallbackWarning)
    shown = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, FallbackWarning):
            _err(f"warning: {message}")
        else:
            shown(message, category, filename, lineno, file, line)

    warnings.showwarning = show


@app.command()
def gc(spec: Optional[Path] = typer.Argument(None, help="a spec whose cache to clean"),
       max_size: Optional[str] = typer.Option(None, help="shrink the cache to this size, e.g. 20GiB")) -> None:
    """Delete unreferenced cache objects; with --max-size, the oldest entries too.
    What a running render uses is kept."""
    from .catalog.residency import parse_size

    def go():
        store, keep = _store_of(spec)
        before = store.size()
        stats = store.gc(parse_size(max_size) if max_size else None, keep=keep)
        typer.echo(f"removed {stats['objects_removed']} objects and {stats['keys_removed']} keys, "
                   f"freed {stats['bytes_freed']} bytes ({before} -> {store.size()})")

    _guard(go)


def _store_of(spec: Optional[Path]):
    """The cache of ``spec`` (and the digests its lock names), or $CINESYNTH_CACHE's."""
    from .cache.store import CacheStore

    if spec is not None:
        from .execute.session import Session

        session = Session.open(spec, warn=_err)
        return session.cache, {e.output.get("digest") for e in session.lock().stages.values()}
    if os.environ.get("CINESYNTH_CACHE"):
        return CacheStore(Path(os.environ["CINESYNTH_CACHE"]), warn=_err), set()
    raise CinesynthError("which cache?", hint="name a spec, or set CINESYNTH_CACHE")


@cache_app.command("verify")
def cache_verify(spec: Optional[Path] = typer.Argument(None, help="a spec whose cache to check"),
                 repair: bool = typer.Option(False, help="drop damaged objects and keys that "
                                                         "lead nowhere")) -> None:
    """Hash every object against its name and check every key's object (like git fsck).
    Exits 1 when damage is found and --repair is not given."""

    def go():
        store, _ = _store_of(spec)
        stats = store.verify(repair=repair)
        typer.echo(f"{stats['verified']} objects verified, {stats['damaged']} damaged, "
                   f"{stats['dangling']} dangling keys")
        if stats["damaged"] or stats["dangling"]:
            if repair:
                typer.echo("repaired: damaged objects and their keys dropped; "
                           "their stages run again on the next render")
            else:
                raise CinesynthError("the cache holds damaged objects or dangling keys",
                                     hint="run 'cinesynth cache verify --repair'")

    _guard(go)


@app.command()
def schema() -> None:
    """Print the JSON Schema of the spec (for editor completion and checks)."""
    from .spec.schema import spec_schema

    typer.echo(json.dumps(spec_schema(), indent=2))


@models_app.command("list")
def models_list(profile: str = typer.Option("tiny", help="tiny | production | shapes | models file")) -> None:
    """The models of a profile: where they are and whether they are available."""
    from .catalog.registry import Registry, describe

    def go():
        reg = Registry.load(profile, Path.cwd(), Path.cwd())
        for row in describe(reg):
            mark = "ok " if row["available"] else "-- "
            typer.echo(f"{mark}{row['role']:8} {row['kind']:12} {row['model']}  "
                       f"rev {row['revision'] or '?'}  {row['location']}")

    _guard(go)


@models_app.command("build-tiny")
def models_build_tiny() -> None:
    """Build the tiny random-weight models (deterministic) used by the tiny profile."""
    from .catalog.registry import Registry

    def go():
        reg = Registry.load("tiny", Path.cwd(), Path.cwd())
        root = reg.ensure_tiny()
        typer.echo(f"tiny models ready in {root}")

    _guard(go)


def main(argv: list[str] | None = None) -> None:
    app(args=argv, prog_name="cinesynth")


if __name__ == "__main__":  # pragma: no cover
    main()
