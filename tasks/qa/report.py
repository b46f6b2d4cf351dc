"""What the gate found: one `CheckResult` per check, and the `QAReport` stored in each sidecar."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Verdict = Literal["pass", "fail", "skipped"]
Decision = Literal["publish", "retry", "overlay", "hold"]
QA_SCHEMA = "zpipe.qa/1"


class CheckResult(BaseModel):
    """One check: what it measured, the limit it was held to, and the verdict.

    `gating` is False for a check that only reports (palette without `max_delta_e`): its
    verdict is then "pass" or "fail" for the record, and never changes the decision.
    """

    model_config = ConfigDict(extra="forbid")

    value: float | None  # the measurement: a CER, a detector score, a ΔE
    threshold: float | None  # the limit `value` is compared with (<= passes)
    verdict: Verdict
    gating: bool = True
    score: float | None = None  # 0..1, higher is better (for the overall score)
    reason: str = ""  # one line a reviewer reads: why it failed, or why it was skipped
    detail: dict[str, Any] = Field(default_factory=dict)

    @property
    def failed(self) -> bool:
        """True when this check blocks publishing as it stands."""
        return self.gating and self.verdict == "fail"


class QAAttempt(BaseModel):
    """An earlier try of the same image (another seed) that the gate sent back."""

    model_config = ConfigDict(extra="forbid")

    seed: int
    decision: Decision
    score: float
    reasons: list[str]


class QAReport(BaseModel):
    """The `qa` block of a sidecar: every check, the overall score, and the decision."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    schema_: str = Field(default=QA_SCHEMA, alias="schema")
    checks: dict[str, CheckResult]
    score: float  # mean of the checks' scores (for sorting a review); decisions come from verdicts
    decision: Decision
    reasons: list[str]  # the failed checks' reasons, most serious first
    seed: int
    attempt: int  # 0 = the planned seed; n = the n-th retry (seed + n)
    retries: int  # `qa.retries` in force
    attempts: list[QAAttempt] = Field(default_factory=list)  # the earlier tries, in order
    fallback: Literal["overlay"] | None = None  # the exact headline was typeset over the image
    models: dict[str, str] = Field(default_factory=dict)  # package versions of the detectors
    timings_s: dict[str, float] = Field(default_factory=dict)

    def record(self) -> dict[str, Any]:
        """The JSON-ready block written into the sidecar."""
        return self.model_dump(mode="json", by_alias=True)

    def as_attempt(self) -> QAAttempt:
        return QAAttempt(seed=self.seed, decision=self.decision, score=self.score,
                         reasons=self.reasons)
