"""DEE's exceptions.

Every exception DEE raises on purpose derives from :class:`DeeError`::

    DeeError
    ├── PlanLoadError          the plan file cannot be read or parsed (path, line, column)
    ├── PlanInvalidError       the plan cannot be accepted; ``problems`` lists why
    │   ├── PlanDataError      the document has the wrong shape (types, fields, step types)
    │   └── PlanValidationError  the plan is well-formed but wrong (unreachable step, ...)
    ├── ContentError           a template or script cannot be loaded or rendered
    │   └── MissingVariablesError  a render lacks variables the content uses
    ├── ConditionError         a branch condition failed while it was evaluated
    ├── RegistryError          the plan registry cannot do what was asked
    │   └── PlanNotFoundError  no such plan, or no such version of it
    ├── LedgerError            the send ledger's database failed (dee.runs.ledger)
    ├── TokenError             a signed link token is forged or broken (dee.runs.tracking)
    ├── TemporalSetupError     Temporal is unreachable or lacks DEE's search attributes
    │                          (dee.runs.temporal)
    ├── PayloadKeyError        DEE_PAYLOAD_KEYS cannot be used as it is (dee.runs.codec)
    ├── PayloadDecryptError    an encrypted payload's key is not listed, or it was altered
    │                          (dee.runs.codec)
    ├── RunError               a run cannot be started, steered or read (dee.runs.errors)
    │   ├── RunNotFoundError       no run with that id
    │   ├── RunAlreadyStartedError the plan and contact already have an active run
    │   ├── RunClosedError         the run has ended
    │   ├── RunUnavailableError    no worker answers for the run
    │   └── ContactSuppressedError the contact's address or phone is suppressed
    ├── SuppressionError       the suppression list's database failed (dee.runs.suppressions)
    │   └── HitStoreError      the tracking-hit and suppression store failed (dee.server.hits)
    ├── InvalidContactValueError  not an email address or E.164 number (dee.runs.suppressions)
    ├── InboundError           an inbound message cannot be read (dee.server.inbound_mail)
    ├── SendGridError          a SendGrid event webhook call is not valid (dee.server.sendgrid)
    │   └── SignatureError     its signature or timestamp does not check out
    ├── SchemaVersionError     the database is not at the schema revision this release needs
    │                          and the process may not migrate it (dee.storage.schema)
    ├── DevError               ``dee dev`` cannot start (dee.cli.dev)
    └── SmtpCatcherError       the local mail catcher cannot start (dee.cli._smtp_catcher)

Errors that belong to one module are defined there, next to what raises them, and exported
from :mod:`dee` like the rest.

Problems (:class:`Problem`) carry a stable ``code`` slug, the offending ``step_id`` when
there is one, and a message that says what was expected. Data problems and plan problems
are kept apart: fix the data first, then the plan.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

__all__ = [
    "ConditionError",
    "ContentError",
    "DeeError",
    "MissingVariablesError",
    "PlanDataError",
    "PlanInvalidError",
    "PlanLoadError",
    "PlanNotFoundError",
    "PlanValidationError",
    "Problem",
    "RegistryError",
]


@dataclass(frozen=True, slots=True, order=True)
class Problem:
    """One thing wrong with a plan.

    ``code`` is a stable slug such as ``unreachable-step``; ``step_id`` names the step
    the problem is about (``None`` for plan-wide problems); ``location`` is a path into
    the document such as ``steps[2].duration`` when the problem is about one field.
    """

    step_id: str | None
    code: str
    message: str
    location: str | None = None

    def __str__(self) -> str:
        where = f"step {self.step_id!r}" if self.step_id is not None else "plan"
        return f"{where}: {self.code}: {self.message}"


class DeeError(Exception):
    """The root of DEE's exceptions."""

    #: True when the failure is passing (a database that is down or locked): the same
    #: request may succeed later, so the server answers 503 with Retry-After, not 400.
    transient: bool = False


class PlanLoadError(DeeError):
    """A plan file could not be read or parsed."""

    def __init__(
        self,
        message: str,
        *,
        path: str | None = None,
        line: int | None = None,
        column: int | None = None,
    ) -> None:
        self.path = path
        self.line = line
        self.column = column
        where = path or "<plan>"
        if line is not None:
            where += f":{line}"
            if column is not None:
                where += f":{column}"
        super().__init__(f"{where}: {message}")


class PlanInvalidError(DeeError):
    """A plan cannot be accepted; ``problems`` says every reason at once."""

    def __init__(self, problems: Iterable[Problem], *, plan_id: str | None = None) -> None:
        self.problems: tuple[Problem, ...] = tuple(problems)
        self.plan_id = plan_id
        count = len(self.problems)
        head = f"plan {plan_id!r}" if plan_id else "plan"
        lines = "\n".join(f"  {problem}" for problem in self.problems)
        super().__init__(f"{head} has {count} problem{'s' if count != 1 else ''}:\n{lines}")

    @property
    def codes(self) -> list[str]:
        return [problem.code for problem in self.problems]


class PlanDataError(PlanInvalidError):
    """The plan document has the wrong shape: a missing field, a bad value, a bad type."""


class PlanValidationError(PlanInvalidError):
    """The plan is well-formed but breaks a rule: see :mod:`dee.plans.validation`."""


class ContentError(DeeError):
    """A template or script cannot be loaded or rendered."""

    def __init__(
        self, message: str, *, content_id: str | None = None, step_id: str | None = None
    ) -> None:
        self.content_id = content_id
        self.step_id = step_id
        super().__init__(message)


class MissingVariablesError(ContentError):
    """Rendering needs variables (``contact.firstName``, ``product``) that were not given."""

    def __init__(self, missing: Sequence[str], *, plan_id: str | None = None) -> None:
        self.missing = tuple(sorted(missing))
        self.plan_id = plan_id
        names = ", ".join(self.missing)
        super().__init__(f"missing variables {names}: give them in the contact or as run variables")


class ConditionError(DeeError):
    """A branch condition could not be evaluated."""

    def __init__(self, message: str, *, step_id: str | None = None, code: str) -> None:
        self.step_id = step_id
        self.code = code
        super().__init__(message)


class RegistryError(DeeError):
    """The plan registry cannot do what was asked."""

    def __init__(
        self,
        message: str = "",
        *,
        plan_id: str | None = None,
        version: int | None = None,
    ) -> None:
        self.plan_id = plan_id
        self.version = version
        super().__init__(message)


class PlanNotFoundError(RegistryError):
    """There is no such plan, or no such version of it."""

    def __init__(self, plan_id: str, *, version: int | None = None) -> None:
        what = f"plan {plan_id!r}" if version is None else f"plan {plan_id!r} v{version}"
        super().__init__(
            f"{what} does not exist: see `dee plans list`", plan_id=plan_id, version=version
        )
