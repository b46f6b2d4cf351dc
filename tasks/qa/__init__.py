"""The eye before publishing: checks on every finished image, and a decision.

Pure domain code (no Prefect): `tasks.publish.batch` runs it on the publish threads, between the
label step and the upload, for campaigns and comment replies alike.

| module | what |
|---|---|
| `settings.py` | `QASettings`, the settings file's `qa:` block |
| `gate.py` | `Subject`, `inspect` (all checks -> `QAReport`), `decide` |
| `text.py` | OCR read-back: `read_label` (also used by `zpipe verify`), drawn and typeset text, CER |
| `nsfw.py` | `NsfwDetector` interface, `NudeNetDetector`, `check_nsfw` |
| `palette.py` | `ciede2000`, `dominant_colours`, `check_palette` |
| `models.py` | the OCR and NudeNet models, loaded once per process on first use |
| `report.py` | `CheckResult`, `QAReport` (the sidecar's `qa` block), `QAAttempt` |
"""

from tasks.qa.gate import Subject, decide, inspect
from tasks.qa.nsfw import Detection, NsfwDetector, NudeNetDetector
from tasks.qa.report import CheckResult, Decision, QAAttempt, QAReport
from tasks.qa.settings import QASettings
from tasks.qa.text import LabelReading, read_label

__all__ = ["CheckResult", "Decision", "Detection", "LabelReading", "NsfwDetector", "NudeNetDetector",
           "QAAttempt", "QAReport", "QASettings", "Subject", "decide", "inspect", "read_label"]
