"""How to talk to PagerDuty's Events API (v2, and the legacy generic v1): one POST with the service's
key, and what the answer means. What to say is render's; when to say it (pacing, retries) is deliver's.

- `classify`: 2xx is delivered (PagerDuty answers 202 on v2 and 200 on v1). 429, v1's 403 (its
  rate-limit answer), 408, 5xx, timeouts and connection errors are worth another try; any other answer
  is a refusal.
- `parse_retry_after`: a `Retry-After` in delta seconds or as an HTTP date.
- `explain`: what an answer's body says, in one line for people (dead letters, `send-test`).
- `Client.send`: the stored body with the key put in (`render.with_key`); an answer that quotes the key
  comes back with it masked, so that it is never stored or shown.
"""

from __future__ import annotations

import contextlib
import email.utils
import enum
import json
import math
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp
from aiohttp.helpers import get_env_proxy_for_url
from yarl import URL

from engine.render import Notification, with_key
from engine.rules.ruleset import mask_key

DEFAULT_BASE_URL = "https://events.pagerduty.com"
USER_AGENT = "alert-engine"


class Verdict(enum.Enum):
    DELIVERED = "delivered"
    RETRY = "retry"
    REJECTED = "rejected"


def classify(api: str, status: int | None) -> Verdict:
    """What PagerDuty's HTTP status (None: no answer) means for a notification sent to `api`."""
    if status is None or status in (408, 429) or status >= 500 or (api == "v1" and status == 403):
        return Verdict.RETRY
    if 200 <= status < 300:
        return Verdict.DELIVERED
    return Verdict.REJECTED


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a `Retry-After` header (delta seconds or an HTTP date); None when absent/bad."""
    if value is None:
        return None
    with contextlib.suppress(ValueError):
        seconds = float(value)  # PagerDuty sends whole seconds; fractions are taken as meant
        return seconds if 0 <= seconds < math.inf else None
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if moment.tzinfo is None:
        return None
    return max(0.0, moment.timestamp() - now)


def explain(response: str, limit: int = 300) -> str:
    """An answer's body in one line: PagerDuty's `message` and `errors` when it is PagerDuty's JSON
    (`Event object is invalid: 'payload.summary' is missing or blank`), else the text with its whitespace
    collapsed; at most `limit` characters."""
    try:
        data = json.loads(response)
    except ValueError:
        data = None
    said = ""
    if isinstance(data, dict):
        message = data.get("message")
        errors = data.get("errors")
        parts = [message] if isinstance(message, str) and message.strip() else []
        if isinstance(errors, list):
            parts.append("; ".join(str(e) for e in errors if e not in (None, "")))
        said = ": ".join(p for p in parts if p)
    said = " ".join((said or response).split())
    return said if len(said) <= limit else said[:limit - 1] + "…"


@dataclass(frozen=True)
class Answer:
    """What came back from one attempt: the HTTP status (None: no answer) and the body or the error."""

    status: int | None
    response: str
    retry_after: float | None = None

    def describe(self) -> str:
        return f"HTTP {self.status}" if self.status is not None else self.response


def env_proxy(base_url: str) -> tuple[URL | None, aiohttp.BasicAuth | None]:
    """The proxy the environment names for `base_url` (HTTPS_PROXY, HTTP_PROXY, NO_PROXY), if any."""
    try:
        return get_env_proxy_for_url(URL(base_url))
    except LookupError:
        return None, None


class Client:
    """One aiohttp session to PagerDuty at `base_url`, each request bounded by `timeout` seconds."""

    def __init__(self, base_url: str, timeout: float, clock: Callable[[], float]) -> None:
        self.base_url = base_url
        self._timeout = timeout
        self._clock = clock
        # The proxy (HTTPS_PROXY / HTTP_PROXY, NO_PROXY) is read from the environment once, here, for
        # the one base URL: with trust_env=True aiohttp reads the environment and ~/.netrc again on a
        # worker thread for every request, which was 40% of the daemon's CPU while delivering.
        self._proxy, self._proxy_auth = env_proxy(base_url)
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=timeout),
            headers={"User-Agent": USER_AGENT},
        )

    async def send(self, notification: Notification, payload: bytes, key: str) -> Answer:
        """POST a stored body (`payload`, without a key) to the notification's API with `key` in it."""
        headers = {"Content-Type": "application/json"}
        try:
            async with self._session.post(notification.url(self.base_url), headers=headers,
                                          data=with_key(notification.api, payload, key),
                                          proxy=self._proxy, proxy_auth=self._proxy_auth) as response:
                text = await response.text(errors="replace")
                if key:
                    text = text.replace(key, mask_key(key))
                retry_after = parse_retry_after(response.headers.get("Retry-After"), self._clock())
                return Answer(response.status, text, retry_after)
        except TimeoutError:
            return Answer(None, f"no answer within {self._timeout:g}s")
        except aiohttp.ClientError as exc:
            return Answer(None, f"{type(exc).__name__}: {exc}")

    async def close(self) -> None:
        await self._session.close()
