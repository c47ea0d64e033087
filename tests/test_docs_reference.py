"""The conditions reference cannot drift: `api/reasons.py` documents every reason the operator writes,
and writes none that is not there.

The reasons are read from the source with `ast`, where the controller passes them: the reason argument
of `set_condition`, `complete_step`, `Problem`, `_fail` and Event calls, a `"reason"` key of a dict, a
value assigned to `reason`, and the enums and constants that hold reasons. An f-string reason
(`f"{kind}NotOptedIn"`) is a pattern that some documented reason must match.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

from lanex_operator.api.reasons import CONDITIONS, EVENT, REASONS, reasons_by_name
from lanex_operator.api.status import ConditionType, FailureReason
from lanex_operator.azure.storage_tier import Reason as StorageTierReason
from lanex_operator.controller.tier_steps import TIER_MOVING
from lanex_operator.controller.waits import STUCK_REASONS
from lanex_operator.plan.steps import FROM_SCRATCH_REASON

PACKAGE = Path(__file__).resolve().parents[1] / "operator" / "lanex_operator"
# Where each call takes its reason: the index of the positional argument.
REASON_ARGUMENT = {"set_condition": 2, "complete_step": 1, "Problem": 0, "_fail": 1, "event": 1, "_refused": 1}
CAMEL = re.compile(r"^[A-Z][A-Za-z]+$")


def _values(node: ast.expr) -> list[ast.expr]:
    """The strings an expression can evaluate to: itself, or the branches of `a if c else b` / `a or b`."""
    if isinstance(node, (ast.Constant, ast.JoinedStr)):
        return [node]
    if isinstance(node, ast.IfExp):
        return _values(node.body) + _values(node.orelse)
    if isinstance(node, ast.BoolOp):
        return [value for operand in node.values for value in _values(operand)]
    return []  # a name, an attribute, a call: its value is a literal or a constant found elsewhere


def _reason_nodes(tree: ast.AST) -> list[ast.expr]:
    found: list[ast.expr] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", None)
            if name in REASON_ARGUMENT:
                index = REASON_ARGUMENT[name]
                found += _values(node.args[index]) if len(node.args) > index else []
                found += [value for keyword in node.keywords if keyword.arg == "reason" for value in _values(keyword.value)]
        elif isinstance(node, ast.Dict):
            found += [value for key, item in zip(node.keys, node.values)
                      if isinstance(key, ast.Constant) and key.value == "reason" for value in _values(item)]
        elif isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "reason" for t in node.targets):
            found += _values(node.value)
    return found


def written_by_code() -> tuple[set[str], set[str]]:
    """(reasons written as literals or constants, regular expressions of f-string reasons)."""
    literals: set[str] = set()
    patterns: set[str] = set()
    for module in PACKAGE.rglob("*.py"):
        if module.parts[-2:] == ("api", "reasons.py") or "cli" in module.relative_to(PACKAGE).parts[:1]:
            continue
        for node in _reason_nodes(ast.parse(module.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and CAMEL.match(node.value):
                literals.add(node.value)
            elif isinstance(node, ast.JoinedStr):
                patterns.add("".join(re.escape(part.value) if isinstance(part, ast.Constant) else "[A-Z][A-Za-z]*"
                                     for part in node.values))
    literals |= {reason.value for reason in FailureReason} | {reason.value for reason in StorageTierReason}
    literals |= {*STUCK_REASONS, FROM_SCRATCH_REASON, TIER_MOVING}
    # Events whose reason is a phase or a condition type are documented by the page's introduction.
    literals -= {condition.value for condition in ConditionType} - {doc.reason for doc in REASONS}
    return literals, patterns


def string_literals() -> set[str]:
    found: set[str] = set()
    for module in PACKAGE.rglob("*.py"):
        if module.parts[-2:] == ("api", "reasons.py"):
            continue
        for node in ast.walk(ast.parse(module.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                found.add(node.value)
    return found


def test_the_scan_finds_the_reasons_of_every_kind_of_call() -> None:
    literals, patterns = written_by_code()
    assert {"MissingLocalQueue", "NoProgress", "Passed", "AllTrialsFailed", "MissingDependencies", "Unschedulable",
            "PoolNotConfigured", "TrialsCreated"} <= literals
    assert any(re.fullmatch(pattern, "SecretNotOptedIn") for pattern in patterns)
    assert any(re.fullmatch(pattern, "AtPremium") for pattern in patterns)


def test_every_reason_the_operator_writes_is_documented() -> None:
    documented = reasons_by_name()
    literals, patterns = written_by_code()
    assert sorted(literals - set(documented)) == []
    for pattern in patterns:
        assert any(re.fullmatch(pattern, name) for name in documented), f"no documented reason matches {pattern}"


def test_every_documented_reason_is_written_by_the_operator() -> None:
    literals, patterns = written_by_code()
    everywhere = string_literals()
    for doc in REASONS:
        assert (doc.reason in literals or doc.reason in everywhere
                or any(re.fullmatch(pattern, doc.reason) for pattern in patterns)), f"{doc.reason} is never written"


def test_every_condition_type_is_documented_once_with_its_reasons() -> None:
    assert sorted(doc.type for doc in CONDITIONS) == sorted(condition.value for condition in ConditionType)
    types = {doc.type for doc in CONDITIONS} | {EVENT}
    for doc in REASONS:
        assert set(doc.conditions) <= types, doc.reason
    for condition in CONDITIONS:
        assert any(condition.type in doc.conditions for doc in REASONS), f"{condition.type} has no reason"
    assert len(documented := [doc.reason for doc in REASONS]) == len(set(documented))


def test_every_failure_reason_says_what_to_do_unless_it_was_on_purpose() -> None:
    documented = reasons_by_name()
    for reason in FailureReason:
        assert documented[reason.value].action or reason is FailureReason.EARLY_STOPPED
    for reason in StorageTierReason:
        assert documented[reason.value].action
