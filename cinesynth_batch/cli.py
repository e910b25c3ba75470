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
    except OSError as exc:          # a file this command writes (events, summary, index, outputs)
        why = exc.strerror or str(exc) or type(exc).__name__
        what = f"cannot write or read a file: {why}: {exc.filename}" if exc.filename else f"stopped by an I/O error: {why}"
        _err(f"{what} (fix it and run the same command again)")
        raise typer.Exit(1)


def _size_option(value: Optional[str]) -> Optional[str]:
    """A size option (``--vram-budget``, ``--host-budget``, ``--max-size``), checked where it is
    given (exit 2, naming it) and kept as written: the launchers pass it on to each rank."""
    if value is not None:
        from .catalog.residency import parse_size

        try:
            parse_size(value)
        except ValueError as exc:
            raise typer.BadParameter(str(exc)) from None
    return value


def _device_option(value: str) -> str:
    from .runtime.devices import DEVICE_FORM

    if not DEVICE_FORM.fullmatch(value):
        raise typer.BadParameter(f"{value!r} is not a device: use auto, cpu, cuda or cuda:N")
    return value


def _dtype_option(value: Optional[str]) -> Optional[str]:
    from .runtime.dtypes import DTYPE_NAMES

    if value is not None and value.lower() not in DTYPE_NAMES:
        raise typer.BadParameter(f"{value!r} is not a dtype: use float32, bfloat16 or float16")
    return value


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
        count = len(loaded.spec.scenes)
        typer.echo(f"{spec}: ok ({count} scene{'' if count == 1 else 's'})")
    if failed:
        raise typer.Exit(failed)


def _open_plan(spec: Path, profile: Optional[str], allow_path: Optional[List[str]] = None,
               allow_host: Optional[List[str]] = None, **options):
    from .execute.session import Session

    session = Session.open(spec, profile=profile, warn=_err, allow_paths=allow_path,
                           allow_hosts=allow_host)
    return session, session.plan(**options)


@app.command()
def plan(specs: List[Path] = typer.Argument(..., help="spec files, folders (their *.yaml) or patterns"),
         format: str = typer.Option("table", "--format", "-f", help="table | json | mermaid"),
         profile: Optional[str] = typer.Option(None, help="override the spec's profile"),
         only: Optional[List[str]] = typer.Option(None, help="stage id, scene id or kind"),
         until: Optional[str] = typer.Option(None, help="stop after this stage kind"),
         force: bool = typer.Option(False, help="plan as if nothing were cached"),
         offline: bool = typer.Option(False, help="fail if a URL input is not downloaded yet"),
         allow_path: Optional[List[str]] = _allow_path_option(),
         allow_host: Optional[List[str]] = _allow_host_option()) -> None:
    """Show the stage DAG: each stage's key, whether it is cached, why it would run, and its
    expected GPU time (from earlier renders' manifests, else a table). Several specs: each
    spec's plan, then the batch's estimated GPU time per spec (a stage shared by key once)."""
    from .execute.batch import expand_specs
    from .plan.batch import merge_plans
    from .plan.cost import History, format_seconds, plan_costs
    from .plan.show import as_json, as_mermaid, as_table

    def go():
        if format not in ("table", "json", "mermaid"):
            raise CinesynthError(f"unknown format '{format}'", hint="use table, json or mermaid")
        files = expand_specs(specs)
        if not files:
            raise CinesynthError(f"no spec files in {' '.join(str(p) for p in specs)}",
                                 hint="a folder argument renders the *.yaml files in it")
        plans = [_open_plan(f, profile, allow_path, allow_host, force=force, only=only, until=until,
                            offline=offline)[1] for f in files]
        history = History.from_folders(p.loaded.output_dir for p in plans)
        costs = [plan_costs(p, history) for p in plans]
        graph = merge_plans(plans)
        node_costs = {graph.owner[(i, sid)]: est for i, c in enumerate(costs) for sid, est in c.items()}
        per_spec = graph.spec_costs(node_costs)
        several = len(plans) > 1
        if format == "json":
            views = [as_json(p, c) for p, c in zip(plans, costs)]
            if not several:
                typer.echo(json.dumps(views[0], indent=2))
                return
            typer.echo(json.dumps({"specs": [{"spec": str(f), **v, "batch_seconds": round(s, 3)}
                                             for f, v, s in zip(files, views, per_spec)],
                                   "estimated_seconds": round(sum(per_spec), 3),
                                   "shared": {n: [f"{plans[i].project}:{sid}" for i, sid in node.members]
                                              for n, node in graph.nodes.items() if node.shared}},
                                  indent=2))
            return
        for f, p, c in zip(files, plans, costs):
            if several:
                typer.echo(f"== {f} ({p.project}) ==")
            typer.echo(as_mermaid(p) if format == "mermaid" else as_table(p, c))
        if several and format == "table":
            typer.echo(f"estimated GPU time of the batch: {format_seconds(sum(per_spec))}")
            width = max(len(p.project) for p in plans)
            for p, seconds in zip(plans, per_spec):
                typer.echo(f"  {p.project.ljust(width)}  {format_seconds(seconds)}")
            shared = [node for node in graph.nodes.values() if node.shared]
            if shared:
                typer.echo(f"shared by key, run once: " + ", ".join(
                    f"{node.members[0][1]} ({', '.join(plans[i].project for i, _ in node.members)})"
                    for node in shared))

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
           device: str = typer.Option("auto", callback=_device_option, help="auto | cpu | cuda | cuda:N"),
           dtype: Optional[str] = typer.Option(None, callback=_dtype_option, help="float32 | bfloat16 | float16"),
           vram_budget: Optional[str] = typer.Option(
               None, callback=_size_option,
               help="memory for models on the device, e.g. 24GiB; for the whole node: split "
                    "between its ranks (default: 90% of each GPU, 60% of the RAM on the CPU)"),
           host_budget: Optional[str] = typer.Option(
               None, callback=_size_option,
               help="pinned host RAM for models off the GPU, e.g. 64GiB; for the whole node: "
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
                          "cached, seconds, error) and the model loads of the session"),
           index: Optional[Path] = typer.Option(
               None, help="several specs: write the batch's index page (one line per spec, a link "
                          "to its report) here; default: outputs/index.html of the first spec's "
                          "project")) -> None:
    """Render specs: run what is not cached, then write outputs, render.lock and the report.
    Several specs (or a folder) render in one session: one line per spec; exit 0 all rendered,
    1 some failed, 2 some spec invalid (the valid ones are still rendered)."""
    from .catalog.residency import parse_size

    _plain_fallback_warnings()
    _refuse_writing_over_specs(specs, summary=summary, index=index, events=events)
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
        _render_specs(specs, summary, index, nproc, parallel, on_ray, only=only, until=until,
                      force=force, keep_going=keep_going, dry_run=dry_run, profile=profile, events=events,
                      device=device, dtype=dtype, vram_budget=vram_budget, host_budget=host_budget,
                      reseed=reseed, progress=progress, offline=offline, allow_path=allow_path,
                      allow_host=allow_host)
    finally:
        if on_ray is not None:
            on_ray.close()


def _refuse_writing_over_specs(specs: List[Path], **files: Optional[Path]) -> None:
    """A file the render writes (``--summary``, ``--index``, ``--events``) must not be one of the
    specs it renders: it would be overwritten, or appended to."""
    from .execute.batch import expand_specs

    rendered = {p.resolve() for p in expand_specs(specs)}
    for option, path in files.items():
        if path is not None and path.resolve() in rendered:
            _err(CinesynthError(f"--{option} {path} is a spec of this render: writing it would destroy the spec",
                                hint=f"give --{option} another path").render())
            raise typer.Exit(2)


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


def _render_specs(specs: List[Path], summary: Optional[Path], index: Optional[Path],
                  nproc: Optional[str], parallel: str, on_ray: Any, *, only, until, force, keep_going, dry_run, profile, events, device,
                  dtype, vram_budget, host_budget, reseed, progress, offline, allow_path,
                  allow_host) -> None:
    from .execute.render import render as do_render
    from .execute.batch import is_pattern
    from .catalog.residency import parse_size

    extra = {} if on_ray is None else {"executor": on_ray}
    if len(specs) > 1 or summary is not None or index is not None or \
            any(p.is_dir() or is_pattern(p) for p in specs):
        return _guard(lambda: _render_batch(
            specs, summary, nproc, parallel, index=index, profile=profile, allow_paths=allow_path,
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
    if result.index is not None:
        typer.echo(f"index: {os.path.relpath(result.index)}")
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
        from .runtime.devices import auto_device

        return auto_device()
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
       max_size: Optional[str] = typer.Option(None, callback=_size_option,
                                              help="shrink the cache to this size, e.g. 20GiB"),
       remote: bool = typer.Option(False, "--remote", help="clean the shared remote store "
                                                           "([cache] url or $CINESYNTH_CACHE)")) -> None:
    """Delete unreferenced cache objects; with --max-size, the oldest entries too.
    What a running render uses is kept."""
    from .catalog.residency import parse_size

    def go():
        limit = parse_size(max_size) if max_size else None
        if remote or (spec is None and _remote_only()):
            from .cache.remote_gc import remote_gc

            store, settings, _, keep = _remote_of(spec, None)
            stats = remote_gc(store, settings.lease_seconds, limit, keep=set(keep or ()))
            typer.echo(f"{store.url}: removed {stats['objects_removed']} objects and "
                       f"{stats['keys_removed']} keys, freed {stats['bytes_freed']} bytes")
            return
        store, keep = _store_of(spec)
        before = store.size()
        stats = store.gc(limit, keep=keep)
        typer.echo(f"removed {stats['objects_removed']} objects and {stats['keys_removed']} keys, "
                   f"freed {stats['bytes_freed']} bytes ({before} -> {store.size()})")

    _guard(go)


def _remote_only() -> bool:
    """``$CINESYNTH_CACHE`` names a remote store (and no spec a local one)."""
    return os.environ.get("CINESYNTH_CACHE", "").startswith("s3://")


def _store_of(spec: Optional[Path]):
    """The local cache of ``spec`` (and the digests its lock names), or $CINESYNTH_CACHE's."""
    from .cache.store import CacheStore

    if spec is not None:
        from .execute.session import Session

        session = Session.open(spec, warn=_err)
        return session.cache, {e.output.get("digest") for e in session.lock().stages.values()}
    if os.environ.get("CINESYNTH_CACHE") and not _remote_only():
        return CacheStore(Path(os.environ["CINESYNTH_CACHE"]), warn=_err), set()
    raise CinesynthError("which cache?", hint="name a spec, or set CINESYNTH_CACHE")


def _remote_of(spec: Optional[Path], remote_url: Optional[str], keys: bool = False):
    """The remote store (``remote_url``, else $CINESYNTH_CACHE's or [cache] url), its settings,
    the spec's local store folder, and what the spec's lock names: output digests, or with
    ``keys`` its content keys (None: no spec or no lock)."""
    from .cache.open import cache_settings
    from .cache.remote import open_remote
    from .config import ProjectConfig

    if spec is not None:
        from .execute.session import Session

        session = Session.open(spec, warn=_err)
        settings = cache_settings(session.loaded.config.cache)
        local = session.cache.root
        lock = session.lock()
        named = {e.key if keys else e.output.get("digest") for e in lock.stages.values()} \
            if lock.stages else None
    else:
        settings = cache_settings(ProjectConfig.load(Path.cwd()).cache)
        local, named = settings.local, None
    url = remote_url or settings.url
    if url is None:
        raise CinesynthError("which remote cache?",
                             hint="pass --remote s3://bucket/prefix, or set [cache] url in cinesynth.toml")
    return open_remote(url, settings, _err), settings, local, named


def _shared_of(spec: Optional[Path], remote_url: Optional[str]):
    """A local store in front of the remote one, and the content keys the spec's lock names."""
    from .cache.shared import SharedStore

    remote, settings, local, keys = _remote_of(spec, remote_url, keys=True)
    if local is None:
        raise CinesynthError("which local cache?",
                             hint="name a spec, or set [cache] local in cinesynth.toml")
    return SharedStore(local, remote, settings.lease_seconds, warn=_err), keys


@cache_app.command("push")
def cache_push(spec: Optional[Path] = typer.Argument(None, help="a spec: push what its render.lock names"),
               remote: Optional[str] = typer.Option(None, help="s3://bucket/prefix (default: [cache] url)"),
               all_: bool = typer.Option(False, "--all", help="push every local entry")) -> None:
    """Upload local cache entries to a remote store (objects hashed first, checked on the server
    before their entries are written)."""
    from .cache.sync import push

    def go():
        store, keys = _shared_of(spec, remote)
        stats = push(store, None if all_ else keys)
        typer.echo(f"{stats['pushed']} entries pushed to {store.remote.url} ({stats['objects_sent']} objects "
                   f"sent), {stats['missing']} not in the local cache, {stats['damaged']} damaged")
        if stats["damaged"]:
            raise CinesynthError("damaged local objects were not pushed",
                                 hint="render again to make them, then push")

    _guard(go)


@cache_app.command("pull")
def cache_pull(spec: Optional[Path] = typer.Argument(None, help="a spec: pull what its render.lock names"),
               remote: Optional[str] = typer.Option(None, help="s3://bucket/prefix (default: [cache] url)"),
               all_: bool = typer.Option(False, "--all", help="pull every remote entry")) -> None:
    """Download remote cache entries into the local store (each object hashed on the way)."""
    from .cache.sync import pull

    def go():
        store, keys = _shared_of(spec, remote)
        stats = pull(store, None if all_ else keys)
        typer.echo(f"{stats['pulled']} entries pulled from {store.remote.url}, {stats['present']} already "
                   f"here, {stats['missing']} not on the remote, {stats['damaged']} damaged (dropped)")

    _guard(go)


@cache_app.command("verify")
def cache_verify(spec: Optional[Path] = typer.Argument(None, help="a spec whose cache to check"),
                 repair: bool = typer.Option(False, help="drop damaged objects and keys that "
                                                         "lead nowhere"),
                 remote: bool = typer.Option(False, "--remote", help="check the shared remote store")) -> None:
    """Hash every object against its name and check every key's object (like git fsck).
    Exits 1 when damage is found and --repair is not given."""

    def go():
        if remote or (spec is None and _remote_only()):
            from .cache.remote_gc import remote_verify

            store = _remote_of(spec, None)[0]
            stats = remote_verify(store, repair=repair)
        else:
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


@models_app.command("shapes-loras")
def models_shapes_loras(spec: Path = typer.Argument(..., help="a spec whose LoRAs to write"),
                        rank: int = typer.Option(64, min=1, max=1024,
                                                 help="LoRA rank, 1 to 1024 (64 or 128 are the released ones)"),
                        device: str = typer.Option("auto", callback=_device_option,
                                                   help="where to draw the weights: auto | cpu | cuda")) -> None:
    """Write full-shape random LoRAs for the LoRAs a spec names that no LoRA folder holds (for
    `profile: shapes` benchmarks: noise, ~0.6 GB each at rank 64), under the spec's lora_adpts/."""
    import time

    from .catalog.shapes.loras import write_missing_loras
    from .execute.session import missing_loras

    def go():
        loaded, wanted = missing_loras(spec)
        if not wanted:
            typer.echo("every LoRA the spec names exists: nothing written")
            return
        where = device
        if where == "auto":
            import torch

            where = "cuda" if torch.cuda.is_available() else "cpu"
        t0 = time.perf_counter()
        for path in write_missing_loras(loaded.spec_dir, wanted, rank=rank, device=where):
            typer.echo(f"wrote {path} ({path.stat().st_size / 1e9:.2f} GB)")
        typer.echo(f"{len(wanted)} LoRA(s) at rank {rank} in {time.perf_counter() - t0:.1f}s")

    _guard(go)


def main(argv: list[str] | None = None) -> None:
    app(args=argv, prog_name="cinesynth")


if __name__ == "__main__":  # pragma: no cover
    main()
