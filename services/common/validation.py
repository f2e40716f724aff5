"""Field checks every service uses for ids and money (see errors.Violations)."""

from __future__ import annotations

import re

from services.common.errors import Violations

ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,64}")
CURRENCY_PATTERN = re.compile(r"[A-Z]{3}")
ID_RULE = "must be 1 to 64 letters, digits, '-' or '_'"


def check_id(violations: Violations, field: str, value: str) -> bool:
    return violations.check(ID_PATTERN.fullmatch(value) is not None, field, ID_RULE)
