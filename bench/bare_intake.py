"""The yardstick for intake-single: `python -m bench.bare_intake`, a bare aiohttp handler on
`POST /v1/events` that parses the JSON body and answers 202, and does nothing else."""

from __future__ import annotations

import json

from aiohttp import web

from bench.processes import serve


async def post_events(request: web.Request) -> web.Response:
    events = json.loads(await request.read())
    return web.json_response({"accepted": len(events) if isinstance(events, list) else 1}, status=202)


def make_app() -> web.Application:
    app = web.Application()
    app.add_routes([web.post("/v1/events", post_events)])
    return app


if __name__ == "__main__":
    serve(make_app())
