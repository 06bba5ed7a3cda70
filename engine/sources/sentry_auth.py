"""Is a webhook from Sentry, and fresh? The HMAC signature, the timestamp header, and the body's own time.

Pure: no I/O, no clock (`now` is passed in). Sentry signs the raw body with the integration's client
secret (`Sentry-Hook-Signature`: hex HMAC-SHA256) and sends the time of sending in `Sentry-Hook-Timestamp`
(Unix seconds). The signature proves who wrote the body and that it is unchanged. The timestamp is not
signed: anyone holding a captured request can send it again under a fresh timestamp. So where the signed
body carries the time its news happened (`BodyTime`, found by `engine.sources.sentry`), that time must be
within `max_age` too; nothing is remembered between requests, so a genuine resend or a retry after a
failed answer is accepted like the first delivery (the effects are idempotent: docs/sentry.md).
"""

from __future__ import annotations

import hashlib
import hmac
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

SIGNATURE_HEADER = "Sentry-Hook-Signature"
TIMESTAMP_HEADER = "Sentry-Hook-Timestamp"


class SentryAuthError(Exception):
    """The request is not proven to come from Sentry, or not fresh: answer 401."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True)
class BodyTime:
    """When a webhook's news happened by the signed body itself: the field, and seconds since the epoch."""

    field: str
    at: float


def verify(body: bytes, headers: Mapping[str, str], *, secrets: Sequence[str], max_age: float, now: float) -> None:
    """Raise SentryAuthError unless the body is signed by one of `secrets` and its timestamp is fresh."""
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
    _check_age(f"stale {TIMESTAMP_HEADER}: sent", TIMESTAMP_HEADER, timestamp, max_age=max_age, now=now)


def check_body_time(time: BodyTime | None, *, max_age: float, now: float) -> None:
    """Raise SentryAuthError when the body's own time is more than `max_age` before (or after) `now`.
    A body without one (None) passes: only the unsigned header vouched for its freshness."""
    if time is not None:
        _check_age(f"stale body: its {time.field} was", f"the body's {time.field}", time.at, max_age=max_age,
                   now=now)


def _check_age(stale: str, name: str, moment: float, *, max_age: float, now: float) -> None:
    age = now - moment
    if age > max_age:
        raise SentryAuthError(f"{stale} {age:.0f}s ago, more than max_age {max_age:g}s")
    if -age > max_age:
        raise SentryAuthError(f"{name} is {-age:.0f}s in the future, more than max_age {max_age:g}s: "
                              "check the clocks")


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
