"""The stage's side of the qwen3-tts worker (see ``qwen_worker.py`` and docs/tts-worker.md).

The worker runs under the tts environment's Python: ``$CINESYNTH_TTS_PYTHON``, else
``.venv-tts/bin/python`` in the project checkout (``make tts-env`` creates it). A loaded worker
is what the residency holds for the ``tts`` role; it stops when released (its stdin closes).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path
from typing import Any

from ..errors import ModelError
from ..errors import StageError

WORKER = Path(__file__).resolve().parent / "qwen_worker.py"
REPO = Path(__file__).resolve().parents[2]
ENV_VAR = "CINESYNTH_TTS_PYTHON"
DTYPES = {"float32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16",
          "float16": "float16", "fp16": "float16"}
HINT = "run `make tts-env` in the project checkout, or set CINESYNTH_TTS_PYTHON to a Python that has qwen-tts"


class WorkerRequestError(Exception):
    def __init__(self, field: str, message: str, hint: str | None = None):
        super().__init__(message)
        self.field, self.message, self.hint = field, message, hint


def worker_python() -> Path:
    chosen = os.environ.get(ENV_VAR)
    p = Path(chosen).expanduser() if chosen else REPO / ".venv-tts" / "bin" / "python"
    if not p.is_file():
        raise ModelError(f"the qwen3-tts worker environment is missing ({p})", hint=HINT)
    return p


def _tail(path: Path, n: int = 1500) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")[-n:].strip()
    except OSError:
        return ""


class QwenWorker:
    """One worker process with one model loaded."""

    def __init__(self, proc: subprocess.Popen, log: Path, info: dict[str, Any]):
        self.proc, self.log, self.info = proc, log, info

    @classmethod
    def start(cls, model_dir: Path, device: str = "cpu", dtype: str = "float32") -> "QwenWorker":
        fd, name = tempfile.mkstemp(prefix="qwen-tts-worker-", suffix=".log")
        os.close(fd)
        log = Path(name)
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1")}
        with open(log, "wb") as err:
            proc = subprocess.Popen(
                [str(worker_python()), str(WORKER), str(model_dir), "--device", device,
                 "--dtype", DTYPES.get(str(dtype).lower(), "float32")],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, env=env,
                text=True, encoding="utf-8")
        first = proc.stdout.readline() if proc.stdout else ""
        try:
            info = json.loads(first) if first else {}
        except ValueError:
            info = {}
        if not info.get("ready"):
            proc.kill()
            proc.wait()
            why = info.get("error") or _tail(log) or f"exit code {proc.returncode}"
            raise StageError(f"tts: the qwen3-tts worker could not load {model_dir}: {why}",
                             hint="check the model folder (a Qwen3-TTS-12Hz-* CustomVoice folder)")
        return cls(proc, log, info)

    def speak(self, request: dict[str, Any]) -> dict[str, Any]:
        if self.proc.poll() is not None or self.proc.stdin is None or self.proc.stdout is None:
            raise StageError(f"tts: the qwen3-tts worker has stopped: {_tail(self.log)}")
        try:
            self.proc.stdin.write(json.dumps(request, ensure_ascii=False) + "\n")
            self.proc.stdin.flush()
            line = self.proc.stdout.readline()
        except (BrokenPipeError, OSError) as exc:
            raise StageError(f"tts: lost the qwen3-tts worker ({exc}): {_tail(self.log)}") from exc
        if not line:
            raise StageError(f"tts: the qwen3-tts worker died: {_tail(self.log)}")
        reply = json.loads(line)
        if not reply.get("ok"):
            raise WorkerRequestError(reply.get("field", "text"), reply.get("error", "failed"), reply.get("hint"))
        return reply

    def close(self) -> None:
        proc = getattr(self, "proc", None)
        if proc is None or proc.poll() is not None:
            return
        try:
            if proc.stdin:
                proc.stdin.close()
            proc.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            proc.kill()
            proc.wait()
        self.log.unlink(missing_ok=True)

    def __del__(self) -> None:
        self.close()


def ensure_tiny_qwen(dst: Path) -> Path:
    """Build the tiny random Qwen3-TTS model at ``dst`` (in the worker environment), once."""
    if (dst / "config.json").is_file() and (dst / "speech_tokenizer" / "config.json").is_file():
        return dst
    python = worker_python()
    tmp = dst.parent / f".{dst.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        proc = subprocess.run([str(python), str(WORKER), str(tmp), "--build-tiny"],
                              capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        if proc.returncode != 0:
            raise ModelError(f"building the tiny qwen3-tts model failed: {proc.stderr[-1500:]}", hint=HINT)
        try:
            os.replace(tmp, dst)
        except OSError:
            if not (dst / "config.json").is_file():   # another builder did not win the race either
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dst

