"""AIP-158 pagination: page sizes and opaque page tokens shared by the List methods."""

from __future__ import annotations

import base64
import binascii

from services.common.errors import Violations

DEFAULT_PAGE_SIZE = 50


def page_size(requested: int) -> int:
    """The page size to use for a request's (whose range its field's annotation checks)."""
    return requested or DEFAULT_PAGE_SIZE


def encode_token(cursor: str) -> str:
    """An opaque token for the page after `cursor` (the last key of this page)."""
    return base64.urlsafe_b64encode(f"v1:{cursor}".encode()).decode()


def decode_token(token: str, violations: Violations) -> str | None:
    """The cursor a token stands for; None (and a violation) for a token we never made."""
    if not token:
        return None
    try:
        text = base64.urlsafe_b64decode(token.encode("ascii")).decode()
    except (binascii.Error, UnicodeError, ValueError):
        text = ""
    if not text.startswith("v1:") or len(text) > 512:
        violations.add("page_token", "is not a token this method returned")
        return None
    return text[3:]


# The largest cursor a token of ours can hold: SQLite's INTEGER is 64-bit signed.
MAX_CURSOR = 2**63 - 1


def decode_number(token: str, violations: Violations) -> int | None:
    """The numeric cursor a token stands for (ListOrders' sequence number).

    Only ASCII digits: `str.isdigit` also accepts '²' (which int() refuses), and a number
    past 64 bits overflowed the database driver; both used to answer INTERNAL."""
    cursor = decode_token(token, violations)
    if cursor is None:
        return None
    if not (cursor.isascii() and cursor.isdigit() and int(cursor) <= MAX_CURSOR):
        violations.add("page_token", "is not a token this method returned")
        return None
    return int(cursor)
