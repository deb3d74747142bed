"""Branch conditions: a small, safe expression language.

A branch's ``when`` is an expression over what the run has seen so far::

    events.hasReply("intro-email")              a reply to that step's email
    events.hasOpen("intro-email")               an open of that email (also hasClick, hasBounce)
    events.hasReply()                           a reply to any step
    events.has("voicemail", "follow-up-call")   any event type, on a step or on any step
    events.count("open", "intro-email") >= 2    how many events of a type
    events.callOutcome("call") == "voicemail"   how a sendVoice step's call ended (or none)
    events.hasCallOutcome("call", "busy")       the same, as a test (outcomes: answered,
                                                voicemail, no-answer, busy, failed, canceled)
    steps.visits("check-response") < 3          how often the run has entered a step
    contact.company == "Acme"                   a contact field (missing fields are none)
    plan_tier in ["pro", "enterprise"]          a run variable, by its bare name
    not events.hasBounce() and (a or b)         and, or, not, parentheses
    ==  !=  <  <=  >  >=  in  not in            comparisons; strings, numbers, true, false,
                                                none, lists

or the word ``default``, which always holds and must be a branch's last condition.

Expressions are parsed by Jinja2's expression parser, checked against a whitelist of node
types and functions when a plan is created, and evaluated by walking that checked tree:
they are never compiled to Python or run through ``eval``, so ``__import__("os")``,
``x.__class__`` or a filter cannot do anything but fail validation.

Missing contact fields and run variables evaluate to ``none``; comparing ``none`` (or values
of different types) by order is false rather than an error, so a condition over data a
contact lacks simply does not hold.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import jinja2
from jinja2 import nodes
from jinja2.parser import Parser

from dee.errors import ConditionError
from dee.plans._context import ConditionContext, EventCounter, EventTally
from dee.plans.call_outcomes import CALL_OUTCOME_EVENT, CALL_OUTCOMES

__all__ = [
    "DEFAULT",
    "EVENT_TYPES",
    "ConditionContext",
    "EventCounter",
    "EventTally",
    "check_condition",
    "evaluate_condition",
    "referenced_steps",
]

DEFAULT: Final = "default"

#: Event types a run can receive, and so the types a condition may name.
EVENT_TYPES: Final = frozenset(
    {
        "reply",
        "auto-reply",
        "open",
        "click",
        "bounce",
        "unsubscribe",
        "delivered",
        "dropped",
        "spamreport",
        "call-answered",
        "voicemail",
        "no-answer",
        "busy",
        "call-failed",
        CALL_OUTCOME_EVENT,
    }
)

#: Longest expression accepted, in characters; deeper nesting than this is also refused.
MAX_EXPRESSION_CHARS: Final = 1_000
MAX_EXPRESSION_NODES: Final = 200
MAX_EXPRESSION_DEPTH: Final = 32

_SHORTHANDS: Final = {
    "hasReply": "reply",
    "hasOpen": "open",
    "hasClick": "click",
    "hasBounce": "bounce",
}
# function name -> its arguments, for the functions that read a sendVoice step's call outcome
_CALL_FUNCTIONS: Final = {"callOutcome": ("step",), "hasCallOutcome": ("step", "outcome")}
# function name -> (minimum args, maximum args, which arg names a step, which an event type)
_EVENT_FUNCTIONS: Final[dict[str, tuple[int, int, int | None, int | None]]] = {
    **{name: (0, 1, 0, None) for name in _SHORTHANDS},
    "has": (1, 2, 1, 0),
    "count": (1, 2, 1, 0),
    "callOutcome": (1, 1, 0, None),
    "hasCallOutcome": (2, 2, 0, None),
}
_STEP_FUNCTIONS: Final[dict[str, tuple[int, int, int | None, int | None]]] = {
    "visits": (1, 1, 0, None),
}
_NAMESPACES: Final = {"events": _EVENT_FUNCTIONS, "steps": _STEP_FUNCTIONS}
_COMPARISONS: Final = frozenset({"eq", "ne", "lt", "lteq", "gt", "gteq", "in", "notin"})
_ENV: Final = jinja2.Environment(autoescape=False)


@dataclass(frozen=True, slots=True)
class ExpressionProblem:
    """One problem in one expression; the validator adds the step id."""

    code: str
    message: str


class _Invalid(Exception):
    def __init__(self, code: str, message: str) -> None:
        self.problem = ExpressionProblem(code, message)
        super().__init__(message)


@functools.lru_cache(maxsize=4096)
def _parse(source: str) -> nodes.Expr:
    if len(source) > MAX_EXPRESSION_CHARS:
        raise _Invalid(
            "expression-too-large",
            f"expression has {len(source):,} characters; the most is {MAX_EXPRESSION_CHARS:,}",
        )
    try:
        parser = Parser(_ENV, source, state="variable")
        expr = parser.parse_expression()
        if not parser.stream.eos:
            token = parser.stream.current
            raise _Invalid(
                "expression-syntax",
                f"unexpected {token.value!r} after a complete expression; "
                "join conditions with 'and' or 'or'",
            )
    except jinja2.TemplateSyntaxError as exc:
        raise _Invalid("expression-syntax", f"{exc.message}; check quotes and parentheses") from exc
    except RecursionError as exc:
        raise _Invalid(
            "expression-too-large", f"expression nests deeper than {MAX_EXPRESSION_DEPTH} levels"
        ) from exc
    return expr


@dataclass(slots=True)
class _Checker:
    step_ids: frozenset[str] | None
    call_steps: frozenset[str] | None = None
    problems: list[ExpressionProblem] = field(default_factory=list)
    steps_named: list[str] = field(default_factory=list)
    count: int = 0

    def check(self, node: nodes.Node, depth: int = 0) -> None:
        self.count += 1
        if self.count > MAX_EXPRESSION_NODES or depth > MAX_EXPRESSION_DEPTH:
            raise _Invalid(
                "expression-too-large",
                f"expression is too complex: at most {MAX_EXPRESSION_NODES} terms "
                f"nested at most {MAX_EXPRESSION_DEPTH} deep",
            )
        match node:
            case nodes.Const(value=value):
                if not (value is None or isinstance(value, str | int | float | bool)):
                    raise _Invalid("expression-forbidden", f"literal {value!r} is not allowed")
            case nodes.List(items=items) | nodes.Tuple(items=items):
                for item in items:
                    self.check(item, depth + 1)
            case nodes.Name(name=name):
                self._check_name(name)
                if name in _NAMESPACES:
                    raise _Invalid(
                        "expression-forbidden",
                        f"{name!r} is not a value: call one of its functions, "
                        f"such as {_example(name)}",
                    )
            case nodes.Getattr() | nodes.Getitem():
                self._check_path(node)
            case nodes.Call():
                self._check_call(node, depth)
            case nodes.And(left=left, right=right) | nodes.Or(left=left, right=right):
                self.check(left, depth + 1)
                self.check(right, depth + 1)
            case nodes.Not(node=inner):
                self.check(inner, depth + 1)
            case nodes.Compare(expr=expr, ops=ops):
                self.check(expr, depth + 1)
                for operand in ops:
                    if operand.op not in _COMPARISONS:
                        raise _Invalid(
                            "expression-forbidden", f"operator {operand.op!r} is not allowed"
                        )
                    self.check(operand.expr, depth + 1)
            case _:
                raise _Invalid(
                    "expression-forbidden",
                    f"{_describe(node)} is not allowed; use comparisons, and/or/not, "
                    "events.*, steps.visits, contact fields and run variables",
                )

    def _check_name(self, name: str) -> None:
        if name.startswith("_"):
            raise _Invalid(
                "expression-forbidden", f"name {name!r} is not allowed: names may not start with _"
            )

    def _check_path(self, node: nodes.Getattr | nodes.Getitem) -> None:
        """A field path such as ``contact.company.size`` or ``contact["first-name"]``."""
        current: nodes.Node = node
        while isinstance(current, nodes.Getattr | nodes.Getitem):
            if isinstance(current, nodes.Getattr):
                key: object = current.attr
            elif isinstance(current.arg, nodes.Const) and isinstance(current.arg.value, str | int):
                key = current.arg.value
            else:
                raise _Invalid(
                    "expression-forbidden", "an index must be a literal string or number"
                )
            if isinstance(key, str) and key.startswith("_"):
                raise _Invalid(
                    "expression-forbidden",
                    f"field {key!r} is not allowed: fields may not start with _",
                )
            current = current.node
        if not isinstance(current, nodes.Name):
            raise _Invalid(
                "expression-forbidden",
                f"fields can only be read from contact or a run variable, not {_describe(current)}",
            )
        self._check_name(current.name)
        if current.name in _NAMESPACES:
            raise _Invalid(
                "expression-unknown-function",
                f"{_dotted(node)!r} is not a function call; use {_example(current.name)}",
            )

    def _check_call(self, node: nodes.Call, depth: int) -> None:
        callee = node.node
        if not (
            isinstance(callee, nodes.Getattr)
            and isinstance(callee.node, nodes.Name)
            and callee.node.name in _NAMESPACES
        ):
            raise _Invalid(
                "expression-unknown-function",
                f"unknown function {_dotted(callee)!r}; expected one of {_all_functions()}",
            )
        namespace = callee.node.name
        functions = _NAMESPACES[namespace]
        if callee.attr not in functions:
            raise _Invalid(
                "expression-unknown-function",
                f"unknown function {f'{namespace}.{callee.attr}'!r}; "
                f"expected one of {_all_functions()}",
            )
        if node.kwargs or node.dyn_args is not None or node.dyn_kwargs is not None:
            raise _Invalid(
                "expression-bad-arguments",
                f"{namespace}.{callee.attr} takes plain literal arguments only",
            )
        low, high, step_arg, type_arg = functions[callee.attr]
        name = f"{namespace}.{callee.attr}"
        if not low <= len(node.args) <= high:
            want = str(low) if low == high else f"{low} to {high}"
            raise _Invalid(
                "expression-bad-arguments",
                f"{name} takes {want} argument(s), got {len(node.args)}",
            )
        for index, arg in enumerate(node.args):
            self.count += 1
            if not (isinstance(arg, nodes.Const) and isinstance(arg.value, str)):
                raise _Invalid(
                    "expression-bad-arguments",
                    f"argument {index + 1} of {name} must be a quoted string",
                )
            if index == step_arg:
                self.steps_named.append(arg.value)
                if self.step_ids is not None and arg.value not in self.step_ids:
                    self.problems.append(
                        ExpressionProblem(
                            "expression-unknown-step",
                            f"{name} names step {arg.value!r}, which is not in this plan",
                        )
                    )
            if callee.attr in _CALL_FUNCTIONS:
                self._check_call_arg(name, _CALL_FUNCTIONS[callee.attr][index], arg.value)
            if index == type_arg and arg.value not in EVENT_TYPES:
                self.problems.append(
                    ExpressionProblem(
                        "expression-unknown-event-type",
                        f"{name} names event type {arg.value!r}; expected one of "
                        f"{', '.join(sorted(EVENT_TYPES))}",
                    )
                )

    def _check_call_arg(self, name: str, kind: str, value: str) -> None:
        """An argument of a call-outcome function: a sendVoice step, or an outcome."""
        if kind == "outcome" and value not in CALL_OUTCOMES:
            self.problems.append(
                ExpressionProblem(
                    "expression-unknown-call-outcome",
                    f"{name} names call outcome {value!r}; expected one of "
                    f"{', '.join(CALL_OUTCOMES)}",
                )
            )
        calls = self.call_steps
        known = self.step_ids is None or value in self.step_ids
        if kind == "step" and known and calls is not None and value not in calls:
            self.problems.append(
                ExpressionProblem(
                    "expression-not-a-call-step",
                    f"{name} names step {value!r}, which is not a sendVoice step: only a "
                    "call has an outcome; name one of the plan's sendVoice steps",
                )
            )


def _example(namespace: str) -> str:
    return 'events.hasReply("step-id")' if namespace == "events" else 'steps.visits("step-id")'


def _all_functions() -> str:
    return ", ".join(
        f"{namespace}.{name}" for namespace, fns in _NAMESPACES.items() for name in fns
    )


def _dotted(node: nodes.Node) -> str:
    if isinstance(node, nodes.Name):
        return node.name
    if isinstance(node, nodes.Getattr):
        return f"{_dotted(node.node)}.{node.attr}"
    if isinstance(node, nodes.Const):
        return repr(node.value)
    if isinstance(node, nodes.Call):
        return f"{_dotted(node.node)}(...)"
    return _describe(node)


def _describe(node: nodes.Node) -> str:
    if isinstance(node, nodes.Filter):
        return f"filter {node.name!r}"
    if isinstance(node, nodes.Test):
        return f"test 'is {node.name}'"
    return f"a {type(node).__name__.lower()} expression"


def clear_caches() -> None:
    """Forget parsed expressions (they are cached by source text)."""
    _parse.cache_clear()


def check_condition(
    source: str,
    *,
    step_ids: Iterable[str] | None = None,
    call_steps: Iterable[str] | None = None,
) -> list[ExpressionProblem]:
    """Every problem with a ``when`` expression; an empty list when it is fine.

    ``step_ids``, when given, are the steps a condition may name; ``call_steps`` the
    (``sendVoice``) steps whose call outcome it may read.
    """
    if source.strip() == DEFAULT:
        return []
    checker = _Checker(
        frozenset(step_ids) if step_ids is not None else None,
        frozenset(call_steps) if call_steps is not None else None,
    )
    try:
        checker.check(_parse(source))
    except _Invalid as exc:
        return [exc.problem]
    return checker.problems


def referenced_steps(source: str) -> list[str]:
    """The step ids a (valid) expression names, in order."""
    if source.strip() == DEFAULT:
        return []
    checker = _Checker(None)
    try:
        checker.check(_parse(source))
    except _Invalid:
        return []
    return checker.steps_named


def evaluate_condition(
    source: str, context: ConditionContext, *, step_id: str | None = None
) -> bool:
    """Whether ``source`` holds in ``context``. ``default`` always holds.

    Raises :class:`ConditionError` for an expression that validation would reject.
    """
    if source.strip() == DEFAULT:
        return True
    problems = check_condition(source)
    if problems:
        raise ConditionError(problems[0].message, step_id=step_id, code=problems[0].code)
    return bool(_Evaluator(context).eval(_parse(source)))


class _Evaluator:
    def __init__(self, context: ConditionContext) -> None:
        self._context = context

    def eval(self, node: nodes.Node) -> Any:
        match node:
            case nodes.Const(value=value):
                return value
            case nodes.List(items=items) | nodes.Tuple(items=items):
                return [self.eval(item) for item in items]
            case nodes.Name(name=name):
                return self._root(name)
            case nodes.Getattr(node=inner, attr=attr):
                return _field(self.eval(inner), attr)
            case nodes.Getitem(node=inner, arg=nodes.Const(value=key)):
                return _field(self.eval(inner), key)
            case nodes.Call():
                return self._call(node)
            case nodes.And(left=left, right=right):
                return bool(self.eval(left)) and bool(self.eval(right))
            case nodes.Or(left=left, right=right):
                return bool(self.eval(left)) or bool(self.eval(right))
            case nodes.Not(node=inner):
                return not self.eval(inner)
            case nodes.Compare(expr=expr, ops=ops):
                left_value = self.eval(expr)
                for operand in ops:
                    right_value = self.eval(operand.expr)
                    if not _compare(operand.op, left_value, right_value):
                        return False
                    left_value = right_value
                return True
        raise ConditionError(f"cannot evaluate {_describe(node)}", code="expression-forbidden")

    def _root(self, name: str) -> Any:
        if name == "contact":
            return self._context.contact
        return self._context.variables.get(name)

    def _call(self, node: nodes.Call) -> Any:
        assert isinstance(node.node, nodes.Getattr)
        namespace = node.node.node
        assert isinstance(namespace, nodes.Name)
        function = node.node.attr
        args = [arg.value for arg in node.args if isinstance(arg, nodes.Const)]
        if namespace.name == "steps":
            return self._context.visits.get(args[0], 0)
        if function in _CALL_FUNCTIONS:
            outcome = self._context.call_outcomes.get(args[0])
            return outcome if function == "callOutcome" else outcome == args[1]
        events = self._context.events
        if function in _SHORTHANDS:
            return events.count(_SHORTHANDS[function], args[0] if args else None) > 0
        step = args[1] if len(args) > 1 else None
        count = events.count(args[0], step)
        return count > 0 if function == "has" else count


def _field(value: Any, key: object) -> Any:
    if isinstance(value, Mapping):
        return value.get(key)
    if isinstance(value, list | tuple) and isinstance(key, int) and -len(value) <= key < len(value):
        return value[key]
    return None


def _compare(op: str, left: Any, right: Any) -> bool:
    try:
        match op:
            case "eq":
                return bool(left == right)
            case "ne":
                return bool(left != right)
            case "lt":
                return bool(left < right)
            case "lteq":
                return bool(left <= right)
            case "gt":
                return bool(left > right)
            case "gteq":
                return bool(left >= right)
            case "in":
                return bool(left in right)
            case "notin":
                return bool(left not in right)
    except TypeError:
        # none < 3, "a" > 1, 3 in none: data the contact lacks makes a condition false.
        return False
    return False
