"""CLI commands in a fresh interpreter, checked not to import the heavy libraries."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

_CODE = ("import sys; from cinesynth_batch.cli import main\n"
         "try: main(sys.argv[2:])\n"
         "except SystemExit as e: assert e.code in (0, None), f'exit code {e.code}'\n"
         "heavy = [m for m in sys.argv[1].split(',') if m in sys.modules]\n"
         "assert not heavy, f'imported {heavy}'\n")


def light_cli(*args: str, forbidden: tuple[str, ...] = ("torch", "diffusers"),
              cwd: Path | None = None) -> subprocess.CompletedProcess:
    """``cinesynth ARGS`` in a new Python process; its return code is non-zero when the command
    failed or imported any of ``forbidden``."""
    return subprocess.run([sys.executable, "-c", _CODE, ",".join(forbidden), *args], capture_output=True,
                          text=True, cwd=cwd)
