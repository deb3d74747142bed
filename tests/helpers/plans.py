"""Small valid plans for tests."""

from __future__ import annotations

from dee.plans.content import EmailTemplate, PlanContent
from dee.plans.model import ExecutionPlan


def simple_plan(plan_id: str, *, hours: int = 1, created_by: str = "tests") -> ExecutionPlan:
    """Wait ``hours``, then end: valid without any content."""
    return ExecutionPlan.model_validate(
        {
            "id": plan_id,
            "name": "Simple",
            "metadata": {"createdBy": created_by},
            "steps": [
                {"type": "wait", "id": "pause", "duration": {"hours": hours}},
                {"type": "end", "id": "done", "outcome": "finished"},
            ],
            "transitions": "linear",
        }
    )


def email_plan(plan_id: str, *, template_id: str = "intro") -> ExecutionPlan:
    """Send one email from template ``template_id``, then end."""
    return ExecutionPlan.model_validate(
        {
            "id": plan_id,
            "name": "Email",
            "metadata": {"createdBy": "tests"},
            "steps": [
                {
                    "type": "sendEmail",
                    "id": "send",
                    "templateId": template_id,
                    "subject": "Hello {{ contact.firstName }}",
                },
                {"type": "end", "id": "done", "outcome": "sent"},
            ],
            "transitions": "linear",
        }
    )


def email_content(
    html: str = "<p>Hi {{ contact.firstName }}</p>", *, template_id: str = "intro"
) -> PlanContent:
    """Content for :func:`email_plan`."""
    return PlanContent(templates={template_id: EmailTemplate(html=html)})
