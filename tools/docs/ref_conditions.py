"""Reference page of the condition types and reasons, with what to do about each.

Generated from the typed table `lanex_operator.api.reasons`, which tests/test_docs_reference.py holds
to the reasons the controller writes.
"""

from __future__ import annotations

from lanex_operator.api.reasons import CONDITIONS, EVENT, REASONS
from lanex_operator.api.status import FailureReason, Phase

import cells


def anchor(condition_type: str) -> str:
    """The heading id of a condition type's section (MkDocs lower-cases headings)."""
    return condition_type.lower()


def _reason_rows(condition_type: str) -> list[tuple[str, ...]]:
    return [(f"`{doc.reason}`", ", ".join(doc.kinds), cells.text(doc.meaning), cells.text(doc.action) or "-")
            for doc in REASONS if condition_type in doc.conditions]


def page() -> str:
    lines = [
        "# Conditions and reasons",
        "",
        cells.generated_note("the typed table `operator/lanex_operator/api/reasons.py`"),
        "`status.phase` is one of " + ", ".join(f"`{phase.value}`" for phase in Phase) + "; a failed "
        "experiment's `status.reason` is one of " + ", ".join(f"`{reason.value}`" for reason in FailureReason)
        + ". Each step has a condition (`Unknown` while it runs, `True` when done, `False` when it failed or "
        "waits on you), plus `Succeeded`/`Failed`. Every change of phase is a Normal Event whose reason is the "
        "phase; every problem is a Warning Event whose reason is the condition's reason. Where a step waits on "
        "another controller, the reason can also be that controller's own (the provisioner's "
        "`ProvisioningFailed`, mpi-operator's `ValidationError`, ...), quoted in the message: see "
        "[Troubleshooting](../operations/troubleshooting.md).",
        "",
        "| Condition | On | Meaning |",
        "|---|---|---|",
    ]
    lines += [f"| [`{doc.type}`](#{anchor(doc.type)}) | {', '.join(doc.kinds)} | {cells.text(doc.meaning)} |"
              for doc in CONDITIONS]
    lines.append("")
    for doc in CONDITIONS:
        lines += [f"## {doc.type}", "", cells.text(doc.meaning), "",
                  cells.table(("Reason", "On", "Means", "What to do"), _reason_rows(doc.type))]
    lines += ["## Events", "", "Reasons that appear only on Events (besides phases and the reasons above).", "",
              cells.table(("Reason", "On", "Means", "What to do"), _reason_rows(EVENT))]
    return "\n".join(lines)
