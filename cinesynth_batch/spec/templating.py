"""Jinja2 in string values, rendered in a sandbox with strict undefined variables.

Templates are rendered after YAML parsing, value by value, so every error keeps the line
and column of the string it came from.
"""

from __future__ import annotations

import difflib
from typing import Any

import jinja2
from jinja2.sandbox import SandboxedEnvironment

from ..errors import Problems
from .yamlpos import LDict, LList


class Templater:
    """Renders every string of a YAML tree that contains template markup."""

    def __init__(self) -> None:
        self._env = SandboxedEnvironment(undefined=jinja2.StrictUndefined, autoescape=False,
                                         keep_trailing_newline=True)
        self._compiled: dict[str, jinja2.Template] = {}

    def render_str(self, text: str, context: dict[str, Any]) -> str:
        tpl = self._compiled.get(text)
        if tpl is None:
            tpl = self._env.from_string(text)
            self._compiled[text] = tpl
        return tpl.render(context)

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
        except jinja2.exceptions.SecurityError as exc:
            problems.add(f"template not allowed: {exc}", where, path,
                         hint="templates may only read variables and call filters")
        except Exception as exc:  # a filter raising on a bad value, for instance
            problems.add(f"template failed: {exc}", where, path)
        return value


def _undefined_name(message: str) -> str:
    # jinja2: "'colour' is undefined" or "'dict object' has no attribute 'x'"
    if "has no attribute" in message:
        return message.rsplit("'", 2)[-2]
    if message.startswith("'") and "'" in message[1:]:
        return message[1:message.index("'", 1)]
    return message
