"""DEE: a durable engine for outbound communication workflows, on Temporal.

Plans are written in Python (:mod:`dee.plans.builder`) or as JSON/YAML documents
(:func:`load_plan`), validated as a whole (:func:`validate_plan`) and stored as immutable,
numbered versions with their content (:class:`PlanRegistry`); runs are started, steered and
inspected through :func:`start_run` (:func:`start_runs` for many contacts), :func:`send_event`,
:func:`run_state` and friends.

``import dee`` stays light: what needs the database or the web server (the registry, the
ledger and the server's stores, :func:`create_app`) is imported on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from dee.errors import (
    ConditionError,
    ContentError,
    DeeError,
    MissingVariablesError,
    PlanDataError,
    PlanInvalidError,
    PlanLoadError,
    PlanNotFoundError,
    PlanValidationError,
    Problem,
    RegistryError,
)
from dee.plans.builder import execution_plan, steps, transitions
from dee.plans.conditions import ConditionContext, EventTally, check_condition, evaluate_condition
from dee.plans.content import (
    EmailTemplate,
    PlanContent,
    RenderedEmail,
    load_content,
    render_email,
    render_script,
    required_variables,
)
from dee.plans.graph import to_mermaid
from dee.plans.loader import load_plan, parse_plan, plan_from_document
from dee.plans.model import (
    BranchStep,
    Condition,
    Duration,
    EndStep,
    ExecutionPlan,
    PlanMetadata,
    SendEmailStep,
    SendVoiceStep,
    Step,
    StepType,
    Tracking,
    Transition,
    Voicemail,
    WaitStep,
)
from dee.plans.validation import validate_plan
from dee.plans.versions import PlanSummary, PlanVersion
from dee.runs.bulk import BulkResult, ContactRow, RowResult, start_runs
from dee.runs.channels import PlaceCallInput, PlaceCallResult, SendEmailInput, SendEmailResult
from dee.runs.client import (
    RunSummary,
    cancel_run,
    list_runs,
    run_state,
    send_event,
    start_run,
)
from dee.runs.codec import PayloadDecryptError, PayloadKeyError
from dee.runs.errors import (
    ContactSuppressedError,
    RunAlreadyStartedError,
    RunClosedError,
    RunError,
    RunNotFoundError,
    RunUnavailableError,
)
from dee.runs.model import (
    WORKFLOW_NAME,
    Contact,
    RunEvent,
    RunFailure,
    RunInput,
    RunResult,
    RunState,
    StepVisit,
)
from dee.runs.temporal import TemporalSetupError, connect, ensure_search_attributes
from dee.runs.tracking import TokenError
from dee.settings import Settings

if TYPE_CHECKING:
    from dee.plans.registry import PlanRegistry, upgrade_database
    from dee.runs.contacts import ContactIds, ContactIdsError
    from dee.runs.ledger import LedgerError, SendLedger
    from dee.runs.suppressions import InvalidContactValueError, SuppressionError, Suppressions
    from dee.server.app import create_app
    from dee.server.hits import HitStore, HitStoreError
    from dee.server.inbound_mail import InboundError
    from dee.server.inbound_store import InboundStore
    from dee.server.sendgrid import SendGridError, SignatureError
    from dee.storage.schema import SchemaVersionError

__all__ = [
    "BranchStep",
    "BulkResult",
    "Condition",
    "ConditionContext",
    "ConditionError",
    "Contact",
    "ContactIds",
    "ContactIdsError",
    "ContactRow",
    "ContactSuppressedError",
    "ContentError",
    "DeeError",
    "Duration",
    "EmailTemplate",
    "EndStep",
    "EventTally",
    "ExecutionPlan",
    "HitStore",
    "HitStoreError",
    "InboundError",
    "InboundStore",
    "InvalidContactValueError",
    "LedgerError",
    "MissingVariablesError",
    "PayloadDecryptError",
    "PayloadKeyError",
    "PlaceCallInput",
    "PlaceCallResult",
    "PlanContent",
    "PlanDataError",
    "PlanInvalidError",
    "PlanLoadError",
    "PlanMetadata",
    "PlanNotFoundError",
    "PlanRegistry",
    "PlanSummary",
    "PlanValidationError",
    "PlanVersion",
    "Problem",
    "RegistryError",
    "RenderedEmail",
    "RowResult",
    "RunAlreadyStartedError",
    "RunClosedError",
    "RunError",
    "RunEvent",
    "RunFailure",
    "RunInput",
    "RunNotFoundError",
    "RunResult",
    "RunState",
    "RunSummary",
    "RunUnavailableError",
    "SchemaVersionError",
    "SendEmailInput",
    "SendEmailResult",
    "SendEmailStep",
    "SendGridError",
    "SendLedger",
    "SendVoiceStep",
    "Settings",
    "SignatureError",
    "Step",
    "StepType",
    "StepVisit",
    "SuppressionError",
    "Suppressions",
    "TemporalSetupError",
    "TokenError",
    "Tracking",
    "Transition",
    "Voicemail",
    "WORKFLOW_NAME",
    "WaitStep",
    "cancel_run",
    "check_condition",
    "connect",
    "create_app",
    "ensure_search_attributes",
    "evaluate_condition",
    "execution_plan",
    "list_runs",
    "load_content",
    "load_plan",
    "parse_plan",
    "plan_from_document",
    "render_email",
    "render_script",
    "required_variables",
    "run_state",
    "send_event",
    "start_run",
    "start_runs",
    "steps",
    "to_mermaid",
    "transitions",
    "upgrade_database",
    "validate_plan",
]

#: Names imported on first use, and the module each comes from.
_LAZY: dict[str, str] = {
    "PlanRegistry": "dee.plans.registry",
    "upgrade_database": "dee.plans.registry",
    "ContactIds": "dee.runs.contacts",
    "ContactIdsError": "dee.runs.contacts",
    "LedgerError": "dee.runs.ledger",
    "SendLedger": "dee.runs.ledger",
    "InvalidContactValueError": "dee.runs.suppressions",
    "SuppressionError": "dee.runs.suppressions",
    "Suppressions": "dee.runs.suppressions",
    "create_app": "dee.server.app",
    "HitStore": "dee.server.hits",
    "HitStoreError": "dee.server.hits",
    "InboundError": "dee.server.inbound_mail",
    "InboundStore": "dee.server.inbound_store",
    "SendGridError": "dee.server.sendgrid",
    "SignatureError": "dee.server.sendgrid",
    "SchemaVersionError": "dee.storage.schema",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'dee' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
