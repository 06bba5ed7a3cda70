"""What start-up, every reload and `check --config` read, through one path, and how a reload went."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from engine.config import ApiTokens, Config, parse_secrets, parse_tokens, read_lines
from engine.rules import LoadResult, load_ruleset
from engine.rules.errors import Problem
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
    tokens: ApiTokens | None  # the API tokens; None (no tokens_file): the API is open
    sentry_secrets: frozenset[str]  # empty: the Sentry endpoint is off
    errors: list[str]
    warnings: list[str]  # the rules' and the tokens file's


def load_rules(config: Config, *, dry_run: bool, allow_missing_secret_files: bool = False) -> Loaded:
    """The one validation path of start-up, reload and `check --config`: rules, API tokens, Sentry
    client secrets, self-alert services. `dry_run`: a missing key is a warning. `allow_missing_secret_files`
    (only `check --allow-missing-secrets`; a daemon never serves without its tokens): so is an unreadable
    tokens or Sentry secret file."""
    result = load_ruleset(list(config.rules), allow_missing_secrets=dry_run)
    errors = [str(e) for e in result.errors]
    warnings = [str(w) for w in result.warnings]

    def read(file: str, what: str) -> list[str] | None:
        lines = read_lines(file, what)
        if not isinstance(lines, Problem):
            return lines
        if allow_missing_secret_files:
            warnings.append(f"{lines.file}: warning: {lines.message}")
        else:
            errors.append(f"{lines.file}: {lines.message}")
        return None

    tokens = None
    if config.ingest.tokens_file and (lines := read(config.ingest.tokens_file, "tokens")) is not None:
        parsed = parse_tokens(config.ingest.tokens_file, lines)
        if isinstance(parsed, ApiTokens):
            tokens = parsed
            warnings.extend(map(str, parsed.warnings))
        else:
            errors.extend(map(str, parsed))
    sentry: frozenset[str] = frozenset()
    if config.sentry and (lines := read(config.sentry.client_secret_file, "Sentry client secret")) is not None:
        secrets = parse_secrets(config.sentry.client_secret_file, lines, "Sentry client secret")
        if isinstance(secrets, Problem):
            errors.append(f"{secrets.file}: {secrets.message}")
        else:
            sentry = secrets
    if result.ruleset is not None:
        for name in config.self_alert_services:
            if name not in result.ruleset.services:
                errors.append(f"{config.file}: self_alerts: unknown service {name!r} (not in any rule file)")
    return Loaded(result, tokens, sentry, errors, warnings)
