"""DEE: a durable engine for outbound communication workflows, on Temporal.

Plans are written in Python (:mod:`dee.plans.builder`) or as JSON/YAML documents
(:func:`load_plan`), validated as a whole (:func:`validate_plan`) and stored as immutable,
numbered versions with their content (:class:`PlanRegistry`).
"""

from __future__ import annotations

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
    Tracking,
    Transition,
    Voicemail,
    WaitStep,
)
from dee.plans.registry import PlanRegistry, PlanSummary, PlanVersion
from dee.plans.validation import validate_plan
from dee.runs.client import (
    RunAlreadyStartedError,
    RunClosedError,
    RunError,
    RunNotFoundError,
    RunSummary,
    RunUnavailableError,
    cancel_run,
    list_runs,
    run_state,
    send_event,
    start_run,
)
from dee.runs.ledger import LedgerError, SendLedger
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
from dee.server.app import create_app
from dee.server.hits import HitStore, HitStoreError, Suppressions
from dee.server.inbound import InboundError, InboundStore
from dee.server.sendgrid import SendGridError, SignatureError
from dee.settings import Settings

__all__ = [
    "BranchStep",
    "Condition",
    "ConditionContext",
    "ConditionError",
    "Contact",
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
    "LedgerError",
    "MissingVariablesError",
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
    "SendEmailStep",
    "SendGridError",
    "SendLedger",
    "SendVoiceStep",
    "Settings",
    "SignatureError",
    "Step",
    "StepVisit",
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
    "steps",
    "to_mermaid",
    "transitions",
    "validate_plan",
]
