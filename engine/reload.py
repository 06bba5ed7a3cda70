"""What start-up, every reload and `check --config` read, through one path, and how a reload went."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from engine.config import Config, read_secrets
from engine.rules import LoadResult, load_ruleset
from engine.units import iso_seconds


@dataclass(frozen=True)
class ReloadResult:
    ok: bool
    at: float
    errors: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    sha256: str | None = None
    rules: int = 0

    def view(self) -> dict[str, Any]:
        return {"ok": self.ok, "at": iso_seconds(self.at), "errors": list(self.errors), "warnings": list(self.warnings),
                "sha256": self.sha256, "rules": self.rules}


class StartupError(Exception):
    """The daemon cannot start: the messages say why (every rule error, for a broken rule set)."""

    def __init__(self, messages: list[str]) -> None:
        super().__init__("\n".join(messages))
        self.messages = messages


@dataclass(frozen=True)
class Loaded:
    """What start-up and every reload read: the rules, the secrets the API checks, and every error."""

    result: LoadResult
    tokens: frozenset[str]  # ingest tokens; empty: POSTs need none
    sentry_secrets: frozenset[str]  # empty: the Sentry endpoint is off
    errors: list[str]


def load_rules(config: Config, *, dry_run: bool) -> Loaded:
    """The one validation path of start-up, reload and `check --config`: rules, ingest tokens, Sentry
    client secrets, self-alert services."""
    result = load_ruleset(list(config.rules), allow_missing_secrets=dry_run)
    errors = [str(e) for e in result.errors]

    def secrets(file: str | None, what: str) -> frozenset[str]:
        if not file:
            return frozenset()
        read = read_secrets(file, what)
        if isinstance(read, frozenset):
            return read
        errors.append(f"{read.file}: {read.message}")
        return frozenset()

    tokens = secrets(config.ingest.tokens_file, "tokens")
    sentry = secrets(config.sentry.client_secret_file if config.sentry else None, "Sentry client secret")
    if result.ruleset is not None:
        for name in config.self_alert_services:
            if name not in result.ruleset.services:
                errors.append(f"{config.file}: self_alerts: unknown service {name!r} (not in any rule file)")
    return Loaded(result, tokens, sentry, errors)

