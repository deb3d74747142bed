"""DEE: a durable engine for outbound communication workflows, on Temporal.

Plans are written in Python (:mod:`dee.builder`) or as JSON/YAML documents
(:func:`load_plan`), validated as a whole (:func:`validate_plan`) and stored as immutable,
numbered versions with their content (:class:`PlanRegistry`).
"""

from __future__ import annotations

from dee.builder import execution_plan, steps, transitions
from dee.conditions import ConditionContext, EventTally, check_condition, evaluate_condition
from dee.content import (
    EmailTemplate,
    PlanContent,
    RenderedEmail,
    load_content,
    render_email,
    render_script,
    required_variables,
)
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
from dee.graph import to_mermaid
from dee.loader import load_plan, parse_plan, plan_from_document
from dee.plan import (
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
from dee.registry import PlanRegistry, PlanSummary, PlanVersion
from dee.validation import validate_plan

__all__ = [
    "BranchStep",
    "Condition",
    "ConditionContext",
    "ConditionError",
    "ContentError",
    "DeeError",
    "Duration",
    "EmailTemplate",
    "EndStep",
    "EventTally",
    "ExecutionPlan",
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
    "SendEmailStep",
    "SendVoiceStep",
    "Step",
    "Tracking",
    "Transition",
    "Voicemail",
    "WaitStep",
    "check_condition",
    "evaluate_condition",
    "execution_plan",
    "load_content",
    "load_plan",
    "parse_plan",
    "plan_from_document",
    "render_email",
    "render_script",
    "required_variables",
    "steps",
    "to_mermaid",
    "transitions",
    "validate_plan",
]
