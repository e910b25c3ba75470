"""Jinja2 in string values, rendered in a sandbox with strict undefined variables.

Templates are rendered after YAML parsing, value by value, so every error keeps the line
and column of the string it came from. Each render is bounded by ``[limits]`` of
``cinesynth.toml``: what a template builds (``template_chars``), the items its ranges make
(``template_range``) and its run time (``template_seconds``); a refusal names the limit.
"""

from __future__ import annotations

import difflib
import functools
import math
import re
import sys
import time
from typing import Any, Iterator

import jinja2
from jinja2.compiler import CodeGenerator, optimizeconst
from jinja2.sandbox import SandboxedEnvironment

from ..errors import Problems
from .yamlpos import LDict, LList


class TemplateLimit(Exception):
    """A template went past one of the limits (the message names it)."""


class _Run:
    """What one template render has used so far."""

    def __init__(self, limits: Any):
        self.limits = limits
        self.deadline = time.monotonic() + limits.template_seconds
        self.range_items = 0
        self.lines = 0

    def check_time(self) -> None:
        if time.monotonic() > self.deadline:
            raise TemplateLimit(f"ran longer than {self.limits.template_seconds:g} s (template_seconds)")

    def check_size(self, n: int, what: str = "its output") -> None:
        if n > self.limits.template_chars:
            raise TemplateLimit(f"{what} would be {n} long, over the limit of "
                                f"{self.limits.template_chars} (template_chars)")


def _length(value: Any) -> int:
    return len(value) if isinstance(value, (str, bytes, list, tuple)) else 0


class _BoundedCodeGenerator(CodeGenerator):
    """Compiles ``a ~ b`` to a join whose size is checked before it is made."""

    @optimizeconst
    def visit_Concat(self, node: Any, frame: Any) -> None:
        self.write("environment.bounded_join((")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("))")


DIGITS = re.compile(r"\d+")


class BoundedEnvironment(SandboxedEnvironment):
    """The jinja2 sandbox with bounds on size and time: ``*``, ``**`` and ``+`` on big values,
    ``range``, calls and filters are checked before they run; a tracer stops a render that
    runs past its time."""

    intercepted_binops = frozenset({"*", "**", "+", "%"})
    code_generator_class = _BoundedCodeGenerator

    def __init__(self, limits: Any):
        super().__init__(undefined=jinja2.StrictUndefined, autoescape=False, keep_trailing_newline=True)
        self.limits = limits
        self.run: _Run | None = None
        self.globals["range"] = self._range
        self.filters = {name: self._bounded_filter(fn) for name, fn in self.filters.items()}

    def _active(self) -> _Run:
        if self.run is None:
            self.run = _Run(self.limits)
        return self.run

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        run = self._active()
        run.check_time()
        if operator == "*":
            for seq, n in ((left, right), (right, left)):
                if _length(seq) and isinstance(n, int):
                    run.check_size(_length(seq) * max(n, 0), "a repeated value")
        elif operator == "+":
            run.check_size(_length(left) + _length(right), "a joined value")
        elif operator == "%" and isinstance(left, str):
            self._check_format(run, left)
            items = right if isinstance(right, (tuple, list)) else (right,)
            run.check_size(len(left) + sum(len(str(i)) for i in items[:64]) * max(1, len(items) // 64),
                           "a formatted value")
        elif operator == "**" and isinstance(left, int) and isinstance(right, (int, float)):
            if abs(left) > 1 and right > 0 and right * math.log10(abs(left)) > run.limits.template_chars:
                raise TemplateLimit(f"{left} ** {right} has more digits than the limit of "
                                    f"{run.limits.template_chars} (template_chars)")
        return super().call_binop(context, operator, left, right)

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805
        run = __self._active()
        run.check_time()
        if __obj != __self._range:                  # range() has its own limit
            __self._check_args(run, __obj, args, kwargs)
        result = super().call(__context, __obj, *args, **kwargs)
        run.check_size(_length(result))
        return result

    def _check_args(self, run: _Run, fn: Any, args: tuple, kwargs: dict) -> None:
        values = [*args, *kwargs.values()]
        for v in values:
            if isinstance(v, int) and not isinstance(v, bool):
                run.check_size(abs(v), "a number given to a function")
        name = getattr(fn, "__name__", "")
        owner = getattr(fn, "__self__", None)
        if isinstance(owner, str):                      # a str method: the text comes first
            values = [owner, *values]
        if name in ("replace", "do_replace") and len(values) >= 3:
            run.check_size(_length(values[0]) * max(1, _length(values[2])), "the replaced text")
        if name in ("format", "format_map", "do_format") and values and isinstance(values[0], str):
            self._check_format(run, values[0])
        if name in ("join", "do_join", "sync_do_join") and values and isinstance(values[0], (list, tuple)):
            sep = _length(values[1]) if len(values) > 1 else 0
            run.check_size(sum(len(str(v)) + sep for v in values[0]), "the joined text")
        if name == "expandtabs" and values:
            run.check_size(_length(values[0]) * max([8, *(v for v in values[1:] if isinstance(v, int))]),
                           "the expanded text")

    def wrap_str_format(self, value: Any) -> Any:
        """``text.format`` is wrapped by the sandbox when it is looked up: check its widths then."""
        wrapped = super().wrap_str_format(value)
        if wrapped is not None:
            self._check_format(self._active(), value.__self__)
        return wrapped

    def bounded_join(self, parts: tuple) -> str:
        """``a ~ b ~ ...``: the size is checked before the text is made."""
        run = self._active()
        texts = [str(p) for p in parts]
        run.check_size(sum(len(t) for t in texts), "a joined value")
        return "".join(texts)

    @staticmethod
    def _check_format(run: _Run, text: str) -> None:
        """Widths and precisions written in a format string (``%0999999999d``, ``{:>99999999}``)."""
        for digits in DIGITS.findall(text):
            if len(digits) > 6 or int(digits) > run.limits.template_chars:
                run.check_size(int(digits[:30]), "a width in a format string")

    def _bounded_filter(self, fn: Any) -> Any:
        env = self

        @functools.wraps(fn)
        def bounded(*args: Any, **kwargs: Any) -> Any:
            run = env._active()
            run.check_time()
            plain = [a for a in args if not isinstance(a, (jinja2.runtime.Context, jinja2.Environment,
                                                           jinja2.nodes.EvalContext))]
            env._check_args(run, fn, tuple(plain), kwargs)
            result = fn(*args, **kwargs)
            run.check_size(_length(result))
            return result

        return bounded

    def _range(self, *args: int) -> Iterator[int]:
        run = self._active()
        items = range(*args)
        if len(items) > run.limits.template_range:
            raise TemplateLimit(f"range of {len(items)} items is over the limit of "
                                f"{run.limits.template_range} (template_range)")
        return self._counted(run, items)

    @staticmethod
    def _counted(run: _Run, items: range) -> Iterator[int]:
        for i in items:
            run.range_items += 1
            if run.range_items > run.limits.template_range:
                raise TemplateLimit(f"ranges made more than {run.limits.template_range} items in one "
                                    "template (template_range)")
            if run.range_items % 1024 == 0:
                run.check_time()
            yield i

    def render_bounded(self, tpl: jinja2.Template, context: dict[str, Any]) -> str:
        """Render with a fresh budget: output length, range items and wall time."""
        run = self.run = _Run(self.limits)
        parts: list[str] = []
        size = 0
        previous = sys.gettrace()

        def local(frame: Any, event: str, arg: Any) -> Any:
            run.lines += 1
            if run.lines % 256 == 0:
                run.check_time()
            return local

        def tracer(frame: Any, event: str, arg: Any) -> Any:
            return local if frame.f_code.co_filename == "<template>" else None

        sys.settrace(tracer)
        try:
            for chunk in tpl.generate(context):
                size += len(chunk)
                run.check_size(size)
                parts.append(chunk)
        finally:
            sys.settrace(previous)
            self.run = None
        return "".join(parts)


class Templater:
    """Renders every string of a YAML tree that contains template markup."""

    def __init__(self, limits: Any = None) -> None:
        if limits is None:
            from ..config import Limits

            limits = Limits()
        self._env = BoundedEnvironment(limits)
        self._compiled: dict[str, jinja2.Template] = {}

    def render_str(self, text: str, context: dict[str, Any]) -> str:
        tpl = self._compiled.get(text)
        if tpl is None:
            tpl = self._env.from_string(text)
            self._compiled[text] = tpl
        return self._env.render_bounded(tpl, context)

    def render_tree(self, node: Any, context: dict[str, Any], problems: Problems, path: str,
                    skip: frozenset[str] = frozenset()) -> Any:
        """Render strings in ``node`` in place (containers) and return the new node."""
        if isinstance(node, LDict):
            for key in list(node.keys()):
                if key in skip:
                    continue
                value = node[key]
                sub = f"{path}.{key}" if path else str(key)
                if isinstance(value, str):
                    node[key] = self._render_one(value, context, problems, sub, node.where_value(key))
                else:
                    node[key] = self.render_tree(value, context, problems, sub)
            return node
        if isinstance(node, LList):
            for i, value in enumerate(node):
                sub = f"{path}[{i}]"
                if isinstance(value, str):
                    node[i] = self._render_one(value, context, problems, sub, node.where_item(i))
                else:
                    node[i] = self.render_tree(value, context, problems, sub)
            return node
        return node

    def _render_one(self, value: str, context: dict[str, Any], problems: Problems, path: str,
                    where: Any) -> str:
        if "{{" not in value and "{%" not in value:
            return value
        try:
            return self.render_str(value, context)
        except jinja2.UndefinedError as exc:
            name = _undefined_name(str(exc))
            close = difflib.get_close_matches(name, [k for k in context if not k.startswith("_")], n=1)
            hint = (f"did you mean '{close[0]}'?" if close
                    else "define it under 'vars:' or in the scene's 'matrix:'")
            problems.add(f"undefined template variable '{name}' in {value!r}", where, path, hint)
        except jinja2.TemplateSyntaxError as exc:
            problems.add(f"template syntax error: {exc.message} in {value!r}", where, path,
                         hint="template markup is {{ name }}; quote the whole YAML value")
        except TemplateLimit as exc:
            problems.add(f"template {exc}", where, path,
                         hint="make it smaller, or raise the limit under [limits] in cinesynth.toml")
        except jinja2.exceptions.SecurityError as exc:
            problems.add(f"template not allowed: {exc}", where, path,
                         hint="templates may only read variables and call filters")
        except RecursionError:
            problems.add("template nests too deeply", where, path, hint="simplify the template")
        except MemoryError:
            problems.add("template needs more memory than there is", where, path,
                         hint="make the template smaller")
        except Exception as exc:  # a filter raising on a bad value, for instance
            problems.add(f"template failed: {type(exc).__name__}: {exc}".rstrip(": "), where, path)
        return value


def _undefined_name(message: str) -> str:
    # jinja2: "'colour' is undefined" or "'dict object' has no attribute 'x'"
    if "has no attribute" in message:
        return message.rsplit("'", 2)[-2]
    if message.startswith("'") and "'" in message[1:]:
        return message[1:message.index("'", 1)]
    return message
