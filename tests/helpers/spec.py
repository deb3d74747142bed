"""The spec's example plan, as the examples folder ships it."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

from dee.plans.model import ExecutionPlan

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
SPEC_YAML = EXAMPLES / "spec-plan.yaml"
SPEC_JSON = EXAMPLES / "spec-plan.json"
SPEC_CONTENT = EXAMPLES / "content"


def _example_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("spec_plan_example", EXAMPLES / "spec_plan.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def spec_plan() -> ExecutionPlan:
    """The spec's example built with the Python builder (examples/spec_plan.py)."""
    plan = _example_module().build()
    assert isinstance(plan, ExecutionPlan)
    return plan
