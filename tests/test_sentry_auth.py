"""engine/sources/sentry_auth.py: Sentry's webhook signature, the timestamp's freshness, replays."""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path

import pytest

from engine.sources.sentry import ReplayGuard, SentryAuthError, verify

BODY = (Path(__file__).parent / "fixtures" / "sentry" / "event_alert_checkout_fatal.json").read_bytes()
SECRET = "5f6c1a9e0b7d4c2e8a3f9b1d7e5c3a10"
OLD_SECRET = "0a1b2c3d4e5f60718293a4b5c6d7e8f9"
NOW = 1_795_856_400.0
MAX_AGE = 300.0


def sign(body: bytes, secret: str = SECRET) -> str:
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def headers(body: bytes = BODY, *, secret: str = SECRET, sent: float = NOW, **more: str) -> dict[str, str]:
    return {"Content-Type": "application/json", "Sentry-Hook-Resource": "event_alert",
            "Sentry-Hook-Timestamp": str(int(sent)), "Sentry-Hook-Signature": sign(body, secret), **more}


def check(body: bytes, hdrs: dict[str, str], guard: ReplayGuard | None = None, *, now: float = NOW,
          secrets: tuple[str, ...] = (SECRET,)) -> None:
    verify(body, hdrs, secrets=secrets, max_age=MAX_AGE, now=now, seen=ReplayGuard(MAX_AGE) if guard is None else guard)


def refused(body: bytes, hdrs: dict[str, str], guard: ReplayGuard | None = None, **kw) -> str:
    with pytest.raises(SentryAuthError) as info:
        check(body, hdrs, guard, **kw)
    return info.value.message


def test_a_body_signed_with_the_client_secret_is_accepted_and_remembered():
    guard = ReplayGuard(MAX_AGE)
    check(BODY, headers(), guard)
    assert guard.remembered == 1


def test_header_names_are_case_insensitive_and_the_hex_digest_may_be_upper_case():
    hdrs = {k.lower(): v for k, v in headers().items()}
    hdrs["sentry-hook-signature"] = hdrs["sentry-hook-signature"].upper()
    check(BODY, hdrs)


@pytest.mark.parametrize(
    ("body", "hdrs", "expected"),
    [
        pytest.param(BODY, headers(secret="not-the-secret"), "invalid Sentry-Hook-Signature", id="wrong-secret"),
        pytest.param(BODY.replace(b'"fatal"', b'"info"', 1), headers(), "invalid Sentry-Hook-Signature",
                     id="tampered-body"),
        pytest.param(BODY, {**headers(), "Sentry-Hook-Signature": "deadbeef"}, "invalid Sentry-Hook-Signature",
                     id="truncated"),
        pytest.param(BODY, {**headers(), "Sentry-Hook-Signature": "é" * 64}, "invalid Sentry-Hook-Signature",
                     id="not-ascii"),
        pytest.param(BODY, {k: v for k, v in headers().items() if k != "Sentry-Hook-Signature"},
                     "missing Sentry-Hook-Signature header", id="missing"),
        pytest.param(BODY, {**headers(), "Sentry-Hook-Signature": "  "}, "missing Sentry-Hook-Signature header",
                     id="blank"),
    ],
)
def test_a_missing_or_invalid_signature_is_refused_and_not_remembered(body, hdrs, expected):
    guard = ReplayGuard(MAX_AGE)
    assert refused(body, hdrs, guard).startswith(expected)
    assert guard.remembered == 0


def test_every_configured_secret_is_accepted_during_a_rotation():
    check(BODY, headers(secret=OLD_SECRET), secrets=(OLD_SECRET, SECRET))
    check(BODY, headers(secret=SECRET), secrets=(OLD_SECRET, SECRET))
    assert refused(BODY, headers(secret="retired"), secrets=(OLD_SECRET, SECRET)).startswith("invalid")


def test_without_a_configured_secret_nothing_is_accepted():
    assert refused(BODY, headers(), secrets=()) == "no Sentry client secret is configured"


@pytest.mark.parametrize(
    ("timestamp", "expected"),
    [
        pytest.param(None, "missing Sentry-Hook-Timestamp header", id="missing"),
        pytest.param("yesterday", "unparsable Sentry-Hook-Timestamp 'yesterday': expected Unix seconds", id="text"),
        pytest.param("nan", "unparsable Sentry-Hook-Timestamp 'nan'", id="nan"),
        pytest.param("inf", "unparsable Sentry-Hook-Timestamp 'inf'", id="infinite"),
        pytest.param(str(int(NOW - MAX_AGE - 1)), "stale Sentry-Hook-Timestamp: sent 301s ago, more than max_age "
                     "300s", id="stale"),
        pytest.param(str(int(NOW + MAX_AGE + 1)), "Sentry-Hook-Timestamp is 301s in the future, more than "
                     "max_age 300s: check the clocks", id="future"),
    ],
)
def test_a_missing_unparsable_stale_or_future_timestamp_is_refused(timestamp, expected):
    hdrs = headers()
    del hdrs["Sentry-Hook-Timestamp"]
    if timestamp is not None:
        hdrs["Sentry-Hook-Timestamp"] = timestamp
    guard = ReplayGuard(MAX_AGE)
    assert refused(BODY, hdrs, guard).startswith(expected)
    assert guard.remembered == 0


def test_timestamps_exactly_max_age_old_or_ahead_and_fractional_seconds_are_fresh():
    check(BODY, headers(sent=NOW - MAX_AGE))
    check(BODY, headers(sent=NOW + MAX_AGE))
    check(BODY, {**headers(), "Sentry-Hook-Timestamp": f"{NOW - 0.5:.3f}"})


def test_the_same_signed_request_a_second_time_is_a_replay():
    guard = ReplayGuard(MAX_AGE)
    check(BODY, headers(), guard)
    assert refused(BODY, headers(), guard, now=NOW + 10) == "replayed request: this signature was already accepted"
    # the timestamp is not signed: a replay under a fresh timestamp is still caught
    assert refused(BODY, headers(sent=NOW + 200), guard, now=NOW + 200).startswith("replayed request")
    other = BODY.replace(b"4242", b"4243")
    check(other, headers(other), guard, now=NOW + 10)


def test_the_guard_forgets_a_signature_once_a_replay_of_it_would_be_stale_anyway():
    guard = ReplayGuard(60.0)
    assert guard.check_and_remember("a", 1000.0, 1000.0)
    assert not guard.check_and_remember("a", 1000.0, 1059.0)
    assert guard.check_and_remember("a", 1060.0, 1060.0)  # forgotten at 1000 + 60
    assert guard.check_and_remember("b", 1100.0, 1080.0)  # sent "ahead": kept until 1100 + 60
    assert not guard.check_and_remember("b", 1100.0, 1159.0)
    assert guard.remembered == 1  # "a" expired on the way


def test_the_guard_is_bounded_and_forgets_the_oldest_first():
    guard = ReplayGuard(60.0, capacity=3)
    for signature in "abcd":
        assert guard.check_and_remember(signature, 1000.0, 1000.0)
    assert guard.remembered == 3
    assert guard.check_and_remember("a", 1000.0, 1001.0)  # "a" was forgotten to make room for "d"
    assert not guard.check_and_remember("d", 1000.0, 1001.0)
