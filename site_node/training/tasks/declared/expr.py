"""Derived features: small arithmetic expressions over columns, parsed without ``eval``.

A column whose name is not a Python identifier is quoted in backticks, as in pandas::

    power = "`Torque [Nm]` * `Rotational speed [rpm]` * 2 * pi / 60"

Allowed: numbers, column names, ``pi`` and ``e``, ``+ - * / **``, unary minus, and the
functions ``abs sqrt log log1p exp sin cos tanh minimum maximum``. Anything else is refused
when the spec is validated, so a task file can never run code of its own.
"""

from __future__ import annotations

import ast
import math
import re
from dataclasses import dataclass
from typing import Any

__all__ = ["Expression", "parse_expression"]

_QUOTED = re.compile(r"`([^`]+)`")
_CONSTANTS = {"pi": math.pi, "e": math.e}
_UNARY_FUNCS = ("abs", "sqrt", "log", "log1p", "exp", "sin", "cos", "tanh")
_BINARY_FUNCS = ("minimum", "maximum")
_BINOPS = (ast.Add, ast.Sub, ast.Mult, ast.Div, ast.Pow)


@dataclass(frozen=True)
class Expression:
    """A parsed expression; ``columns`` are the input columns it reads."""

    source: str
    tree: ast.Expression
    names: dict[str, str]  # placeholder identifier -> column name

    @property
    def columns(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(self.names.values()))

    def evaluate(self, columns: dict[str, Any]) -> Any:
        """The expression over numpy arrays (``columns``: name -> array)."""
        import numpy as np

        def run(node: ast.AST) -> Any:
            if isinstance(node, ast.Expression):
                return run(node.body)
            if isinstance(node, ast.Constant):
                return float(node.value)  # type: ignore[arg-type]
            if isinstance(node, ast.Name):
                if node.id in self.names:
                    return np.asarray(columns[self.names[node.id]], np.float64)
                return _CONSTANTS[node.id]
            if isinstance(node, ast.UnaryOp):
                value = run(node.operand)
                return -value if isinstance(node.op, ast.USub) else value
            if isinstance(node, ast.BinOp):
                left, right = run(node.left), run(node.right)
                op = node.op
                if isinstance(op, ast.Add):
                    return left + right
                if isinstance(op, ast.Sub):
                    return left - right
                if isinstance(op, ast.Mult):
                    return left * right
                if isinstance(op, ast.Div):
                    return left / right
                return left**right
            assert isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
            args = [run(a) for a in node.args]
            return getattr(np, node.func.id)(*args)

        with np.errstate(all="ignore"):
            return run(self.tree)


def parse_expression(source: str) -> Expression:
    """Parse ``source``; raise ValueError naming what is not allowed."""
    names: dict[str, str] = {}

    def quote(match: re.Match[str]) -> str:
        key = f"__col{len(names)}"
        names[key] = match.group(1)
        return key

    text = _QUOTED.sub(quote, source)
    if "`" in text:
        raise ValueError(f"unbalanced backtick in {source!r}")
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as exc:
        raise ValueError(f"not an expression: {source!r} ({exc.msg})") from None
    callees = {id(n.func) for n in ast.walk(tree) if isinstance(n, ast.Call)}
    for node in ast.walk(tree):
        _check_node(node, source, names, callees)
    return Expression(source, tree, names)


def _check_node(node: ast.AST, source: str, names: dict[str, str], callees: set[int]) -> None:
    if isinstance(node, (ast.Expression, ast.Load, ast.USub, ast.UAdd, *_BINOPS)):
        return
    if isinstance(node, ast.Constant):
        if isinstance(node.value, bool) or not isinstance(node.value, int | float):
            raise ValueError(f"only numbers are allowed as constants in {source!r}")
        return
    if isinstance(node, ast.Name):
        if id(node) in callees:
            return  # a function name, checked with its call
        if node.id not in names and node.id not in _CONSTANTS:
            names[node.id] = node.id  # a plain column name such as s2
        return
    if isinstance(node, ast.UnaryOp | ast.BinOp):
        if isinstance(node, ast.BinOp) and not isinstance(node.op, _BINOPS):
            raise ValueError(f"operator {type(node.op).__name__} is not allowed in {source!r}")
        if isinstance(node, ast.UnaryOp) and not isinstance(node.op, ast.USub | ast.UAdd):
            raise ValueError(f"operator {type(node.op).__name__} is not allowed in {source!r}")
        return
    if isinstance(node, ast.Call):
        func = node.func.id if isinstance(node.func, ast.Name) else None
        arity = 1 if func in _UNARY_FUNCS else 2 if func in _BINARY_FUNCS else None
        if arity is None or node.keywords or len(node.args) != arity:
            allowed = ", ".join((*_UNARY_FUNCS, *_BINARY_FUNCS))
            raise ValueError(
                f"call {ast.unparse(node)!r} is not allowed in {source!r}; functions: {allowed} "
                "(minimum and maximum take two arguments, the others one)"
            )
        return
    raise ValueError(f"{type(node).__name__} is not allowed in {source!r}")
