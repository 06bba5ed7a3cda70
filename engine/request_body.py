"""Reading a client's request body, bounded in size and in time; what the client did wrong, as a value.

`read_body` is the one way a handler reads a body: at most `ingest.max_body` bytes (declared or sent,
chunked or not: 413), all of it within `ingest.body_timeout` of the headers (408), framed and encoded
as HTTP says (400). A client that closes its connection mid-body is a client event, logged in one line.
`RequestError` carries the status and the message the client gets as `{"error": message, ...}`.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiohttp import web
from aiohttp.http import HttpProcessingError

log = logging.getLogger("alert_engine.request_body")


class RequestError(Exception):
    """A request the client must change (or resend): answered `status` with `{"error": message, **more}`,
    and the connection closed after the answer when `close`."""

    def __init__(self, status: int, message: str, *, close: bool = False, **more: Any) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.close = close
        self.more = more


def too_large(limit: int) -> RequestError:
    return RequestError(413, f"body larger than the limit of {limit} bytes")


async def read_body(request: web.Request, *, limit: int, timeout: float) -> bytes:
    """The whole body; RequestError when it is too large, late, malformed, or cut off by the client."""
    if request.content_length is not None and request.content_length > limit:
        raise too_large(limit)
    try:
        async with asyncio.timeout(timeout):
            return await request.read()
    except TimeoutError:
        raise RequestError(408, f"the body did not arrive within {timeout:g}s of the headers") from None
    except web.HTTPRequestEntityTooLarge:  # chunked, or more than Content-Length said
        raise too_large(limit) from None
    except ConnectionResetError:
        log.info("%s %s: the client closed the connection before its whole body arrived", request.method,
                 request.path)
        raise RequestError(400, "connection closed before the whole body arrived") from None
    except (web.RequestPayloadError, HttpProcessingError) as exc:  # chunk framing, Content-Encoding
        # Nothing more of this body can be read: mark it ended, so that aiohttp does not try to read (and
        # log) the rest after the answer, and close the connection, whose framing is lost.
        request.content.feed_eof()
        cause = exc.__cause__ if isinstance(exc.__cause__, HttpProcessingError) else exc
        raise RequestError(400, f"malformed body: {getattr(cause, 'message', cause)}", close=True) from None
