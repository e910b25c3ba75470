"""Matrix values read from a file: ``matrix: {style: {file: styles.csv}}``.

A ``.csv`` file gives one value per row, a mapping from the header's names to the row's texts (the
seed's ``settings/fashion_hair/s1.csv`` as it is: ``{{ style.English_Prompt }}``); a ``.yaml`` /
``.yml`` file holds a list of values. The file is relative to the spec, must be inside the project,
and is bounded like a spec (``spec_bytes``, and for YAML ``yaml_nodes`` / ``yaml_depth``); the
number of scenes it makes is bounded by ``scenes``. The file is read when the spec is loaded, so a
new row is a new scene and an edited row changes that scene's keys only.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from ..errors import Problems, Where
from . import trust as t
from .yamlpos import LDict, LList, decode_text, load_yaml

SUFFIXES = (".csv", ".yaml", ".yml")


def read_matrix_files(scenes: Any, spec_dir: Path, root: Path, limits: Any, problems: Problems,
                      display: Any) -> bool:
    """Replace each ``{file: PATH}`` matrix value of ``scenes`` by the values the file holds; False
    when a file could not be used (its problems are added: the scenes it makes cannot be known)."""
    ok = True
    for index, scene in enumerate(scenes if isinstance(scenes, list) else []):
        matrix = scene.get("matrix") if isinstance(scene, dict) else None
        if not isinstance(matrix, LDict):
            continue
        for name, value in list(matrix.items()):
            if isinstance(value, dict) and set(value) == {"file"}:
                where = value.where_value("file") if isinstance(value, LDict) else matrix.where_value(name)
                path = f"scenes[{index}].matrix.{name}.file"
                values = _read(value["file"], spec_dir, root, limits, problems, display, where, path)
                ok = ok and values is not None
                matrix.set(name, values if values is not None else LList(), matrix.key_locs.get(name),
                           matrix.value_locs.get(name))
    return ok


def _read(value: Any, spec_dir: Path, root: Path, limits: Any, problems: Problems, display: Any,
          where: Where | None, path: str) -> LList | None:
    if not isinstance(value, str):
        problems.add(f"{value!r} is not a file path", where, path, hint="matrix: {name: {file: values.csv}}")
        return None
    bad = t.path_problem(value)
    file = t.resolve_inside(spec_dir, value) if bad is None else None
    if file is None or not t.inside(file, root):
        problems.add(f"matrix file '{t.printable(value)}' is not a file inside the project ({root})", where, path,
                     hint=bad.hint if bad else "put the file in the project")
        return None
    if file.suffix.lower() not in SUFFIXES:
        problems.add(f"matrix file '{value}' is not .csv, .yaml or .yml", where, path)
        return None
    if not file.is_file():
        problems.add(f"matrix file '{value}' not found", where, path,
                     hint=f"paths are relative to the spec's folder {display(spec_dir)}")
        return None
    shown = display(file)
    if file.suffix.lower() == ".csv":
        values = _read_csv(file, shown, limits, problems)
    else:
        values = load_yaml(file, shown, problems, limits)
        if values is not None and not isinstance(values, list):
            problems.add("a matrix file holds a list of values", Where(shown, 1, 1), path)
            return None
    if values is not None and not values:
        problems.add(f"matrix file '{value}' holds no values", where, path)
        return None
    return values


def _read_csv(file: Path, shown: str, limits: Any, problems: Problems) -> LList | None:
    """One mapping per row, keyed by the header; each value placed at its row."""
    size = file.stat().st_size
    if size > limits.spec_bytes:
        problems.add(f"the file is {size} bytes, over the limit of {limits.spec_bytes} (spec_bytes)",
                     Where(shown, 1, 1), hint="split it, or raise [limits] spec_bytes in cinesynth.toml")
        return None
    text = decode_text(file.read_bytes(), shown, problems)
    if text is None:
        return None
    reader = csv.reader(io.StringIO(text, newline=""))
    header = [h.strip() for h in next(reader, [])]
    if not header or not all(header):
        problems.add("a matrix .csv starts with a header row naming every column", Where(shown, 1, 1))
        return None
    out = LList(loc=Where(shown, 1, 1))
    for row in reader:
        at = Where(shown, reader.line_num, 1)
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            problems.add(f"the row has {len(row)} values for {len(header)} columns", at)
            continue
        item = LDict(loc=at)
        for key, cell in zip(header, row):
            item.set(key, cell.strip(), at, at)
        out.append(item)
        out.item_locs.append(at)
    return out
