"""Artist names: one rule for the whole store, whichever door a name comes in by (CLI or HTTP API).

A name becomes a URL path segment (/v1/artists/{name}), a CSV cell and a line of terminal
output, so path separators and control characters are refused wherever it is given; and a
name is shown in reports and pages, so one that looks like another (invisible formatting
characters such as a zero-width space or a right-to-left override, spaces at either end) is too.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable

NAME_RULE = ("1-100 characters, not blank, no spaces at either end, no '/', '\\', control characters or "
             "invisible formatting characters other than zero-width joiners")
NAME_CHAR = "[^\\x00-\\x1f\\x7f-\\x9f/\\\\]"  # any character but C0, DEL and C1 controls and path separators
_NAME = re.compile(NAME_CHAR + "{1,100}")


JOINERS = {"\u200c", "\u200d"}  # zero-width (non-)joiners: Persian spelling, emoji sequences need them


def valid_name(name: object, new: bool = True) -> bool:
    """Whether `name` follows NAME_RULE. Whole-string match: a regex `$` would also accept a name
    ending in a newline. A lone surrogate (JSON allows "\\ud800") is valid JSON but no UTF-8 text,
    so SQLite cannot store it. The look-alike part of the rule (spaces at either end, invisible
    formatting characters but the joiners) is for names entering the store (`new`): an artist
    registered before it came keeps its name, and can still be added to."""
    if not isinstance(name, str) or not _NAME.fullmatch(name) or not name.strip():
        return False
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return not new or name.strip() == name and not any(unicodedata.category(c) == "Cf" and c not in JOINERS
                                                       for c in name)


def addable_name(name: object, exists: Callable[[str], bool]) -> bool:
    """Whether works may be added under `name`: a valid new name, or an artist the store already
    holds (`exists`) whose name predates the look-alike part of the rule."""
    return valid_name(name, new=False) and (valid_name(name) or exists(name))  # type: ignore[arg-type]
