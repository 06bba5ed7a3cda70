"""Errors are values with context: where in which file, which rule, what is wrong."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

# A path into a loaded YAML document: mapping keys and list indexes, e.g. ("rules", 3, "match", "all", 0).
Path = tuple[str | int, ...]


def shown(value: Any) -> str:
    """A value as messages show it: a string in single quotes, anything else as JSON (null, true, {"a": 1})."""
    if isinstance(value, str):
        return f"'{value}'"
    return json.dumps(value, ensure_ascii=False, default=str)


def key_name(path: Path) -> str:
    """The key at `path` as it is written within its rule (`summary`, `details.region`, `links.0.href`), or
    within the file when it lies outside the rules."""
    inside = path[2:] if len(path) > 2 and path[0] == "rules" and isinstance(path[1], int) else path
    return ".".join(map(str, inside))


@dataclass(frozen=True)
class Problem:
    """Something wrong at a path inside one file's document, before it is given a line and a column.

    The loader's marks turn it into a RuleError (`locate`); `rule` names the rule it concerns, if any.
    """

    file: str
    path: Path
    message: str
    rule: str | None = None
    warning: bool = False


@dataclass(frozen=True)
class RuleError:
    """A located error in a rule file, printed as `FILE:LINE:COL: rule 'NAME': message`."""

    file: str
    line: int
    col: int
    rule: str | None
    message: str
    warning: bool = False

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}:{self.col}: "
        kind = "warning: " if self.warning else ""
        who = f"rule '{self.rule}': " if self.rule else ""
        return f"{where}{kind}{who}{self.message}"


class RuleSetError(Exception):
    """Raised when a rule set cannot be built; carries every error found."""

    def __init__(self, errors: list[RuleError]) -> None:
        self.errors = errors
        super().__init__("\n".join(str(e) for e in errors))
