"""HMAC request signatures, one scheme both ways: the comment intake verifies them, outbound
webhooks (tasks.notify.webhooks) make them.

`X-Zpipe-Timestamp`: unix seconds; `X-Zpipe-Signature`: `sha256=` + hex HMAC-SHA256(secret,
`"<timestamp>." + raw body bytes`). The timestamp bounds replays (`tolerance_s`).
"""

from __future__ import annotations

import hashlib
import hmac
import re

from tasks.core.errors import ZpipeError

TIMESTAMP_HEADER = "X-Zpipe-Timestamp"
SIGNATURE_HEADER = "X-Zpipe-Signature"
SIGNATURE_SCHEME = "sha256"

_SIGNATURE = re.compile(r"^sha256=([0-9a-fA-F]{64})$")
_TIMESTAMP = re.compile(r"^[0-9]{1,12}$")  # unix seconds; 12 digits reach the year 33658


class SignatureError(ZpipeError):
    """A request signature is missing, malformed, stale, from the future, wrong or replayed."""

    def __init__(self, reason: str, message: str):
        self.reason = reason
        super().__init__(message)


def sign(secret: bytes, timestamp: str, body: bytes) -> str:
    """`sha256=<hex>` of HMAC-SHA256(secret, "<timestamp>." + body)."""
    digest = hmac.new(secret, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"{SIGNATURE_SCHEME}={digest}"


def verify_signature(
    secret: bytes,
    timestamp_header: str | None,
    signature_header: str | None,
    body: bytes,
    now: float,
    tolerance_s: int = 300,
) -> None:
    """Raise SignatureError unless the headers sign `body` with `secret` within the tolerance."""
    if not timestamp_header:
        raise SignatureError("missing", f"missing {TIMESTAMP_HEADER} header (unix seconds)")
    if not signature_header:
        raise SignatureError("missing", f"missing {SIGNATURE_HEADER} header ('sha256=<hex>')")
    if not _TIMESTAMP.match(timestamp_header):
        raise SignatureError("malformed", f"malformed {TIMESTAMP_HEADER} {timestamp_header[:32]!r}: "
                                          "expected unix seconds, e.g. '1767225600'")
    match = _SIGNATURE.match(signature_header)
    if not match:
        raise SignatureError("malformed", f"malformed {SIGNATURE_HEADER}: expected 'sha256=' "
                                          "followed by 64 hex digits")
    age = now - int(timestamp_header)
    if age > tolerance_s:
        raise SignatureError("stale", f"stale timestamp: {int(age)} s old (tolerance {tolerance_s} s); "
                                      "sign each request with the current time")
    if -age > tolerance_s:
        raise SignatureError("future", f"timestamp {int(-age)} s in the future (tolerance "
                                       f"{tolerance_s} s); check the sender's clock")
    expected = sign(secret, timestamp_header, body)
    if not hmac.compare_digest(expected, f"{SIGNATURE_SCHEME}={match[1].lower()}"):
        raise SignatureError("mismatch", "signature mismatch: sign '<timestamp>.' + the raw body "
                                         "with HMAC-SHA256 and the shared secret")
