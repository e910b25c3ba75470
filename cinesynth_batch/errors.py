"""Errors that a user can act on: where, what value, what to do.

Every error the CLI prints comes through here and reads
``file:line:col: path: message (hint)``. Errors are collected, not raised one by one,
so a spec with ten mistakes reports ten lines.
"""

from __future__ import annotations

from dataclasses import dataclass, field


def one_line(text: str) -> str:
    """``text`` with line breaks and other control characters written as escapes, so one
    problem is always one line."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def first_line(text: str, limit: int) -> str:
    """The first line of ``text``, at most ``limit`` characters; `` ...`` marks what was left out."""
    lines = text.strip().splitlines()
    first = lines[0] if lines else ""
    cut = len(first) > limit or len(lines) > 1
    return first[:limit] + (" ..." if cut else "")


@dataclass(frozen=True)
class Where:
    """A place in a source file (1-based line and column)."""

    file: str
    line: int
    col: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}"


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the input."""

    message: str
    where: Where | None = None
    path: str = ""
    hint: str | None = None

    def render(self) -> str:
        head = f"{self.where}: " if self.where else ""
        at = f"{self.path}: " if self.path else ""
        tail = f" ({self.hint})" if self.hint else ""
        return one_line(f"{head}{at}{self.message}{tail}")


class CinesynthError(Exception):
    """Base class of every error the CLI reports without a traceback."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None, where: Where | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.where = where

    def render(self) -> str:
        return Problem(self.message, self.where, hint=self.hint).render()


class SpecError(CinesynthError):
    """The spec (or a preset it uses) is invalid. Holds every problem found."""

    exit_code = 2

    def __init__(self, problems: list[Problem]):
        self.problems = sorted(dict.fromkeys(problems), key=_problem_order)
        super().__init__(f"{len(self.problems)} problem(s) in the spec")

    def render(self) -> str:
        return "\n".join(p.render() for p in self.problems)


class ModelError(CinesynthError):
    """A model is missing or unusable."""

    exit_code = 3


class RenderError(CinesynthError):
    """A stage failed while rendering."""

    exit_code = 1


class StageError(Exception):
    """A stage failed for a reason the user can act on (bad input file, missing model, ...).
    Raised by stages and by the model and media code they call."""

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint


class FallbackWarning(RuntimeWarning):
    """A requested runtime setting cannot be used on this machine; a stated alternative is used
    (and recorded in the manifest)."""


def _problem_order(p: Problem) -> tuple:
    if p.where is None:
        return ("~", 0, 0, p.path, p.message)
    return (p.where.file, p.where.line, p.where.col, p.path, p.message)


@dataclass
class Problems:
    """A collector: add problems as they are found, raise once at the end."""

    items: list[Problem] = field(default_factory=list)

    def add(self, message: str, where: Where | None = None, path: str = "", hint: str | None = None) -> None:
        self.items.append(Problem(message, where, path, hint))

    def extend(self, other: "Problems | list[Problem]") -> None:
        self.items.extend(other.items if isinstance(other, Problems) else other)

    def __bool__(self) -> bool:
        return bool(self.items)

    def raise_if_any(self) -> None:
        if self.items:
            raise SpecError(self.items)
