"""Content that plans reference by id: email templates and voice scripts.

A content folder holds::

    templates/<id>.html   the HTML body of an email (Jinja2, autoescaped)
    templates/<id>.txt    optional plain-text part of the same email
    scripts/<id>.txt      a voice script or voicemail message (Jinja2 text)

Templates see the contact as ``contact`` and each run variable by its own name
(``{{ product }}``, ``{{ contact.firstName }}``). Rendering is sandboxed
(:class:`jinja2.sandbox.ImmutableSandboxedEnvironment`) and fails on any undefined name, so
a run never sends "Hello ," to a contact with no first name: the variables a plan needs are
known from the plan itself (:func:`required_variables`) and checked before a run starts.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
import jinja2.meta
from jinja2 import nodes
from pydantic import ConfigDict

from dee.errors import ContentError, MissingVariablesError, Problem
from dee.plans.decoding import TolerantModel
from dee.plans.model import ContentRef, ExecutionPlan, SendEmailStep
from dee.plans.sandbox import BoundedSandbox, constant_problem, render_bounded

__all__ = [
    "EmailTemplate",
    "PlanContent",
    "RenderedEmail",
    "load_content",
    "render_email",
    "render_script",
    "required_variables",
]

#: Largest template or script DEE accepts, in characters.
MAX_CONTENT_CHARS = 512 * 1024
#: Largest plan version, as the JSON of its plan and content together. Every run carries
#: its version (so it runs on it whatever is created later), and Temporal refuses a run
#: input over 2 MiB: 1 MiB for the version leaves room for the contact, the variables and
#: what a run carries across continue-as-new (see dee.runs.model.RunProgress).
MAX_PLAN_DOCUMENT_BYTES = 1024 * 1024


class EmailTemplate(TolerantModel):
    """An email body: HTML, and optionally a plain-text part."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    html: str
    text: str | None = None


class PlanContent(TolerantModel):
    """The templates and scripts one plan version references, by id.

    A created plan version stores its content, so a run renders exactly what was
    validated, whatever happens to the files afterwards.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    templates: dict[str, EmailTemplate] = {}
    scripts: dict[str, str] = {}

    def has(self, ref: ContentRef) -> bool:
        """Whether the template or script ``ref`` names is here."""
        return ref.id in (self.templates if ref.kind == "template" else self.scripts)

    def digest(self) -> str:
        """A SHA-256 of the content in canonical form."""
        canonical = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()

    def digests(self) -> dict[str, str]:
        """A SHA-256 per file, keyed like the folder layout (``templates/intro.html``)."""
        files: dict[str, str] = {}
        for template_id, template in self.templates.items():
            files[f"templates/{template_id}.html"] = template.html
            if template.text is not None:
                files[f"templates/{template_id}.txt"] = template.text
        for script_id, script in self.scripts.items():
            files[f"scripts/{script_id}.txt"] = script
        return {
            name: hashlib.sha256(body.encode()).hexdigest() for name, body in sorted(files.items())
        }


@dataclass(frozen=True, slots=True)
class RenderedEmail:
    subject: str
    html: str
    text: str | None


def referenced_content(plan: ExecutionPlan) -> tuple[set[str], set[str]]:
    """The template ids and script ids (scripts and voicemail messages) a plan uses."""
    templates: set[str] = set()
    scripts: set[str] = set()
    for step in plan.steps:
        for ref in step.content_refs():
            (templates if ref.kind == "template" else scripts).add(ref.id)
    return templates, scripts


def content_path(ref: ContentRef) -> str:
    """Where ``ref`` is in a content folder: ``templates/<id>.html`` or ``scripts/<id>.txt``."""
    return f"templates/{ref.id}.html" if ref.kind == "template" else f"scripts/{ref.id}.txt"


def _read(path: Path) -> str | None:
    try:
        # newline="": keep the file's own line endings, so the stored content and its
        # SHA-256 are the file's exact bytes.
        with path.open(encoding="utf-8", newline="") as file:
            return file.read()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise ContentError(f"cannot read {str(path)!r}: {exc}") from exc


def load_content(directory: str | Path, plan: ExecutionPlan) -> PlanContent:
    """Read the templates and scripts ``plan`` references from ``directory``.

    Missing files are left out, not raised: :func:`dee.validate_plan` reports each one
    against the step that needs it, together with every other problem.
    """
    root = Path(directory)
    template_ids, script_ids = referenced_content(plan)
    templates: dict[str, EmailTemplate] = {}
    for template_id in sorted(template_ids):
        html = _read(root / "templates" / f"{template_id}.html")
        if html is not None:
            text = _read(root / "templates" / f"{template_id}.txt")
            templates[template_id] = EmailTemplate(html=html, text=text)
    scripts: dict[str, str] = {}
    for script_id in sorted(script_ids):
        script = _read(root / "scripts" / f"{script_id}.txt")
        if script is not None:
            scripts[script_id] = script
    return PlanContent(templates=templates, scripts=scripts)


# Contact and variables are plain data: an immutable sandbox is enough, and autoescape is
# on for HTML only, so a plain-text part or a subject is not full of &amp;.
# Both are bounded (dee.plans.sandbox): a template cannot stall the worker that renders it.
_HTML_ENV = BoundedSandbox(
    autoescape=True, undefined=jinja2.StrictUndefined, keep_trailing_newline=True
)
_TEXT_ENV = BoundedSandbox(
    autoescape=False, undefined=jinja2.StrictUndefined, keep_trailing_newline=True
)
#: A subject is one header line: RFC 5322 allows 998 characters.
MAX_SUBJECT_CHARS = 998


def _sources(
    plan: ExecutionPlan, content: PlanContent
) -> Iterator[tuple[str, str, str, jinja2.Environment]]:
    """(step id, what, source, environment) for every template source a plan uses."""
    seen: set[str] = set()
    for step in plan.steps:
        for what, source in step.inline_templates():
            yield step.id, what, source, _TEXT_ENV
        for ref in step.content_refs():
            path = content_path(ref)
            if path in seen or not content.has(ref):
                continue
            seen.add(path)
            if ref.kind == "template":
                template = content.templates[ref.id]
                yield step.id, path, template.html, _HTML_ENV
                if template.text is not None:
                    yield step.id, f"templates/{ref.id}.txt", template.text, _TEXT_ENV
            else:
                yield step.id, path, content.scripts[ref.id], _TEXT_ENV


def _optional_uses(tree: nodes.Node) -> set[int]:
    """Ids of nodes that a template guards itself (``x | default(...)``, ``x is defined``)."""
    guarded: set[int] = set()
    for node in tree.find_all((nodes.Filter, nodes.Test)):
        if node.name in {"default", "d", "defined", "undefined"} and node.node is not None:
            guarded.add(id(node.node))
    return guarded


def _variables_of(tree: nodes.Template) -> set[str]:
    names = jinja2.meta.find_undeclared_variables(tree)
    guarded = _optional_uses(tree)
    used: set[str] = set()
    contact_fields: set[str] = set()
    for node in tree.find_all((nodes.Name, nodes.Getattr, nodes.Getitem)):
        if id(node) in guarded:
            continue
        if isinstance(node, nodes.Getattr) and isinstance(node.node, nodes.Name):
            if node.node.name == "contact":
                contact_fields.add(node.attr)
        elif (
            isinstance(node, nodes.Getitem)
            and isinstance(node.node, nodes.Name)
            and node.node.name == "contact"
            and isinstance(node.arg, nodes.Const)
            and isinstance(node.arg.value, str)
        ):
            contact_fields.add(node.arg.value)
        elif (
            isinstance(node, nodes.Name)
            and node.ctx == "load"
            and node.name in names
            and node.name != "contact"
        ):
            used.add(node.name)
    # Names read only under `| default` or `is defined` are optional; bare `contact` is
    # always given, so it only counts through its fields.
    if "contact" in names:
        used.update(f"contact.{field}" for field in contact_fields)
    return used


def check_content(plan: ExecutionPlan, content: PlanContent) -> list[Problem]:
    """Syntax and safety problems in the subjects, templates and scripts a plan uses, and a
    version too large to carry in a run."""
    problems: list[Problem] = []
    size = len(plan.model_dump_json().encode()) + len(content.model_dump_json().encode())
    if size > MAX_PLAN_DOCUMENT_BYTES:
        sizes = [
            (len(template.html) + len(template.text or ""), f"templates/{name}.html")
            for name, template in content.templates.items()
        ]
        sizes += [(len(text), f"scripts/{name}.txt") for name, text in content.scripts.items()]
        largest = sorted(sizes, reverse=True)[:3]
        problems.append(
            Problem(
                None,
                "plan-too-large",
                f"the plan and its content take {size:,} bytes as JSON; the most a run can "
                f"carry is {MAX_PLAN_DOCUMENT_BYTES:,}: shorten the largest content ("
                + ", ".join(f"{name}: {chars:,} characters" for chars, name in largest)
                + ")",
            )
        )
    for step_id, what, source, env in _sources(plan, content):
        if len(source) > MAX_CONTENT_CHARS:
            problems.append(
                Problem(
                    step_id,
                    "content-too-large",
                    f"{what} has {len(source):,} characters; the most is {MAX_CONTENT_CHARS:,}",
                )
            )
            continue
        try:
            tree = env.parse(source)
        except jinja2.TemplateSyntaxError as exc:
            problems.append(
                Problem(
                    step_id,
                    "template-syntax",
                    f"{what} line {exc.lineno}: {exc.message}; fix the Jinja2 syntax",
                )
            )
            continue
        unbounded = constant_problem(tree)
        if unbounded is not None:
            line, problem = unbounded
            problems.append(
                Problem(
                    step_id,
                    "template-unbounded",
                    f"{what} line {line} computes {problem}; DEE refuses it when rendering, "
                    "so shorten it",
                )
            )
        for node in tree.find_all(nodes.Getattr):
            if node.attr.startswith("_"):
                problems.append(
                    Problem(
                        step_id,
                        "template-unsafe",
                        f"{what} line {node.lineno} reads attribute {node.attr!r}; "
                        "names starting with '_' are not available to templates",
                    )
                )
    return problems


def required_variables(plan: ExecutionPlan, content: PlanContent) -> frozenset[str]:
    """Names a run must provide: run variables (``product``) and contact fields
    (``contact.firstName``) that the plan's subjects, templates and scripts read."""
    required: set[str] = set()
    for _step_id, _what, source, env in _sources(plan, content):
        try:
            tree = env.parse(source)
        except jinja2.TemplateSyntaxError:
            continue
        required.update(_variables_of(tree))
    return frozenset(required)


def missing_variables(
    required: frozenset[str] | set[str],
    *,
    contact: Mapping[str, Any],
    variables: Mapping[str, Any],
) -> list[str]:
    """Which of ``required`` neither the contact nor the run variables provide."""
    missing: list[str] = []
    for name in sorted(required):
        if name.startswith("contact."):
            if contact.get(name.removeprefix("contact.")) is None:
                missing.append(name)
        elif name not in variables:
            missing.append(name)
    return missing


def _render(
    env: jinja2.Environment,
    source: str,
    context: Mapping[str, Any],
    *,
    what: str,
    step_id: str | None,
) -> str:
    try:
        return render_bounded(env.from_string(source), context)
    except jinja2.UndefinedError as exc:
        raise ContentError(f"{what}: {exc.message}", content_id=what, step_id=step_id) from exc
    except Exception as exc:
        # A bound hit, or the template's own arithmetic (a division by zero, a type
        # mismatch, an overflow): the same data fails the same way on every attempt.
        reason = str(exc) or type(exc).__name__
        if not isinstance(exc, jinja2.TemplateError):
            reason = f"{type(exc).__name__}: {reason}"
        raise ContentError(f"{what}: {reason}", content_id=what, step_id=step_id) from exc


def _context(contact: Mapping[str, Any], variables: Mapping[str, Any]) -> dict[str, Any]:
    context = dict(variables)
    context["contact"] = dict(contact)
    return context


def render_email(
    step: SendEmailStep,
    content: PlanContent,
    *,
    contact: Mapping[str, Any],
    variables: Mapping[str, Any],
) -> RenderedEmail:
    """Render a send-email step's subject, HTML body and text part."""
    template = content.templates.get(step.template_id)
    if template is None:
        raise ContentError(
            f"template {step.template_id!r} is not part of this plan version",
            content_id=step.template_id,
            step_id=step.id,
        )
    context = _context(contact, variables)
    subject = _render(_TEXT_ENV, step.subject, context, what="subject", step_id=step.id)
    # A subject is one header line, whatever the contact data holds.
    subject = " ".join(subject.split())
    if len(subject) > MAX_SUBJECT_CHARS:
        raise ContentError(
            f"subject: {len(subject):,} characters once rendered; the most is {MAX_SUBJECT_CHARS}",
            content_id="subject",
            step_id=step.id,
        )
    html_name = f"templates/{step.template_id}.html"
    html = _render(_HTML_ENV, template.html, context, what=html_name, step_id=step.id)
    text = None
    if template.text is not None:
        text = _render(
            _TEXT_ENV,
            template.text,
            context,
            what=f"templates/{step.template_id}.txt",
            step_id=step.id,
        )
    return RenderedEmail(subject=subject, html=html, text=text)


def render_script(
    script_id: str,
    content: PlanContent,
    *,
    contact: Mapping[str, Any],
    variables: Mapping[str, Any],
    step_id: str | None = None,
) -> str:
    """Render a voice script or voicemail message."""
    script = content.scripts.get(script_id)
    if script is None:
        raise ContentError(
            f"script {script_id!r} is not part of this plan version",
            content_id=script_id,
            step_id=step_id,
        )
    return _render(
        _TEXT_ENV,
        script,
        _context(contact, variables),
        what=f"scripts/{script_id}.txt",
        step_id=step_id,
    )


def check_variables(
    plan: ExecutionPlan,
    content: PlanContent,
    *,
    contact: Mapping[str, Any],
    variables: Mapping[str, Any],
) -> None:
    """Raise :class:`MissingVariablesError` naming every variable a run would lack."""
    missing = missing_variables(
        required_variables(plan, content), contact=contact, variables=variables
    )
    if missing:
        raise MissingVariablesError(missing, plan_id=plan.id)
