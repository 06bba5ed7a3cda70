"""engine/server.py: the access table covers every route the API serves, and the scope each needs.
(The requests themselves, 401 / 403 / 2xx, go through the real daemon in tests/e2e/test_auth.py.)"""

from __future__ import annotations

from engine.config import Config
from engine.daemon import Daemon
from engine.logs import Redactor
from engine.server import ACCESS, make_app, required_scope


def test_every_route_has_its_scope_in_the_access_table_and_the_table_names_no_other():
    daemon = Daemon(Config(file="engine.yaml", rules=("rules",), state_dir="state"), redactor=Redactor())
    app = make_app(daemon, 1024)
    served = {(r.method, r.resource.canonical) for r in app.router.routes()
              if r.method != "HEAD" and r.resource is not None}
    assert served == set(ACCESS)


def test_the_scope_each_kind_of_route_needs():
    def scope(method: str, path: str, metrics_need_read: bool = False) -> str | None:
        return required_scope(method, path, metrics_need_read=metrics_need_read)

    assert scope("POST", "/v1/events") == "events"
    assert scope("POST", "/v1/sources/sentry") is None  # its signature instead
    assert scope("GET", "/healthz") is None and scope("HEAD", "/readyz") is None
    assert scope("GET", "/v1/notifications") == "read" and scope("HEAD", "/v1/dead-letters") == "read"
    assert scope("GET", "/v1/silences") == "read" and scope("POST", "/v1/silences") == "admin"
    assert scope("DELETE", "/v1/silences/{id}") == "admin" and scope("POST", "/-/reload") == "admin"
    assert scope("GET", "/metrics") is None and scope("GET", "/metrics", metrics_need_read=True) == "read"
    assert scope("PUT", "/v1/anything-new") == "admin"  # a route missing from the table is closed
