"""What a key entry must hold before its digest and extension name a file.

An entry (``keys/ab/<key>.json`` here, or the same JSON on a remote store) is read back from
disk or from a server, so it is input like any other: its digest and extension become an
object's path, which is hashed, published or deleted. A digest that is not 64 hex digits, an
extension with anything but dots, letters and digits, or a size that is not a count makes the
entry unusable, as a damaged one is.
"""

from __future__ import annotations

import re
from typing import Any

#: a larger entry is not read
ENTRY_MAX_BYTES = 1 << 20
DIGEST = re.compile(r"[0-9a-f]{64}")
EXT = re.compile(r"(\.[A-Za-z0-9]{1,10}){0,3}")


def entry_fields(data: Any) -> dict[str, Any] | None:
    """``digest``, ``ext``, ``size``, ``node``, ``kind``, ``meta`` and ``stamp`` of a parsed entry,
    or None when any of them is missing or not what it must be."""
    if not isinstance(data, dict):
        return None
    digest, ext, size = data.get("digest"), data.get("ext"), data.get("size")
    node, kind, meta = data.get("node", ""), data.get("kind", ""), data.get("meta", {})
    ok = isinstance(digest, str) and DIGEST.fullmatch(digest) \
        and isinstance(ext, str) and EXT.fullmatch(ext) \
        and isinstance(size, int) and not isinstance(size, bool) and size >= 0 \
        and isinstance(node, str) and isinstance(kind, str) and isinstance(meta, dict)
    if not ok:
        return None
    stamp = data.get("stamp")
    good_stamp = isinstance(stamp, list) and len(stamp) == 3 and \
        all(isinstance(x, int) and not isinstance(x, bool) for x in stamp)
    return {"digest": digest, "ext": ext, "size": size, "node": node, "kind": kind, "meta": meta,
            "stamp": tuple(stamp) if good_stamp else None}
