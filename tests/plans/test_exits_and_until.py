"""``exitOn``, a wait's ``until``, ``pauseOnAutoReply`` and optional metadata: the document
form, the builder and the validation problems, each naming where it is."""

from __future__ import annotations

from typing import Any

import pytest

import dee
from dee.errors import PlanDataError, Problem
from dee.plans.exits import DEFAULT_EXIT_ON, exits_for

END = {"type": "end", "id": "done", "outcome": "finished"}
EMAIL = {"type": "sendEmail", "id": "intro", "templateId": "tmpl", "subject": "Hi"}


def document(*, wait: dict[str, Any] | None = None, **top: Any) -> dict[str, Any]:
    return {
        "id": "p",
        "name": "P",
        "steps": [
            EMAIL,
            {"type": "wait", "id": "pause", "duration": {"days": 3}, **(wait or {})},
            END,
        ],
        **top,
    }


CASES: list[tuple[str, dict[str, Any], list[Problem]]] = [
    # Every exit name, and a wait that ends early on a reply.
    (
        "valid",
        document(
            exitOn=["reply", "unsubscribe", "bounce", "complaint"],
            wait={"until": 'events.hasReply("intro")'},
        ),
        [],
    ),
    # An exit name DEE does not know: a plan-wide problem, with what it accepts.
    (
        "unknown-exit",
        document(exitOn=["reply", "replies"]),
        [
            Problem(
                None,
                "unknown-exit-event",
                "exitOn names 'replies'; expected some of reply, unsubscribe, bounce, complaint",
            )
        ],
    ),
    # `until: default` would end the wait at once.
    (
        "until-default",
        document(wait={"until": "default"}),
        [
            Problem(
                "pause",
                "until-always-holds",
                "until is 'default', which always holds, so the wait would end at once: "
                "write a condition such as 'events.hasReply(\"intro-email\")' or drop until",
            )
        ],
    ),
    # `until` is checked like a branch's condition, and names the wait.
    (
        "until-unknown-step",
        document(wait={"until": 'events.hasReply("nowhere")'}),
        [
            Problem(
                "pause",
                "expression-unknown-step",
                "until ('events.hasReply(\"nowhere\")'): events.hasReply names step "
                "'nowhere', which is not in this plan",
            )
        ],
    ),
    # Attacks on the expression language fail validation there too.
    (
        "until-forbidden",
        document(wait={"until": "contact.__class__"}),
        [
            Problem(
                "pause",
                "expression-forbidden",
                "until ('contact.__class__'): field '__class__' is not allowed: fields "
                "may not start with _",
            )
        ],
    ),
]


@pytest.mark.parametrize(("name", "subject", "expected"), CASES, ids=[c[0] for c in CASES])
def test_rule(name: str, subject: dict[str, Any], expected: list[Problem]) -> None:
    assert dee.validate_plan(dee.plan_from_document(subject)) == expected


def test_exits_default_and_unsubscribe_always_ends_a_run() -> None:
    assert exits_for(None) == {
        "unsubscribe": "unsubscribed",
        "bounce": "bounced",
        "spamreport": "complained",
    }
    assert DEFAULT_EXIT_ON == ("unsubscribe", "bounce", "complaint")
    # A plan that lists only replies still ends on an unsubscribe.
    assert exits_for(("reply",)) == {"reply": "replied", "unsubscribe": "unsubscribed"}
    assert exits_for(()) == {"unsubscribe": "unsubscribed"}


def test_the_builder_mirrors_the_document() -> None:
    built = dee.execution_plan(
        id="p",
        name="P",
        steps=[
            dee.steps.send_email(id="intro", template_id="tmpl", subject="Hi"),
            dee.steps.wait(id="pause", duration={"days": 3}, until='events.hasReply("intro")'),
            dee.steps.end(id="done", outcome="finished"),
        ],
        exit_on=["reply", "unsubscribe", "bounce", "complaint"],
        pause_on_auto_reply={"max_days": 10},
    )
    loaded = dee.plan_from_document(
        document(
            exitOn=["reply", "unsubscribe", "bounce", "complaint"],
            wait={"until": 'events.hasReply("intro")'},
            pauseOnAutoReply={"maxDays": 10},
        )
    )
    assert built == loaded
    assert built.to_document()["exitOn"] == ["reply", "unsubscribe", "bounce", "complaint"]
    assert built.to_document()["pauseOnAutoReply"] == {"maxDays": 10}


def test_metadata_is_optional_and_the_creator_comes_from_the_caller(tmp_path: Any) -> None:
    plan = dee.plan_from_document(
        {
            "id": "p",
            "name": "P",
            "steps": [{"type": "wait", "id": "w", "duration": {"days": 1}}, END],
        }
    )
    assert plan.metadata.created_by is None
    with dee.PlanRegistry(f"sqlite:///{tmp_path / 'dee.db'}") as registry:
        named = registry.create(plan, created_by="crm-sync")
        assert named.plan.metadata.created_by == "crm-sync"
        # The plan's own createdBy wins over the caller's.
        own = plan.model_copy(
            update={"id": "q", "metadata": plan.metadata.model_copy(update={"created_by": "ana"})}
        )
        assert registry.create(own, created_by="crm-sync").plan.metadata.created_by == "ana"
        # Nobody named: the OS user.
        anonymous = registry.create(plan.model_copy(update={"id": "r"}))
        assert anonymous.plan.metadata.created_by
        assert registry.get("p").plan.metadata.created_by == "crm-sync"
        with pytest.raises(dee.RegistryError, match="createdBy is 201 characters"):
            registry.create(plan.model_copy(update={"id": "s"}), created_by="x" * 201)


@pytest.mark.parametrize(
    ("pause", "message"),
    [
        ({"maxDays": 0}, "maxDays"),  # at least one day
        ({"maxDays": 400}, "maxDays"),  # at most a year
        ({"days": 3}, "days"),  # unknown field
    ],
)
def test_pause_on_auto_reply_is_checked(pause: dict[str, Any], message: str) -> None:
    with pytest.raises(PlanDataError, match=message):
        dee.plan_from_document(document(pauseOnAutoReply=pause))


@pytest.mark.parametrize("days", [1, 365])
def test_pause_on_auto_reply_takes_its_limits(days: int) -> None:
    # The bounds themselves (the cases past them are refused above).
    plan = dee.plan_from_document(document(pauseOnAutoReply={"maxDays": days}))
    assert plan.pause_on_auto_reply is not None
    assert plan.pause_on_auto_reply.max_days == days
