"""The reviewers' forms in the Prefect UI: what a paused or suspended run waits for.

Each form is Prefect's `RunInput` over the plain decision of `tasks.publish.review`, which
applies it to the store; this module only makes the decisions fillable in the UI.
"""

from __future__ import annotations

from prefect.input import RunInput

from tasks.publish.review import ApprovalChoice, HeldChoice


class ApprovalDecision(RunInput, ApprovalChoice):
    """The form a reviewer fills in the Prefect UI to resume a paused campaign run."""


class HeldDecision(RunInput, HeldChoice):
    """The form a reviewer fills in (Prefect UI) for images the QA gate held."""
