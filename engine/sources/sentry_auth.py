"""Is a webhook from Sentry, fresh, and new? The HMAC signature, the timestamp, and a replay guard.

Pure: no I/O, no clock (`now` is passed in). Sentry signs the raw body with the integration's client
secret (`Sentry-Hook-Signature`: hex HMAC-SHA256) and sends the time of sending in `Sentry-Hook-Timestamp`
(Unix seconds). The timestamp is not signed, so the replay guard remembers every accepted signature for
as long as a replay of it could still carry a fresh-looking timestamp.
"""

from __future__ import annotations

import hashlib
import hmac
import math
from collections.abc import Mapping, Sequence

SIGNATURE_HEADER = "Sentry-Hook-Signature"
TIMESTAMP_HEADER = "Sentry-Hook-Timestamp"
_REPLAY_CAPACITY = 100_000


class SentryAuthError(Exception):
    """The request is not proven to come from Sentry, or is a replay: answer 401."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ReplayGuard:
    """Signatures accepted lately, each kept until a replay of it would be refused as stale anyway.

    A signature accepted with timestamp `t` at `now` is kept until `max(t, now) + max_age`. Bounded: past
    `capacity` entries the oldest is forgotten (forging new signatures needs the secret).
    """

    def __init__(self, max_age: float, capacity: int = _REPLAY_CAPACITY) -> None:
        self.max_age = max_age
        self.capacity = capacity
        self._until: dict[str, float] = {}  # signature -> kept until; insertion order is acceptance order

    @property
    def remembered(self) -> int:
        """How many signatures are remembered now."""
        return len(self._until)

    def check_and_remember(self, signature: str, timestamp: float, now: float) -> bool:
        """True (and remembered) for a signature not accepted within max_age; False for a replay."""
        self._forget_expired(now)
        until = self._until.pop(signature, None)
        if until is not None and until > now:
            self._until[signature] = until
            return False
        while len(self._until) >= self.capacity:
            del self._until[next(iter(self._until))]
        self._until[signature] = max(timestamp, now) + self.max_age
        return True

    def _forget_expired(self, now: float) -> None:
        while self._until:
            signature, until = next(iter(self._until.items()))
            if until > now:
                return
            del self._until[signature]


def verify(body: bytes, headers: Mapping[str, str], *, secrets: Sequence[str], max_age: float, now: float,
           seen: ReplayGuard) -> None:
    """Raise SentryAuthError unless the body is signed by one of `secrets`, fresh, and not a replay."""
    signature = _header(headers, SIGNATURE_HEADER).strip().lower()
    if not signature:
        raise SentryAuthError(f"missing {SIGNATURE_HEADER} header")
    if not secrets:
        raise SentryAuthError("no Sentry client secret is configured")
    if not _signed_by_any(body, signature, secrets):
        raise SentryAuthError(f"invalid {SIGNATURE_HEADER}: not the HMAC-SHA256 of the body under any "
                              "configured client secret")
    raw = _header(headers, TIMESTAMP_HEADER).strip()
    if not raw:
        raise SentryAuthError(f"missing {TIMESTAMP_HEADER} header")
    try:
        timestamp = float(raw)
    except ValueError:
        timestamp = math.nan
    if not math.isfinite(timestamp):
        raise SentryAuthError(f"unparsable {TIMESTAMP_HEADER} {raw[:40]!r}: expected Unix seconds")
    age = now - timestamp
    if age > max_age:
        raise SentryAuthError(f"stale {TIMESTAMP_HEADER}: sent {age:.0f}s ago, more than max_age {max_age:g}s")
    if -age > max_age:
        raise SentryAuthError(f"{TIMESTAMP_HEADER} is {-age:.0f}s in the future, more than max_age {max_age:g}s: "
                              "check the clocks")
    if not seen.check_and_remember(signature, timestamp, now):
        raise SentryAuthError("replayed request: this signature was already accepted")


def _signed_by_any(body: bytes, signature: str, secrets: Sequence[str]) -> bool:
    """Compare against every secret in constant time each, without stopping at the first match."""
    given = signature.encode("utf-8")
    ok = False
    for secret in secrets:
        expected = hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest().encode("ascii")
        ok |= hmac.compare_digest(expected, given)
    return ok


def _header(headers: Mapping[str, str], name: str) -> str:
    """A header's value, looked up without regard to case; "" when absent."""
    value = headers.get(name)
    if value is None:
        lower = name.lower()
        value = next((v for k, v in headers.items() if k.lower() == lower), None)
    return value if isinstance(value, str) else ""


