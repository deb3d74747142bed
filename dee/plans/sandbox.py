"""Jinja2's sandbox with bounds: a template from a plan author cannot stall a worker.

Jinja2's own sandbox keeps templates away from Python's internals, but not from the CPU or
memory: ``{{ 9 ** (9 ** 7) }}``, ``{{ 'ab' * 50000000 }}`` or three nested
``range(100000)`` loops are all allowed. :class:`BoundedSandbox` intercepts ``**`` and
``*`` (which also keeps them from being folded at compile time), yields at most
:data:`MAX_RANGE` items per ``range`` and :data:`MAX_ITERATIONS` per render, drops
``lipsum``, and :func:`render_bounded` stops a render past its output limit or
:data:`RENDER_SECONDS`. A bound hit is a :class:`RenderLimitError`.

:func:`constant_problem` finds the same excesses in constant expressions without
evaluating them, so validation can refuse a template before any run renders it.
"""

from __future__ import annotations

import contextvars
import math
import time
from collections.abc import Iterator, Mapping
from typing import Any, Final

import jinja2
from jinja2 import nodes
from jinja2.exceptions import SecurityError
from jinja2.sandbox import ImmutableSandboxedEnvironment

__all__ = [
    "MAX_ITERATIONS",
    "MAX_OUTPUT_CHARS",
    "MAX_POWER_DIGITS",
    "MAX_RANGE",
    "RENDER_SECONDS",
    "BoundedSandbox",
    "RenderLimitError",
    "constant_problem",
    "render_bounded",
]

#: Items one ``range()`` may yield, and ``range`` items one render may go through.
MAX_RANGE: Final = 10_000
MAX_ITERATIONS: Final = 100_000
#: Most digits a power may have (``10 ** 1000`` is allowed, ``10 ** 1001`` is not).
MAX_POWER_DIGITS: Final = 1_000
#: Most characters one render may produce, and one repetition (``'ab' * n``) may make.
MAX_OUTPUT_CHARS: Final = 1024 * 1024
#: Longest one render may take.
RENDER_SECONDS: Final = 2.0


class RenderLimitError(SecurityError):
    """A template went past one of the sandbox's bounds."""


class _Budget:
    def __init__(self, seconds: float) -> None:
        self.deadline = time.monotonic() + seconds
        self.iterations = 0

    def tick(self) -> None:
        self.iterations += 1
        if self.iterations > MAX_ITERATIONS:
            raise RenderLimitError(f"loops over range() go past {MAX_ITERATIONS:,} items")
        if self.iterations % 1000 == 0:
            self.check_time()

    def check_time(self) -> None:
        if time.monotonic() > self.deadline:
            raise RenderLimitError(f"rendering takes longer than {RENDER_SECONDS:g} s")


_BUDGET: contextvars.ContextVar[_Budget | None] = contextvars.ContextVar("budget", default=None)


def _bounded_range(*args: int) -> Iterator[int]:
    numbers = range(*args)
    if len(numbers) > MAX_RANGE:
        raise RenderLimitError(f"range() of {len(numbers):,} items; the most is {MAX_RANGE:,}")
    budget = _BUDGET.get()
    for number in numbers:
        if budget is not None:
            budget.tick()
        yield number


def _power_digits(base: Any, exponent: Any) -> float:
    """About how many digits ``base ** exponent`` has (0 when it is small or not numbers)."""
    numbers = (int, float)
    if not isinstance(base, numbers) or not isinstance(exponent, numbers):
        return 0.0
    if isinstance(base, bool) or isinstance(exponent, bool) or abs(base) <= 1 or exponent <= 0:
        return 0.0
    return float(exponent) * math.log10(abs(base))


def _repeat_size(left: Any, right: Any) -> int:
    """How many items (characters) ``left * right`` makes when it repeats a sequence."""
    for sequence, times in ((left, right), (right, left)):
        if isinstance(sequence, (str, list, tuple)) and isinstance(times, int):
            return len(sequence) * max(times, 0)
    return 0


def _check(operator: str, left: Any, right: Any) -> str | None:
    if operator == "**" and _power_digits(left, right) > MAX_POWER_DIGITS:
        return f"a power of more than {MAX_POWER_DIGITS:,} digits"
    if operator == "*":
        if _repeat_size(left, right) > MAX_OUTPUT_CHARS:
            return f"a repetition of more than {MAX_OUTPUT_CHARS:,} items"
        both_ints = isinstance(left, int) and isinstance(right, int)
        if both_ints and left.bit_length() + right.bit_length() > MAX_POWER_DIGITS * 4:
            return f"a product of more than {MAX_POWER_DIGITS:,} digits"
    return None


class BoundedSandbox(ImmutableSandboxedEnvironment):
    """The immutable sandbox, bounded (see the module's doc)."""

    intercepted_binops = frozenset({"**", "*"})

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.globals["range"] = _bounded_range
        self.globals.pop("lipsum", None)

    def call_binop(
        self, context: jinja2.runtime.Context, operator: str, left: Any, right: Any
    ) -> Any:
        problem = _check(operator, left, right)
        if problem is not None:
            raise RenderLimitError(f"the template computes {problem}")
        return super().call_binop(context, operator, left, right)


def render_bounded(
    template: jinja2.Template, context: Mapping[str, Any], *, max_chars: int = MAX_OUTPUT_CHARS
) -> str:
    """``template`` rendered with ``context``, within the bounds; :class:`RenderLimitError`
    past any of them (``max_chars`` of output, :data:`RENDER_SECONDS`, ...)."""
    budget = _Budget(RENDER_SECONDS)
    token = _BUDGET.set(budget)
    try:
        pieces: list[str] = []
        size = 0
        for piece in template.generate(context):
            size += len(piece)
            if size > max_chars:
                raise RenderLimitError(f"the output is longer than {max_chars:,} characters")
            budget.check_time()
            pieces.append(piece)
        return "".join(pieces)
    finally:
        _BUDGET.reset(token)


def _constant(node: nodes.Node) -> tuple[bool, Any]:
    """``(True, value)`` for a constant number, string or bounded power or product of them,
    computed only when within the bounds; ``(False, None)`` otherwise."""
    if isinstance(node, nodes.Const) and isinstance(node.value, (int, float, str)):
        return True, node.value
    if isinstance(node, nodes.Neg):
        known, value = _constant(node.node)
        return (True, -value) if known and isinstance(value, (int, float)) else (False, None)
    if isinstance(node, (nodes.Pow, nodes.Mul)):
        operator = "**" if isinstance(node, nodes.Pow) else "*"
        left_known, left = _constant(node.left)
        right_known, right = _constant(node.right)
        if not (left_known and right_known) or _check(operator, left, right) is not None:
            return False, None
        try:
            return True, left**right if operator == "**" else left * right
        except (ArithmeticError, TypeError, ValueError):
            return False, None
    return False, None


def constant_problem(tree: nodes.Template) -> tuple[int, str] | None:
    """The line and description of the first power or repetition with constant operands
    past the bounds in ``tree``, or ``None``; nothing unbounded is evaluated."""
    for node in tree.find_all((nodes.Pow, nodes.Mul)):
        assert isinstance(node, nodes.BinExpr)
        left_known, left = _constant(node.left)
        right_known, right = _constant(node.right)
        if not (left_known and right_known):
            # An operand that is itself an excess is reported where it is.
            continue
        problem = _check("**" if isinstance(node, nodes.Pow) else "*", left, right)
        if problem is not None:
            return node.lineno, problem
    return None
