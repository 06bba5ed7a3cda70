"""engine/sources/sentry_auth.py: Sentry's webhook signature, the timestamp's freshness, the body's own time."""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path

import pytest

from engine.sources.sentry import BodyTime, SentryAuthError, check_body_time, verify

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


def check(body: bytes, hdrs: dict[str, str], *, now: float = NOW, secrets: tuple[str, ...] = (SECRET,)) -> None:
    verify(body, hdrs, secrets=secrets, max_age=MAX_AGE, now=now)


def refused(body: bytes, hdrs: dict[str, str], **kw) -> str:
    with pytest.raises(SentryAuthError) as info:
        check(body, hdrs, **kw)
    return info.value.message


def test_a_body_signed_with_the_client_secret_is_accepted():
    check(BODY, headers())


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
def test_a_missing_or_invalid_signature_is_refused(body, hdrs, expected):
    assert refused(body, hdrs).startswith(expected)


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
    assert refused(BODY, hdrs).startswith(expected)


def test_timestamps_exactly_max_age_old_or_ahead_and_fractional_seconds_are_fresh():
    check(BODY, headers(sent=NOW - MAX_AGE))
    check(BODY, headers(sent=NOW + MAX_AGE))
    check(BODY, {**headers(), "Sentry-Hook-Timestamp": f"{NOW - 0.5:.3f}"})


def test_the_same_signed_request_again_is_accepted_a_genuine_resend_or_a_retry_after_a_5xx():
    check(BODY, headers())
    check(BODY, headers(), now=NOW + 10)  # nothing is remembered: Sentry's retry, or the same news again
    check(BODY, headers(sent=NOW + 200), now=NOW + 200)


@pytest.mark.parametrize(
    ("said", "expected"),
    [
        pytest.param(NOW - MAX_AGE - 1, "stale body: its data.event.received was 301s ago, more than max_age 300s",
                     id="stale"),
        pytest.param(NOW + MAX_AGE + 1, "the body's data.event.received is 301s in the future, more than max_age "
                     "300s: check the clocks", id="future"),
    ],
)
def test_a_body_whose_own_time_is_further_than_max_age_from_now_is_refused(said, expected):
    with pytest.raises(SentryAuthError) as info:
        check_body_time(BodyTime("data.event.received", said), max_age=MAX_AGE, now=NOW)
    assert info.value.message == expected


def test_a_body_within_max_age_by_its_own_time_or_without_one_passes():
    for said in (NOW - MAX_AGE, NOW, NOW + MAX_AGE):
        check_body_time(BodyTime("data.metric_alert.date_closed", said), max_age=MAX_AGE, now=NOW)
    check_body_time(None, max_age=MAX_AGE, now=NOW)  # issue webhooks: only the header vouches for them
