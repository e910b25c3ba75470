"""Content keys: what a stage's output depends on, hashed.

``key = sha256(canonical_json({v, kind, model, params, inputs}))`` where ``model`` is the
model identity (id + revision or file digest), ``params`` the canonical parameters (seed
actually used and expert boundary included; LoRAs with their file digests) and ``inputs``
the digests of the input artifacts, never their paths. ``KEY_VERSION`` changes whenever the
hashing or a stage's output format changes, so old entries stop matching.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

KEY_VERSION = 1


def canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False)


def content_key(kind: str, model: dict[str, Any] | None, params: dict[str, Any],
                inputs: dict[str, Any]) -> str:
    payload = {"v": KEY_VERSION, "kind": kind, "model": model, "params": params, "inputs": inputs}
    return hashlib.sha256(canonical(payload).encode("utf-8")).hexdigest()
