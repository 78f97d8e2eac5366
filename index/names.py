"""Artist names: one rule for the whole store, whichever door a name comes in by (CLI or HTTP API).

A name becomes a URL path segment (/v1/artists/{name}), a CSV cell and a line of terminal
output, so path separators and control characters are refused wherever it is given (and, for new
names, "." and "..", which clients fold into the URL's path); and a
name is shown in reports and pages, so one that looks like another is too: invisible characters
(formatting ones such as a zero-width space or a right-to-left override, and the others Unicode
lists as ignorable: fillers, variation selectors after a letter; zero-width joiners except between two
non-ASCII characters, where Persian spelling and emoji sequences need them), blank or line-breaking ones
other than a plain space, spaces at either end, and a decomposed spelling of a composed one
("jose" + U+0301 beside "josé": names must be in NFC).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable

NAME_RULE = ("1-100 characters in Unicode NFC, not blank, not '.' or '..', no spaces at either end, no '/', "
             "'\\', control characters, spaces other than ' ', or invisible characters other than zero-width joiners "
             "between two non-ASCII characters")
NAME_CHAR = "[^\\x00-\\x1f\\x7f-\\x9f/\\\\]"  # any character but C0, DEL and C1 controls and path separators
_NAME = re.compile(NAME_CHAR + "{1,100}")


JOINERS = {"\u200c", "\u200d"}  # zero-width (non-)joiners: Persian spelling, emoji sequences need them
# Unicode's Default_Ignorable_Code_Point characters that are not format characters (Cf, refused as a
# category): they show as nothing. (DerivedCoreProperties.txt; unicodedata does not carry the property.)
IGNORABLE = re.compile("[\u034f\u115f\u1160\u17b4\u17b5\u180b-\u180f\u2800\u3164\uffa0\ufff0-\ufff8"
                       "\U0001bca0-\U0001bca3\U0001d173-\U0001d17a\U000e0000-\U000e0fff]")
VARIATION = re.compile("[\ufe00-\ufe0f\U000e0100-\U000e01ef]")  # variation selectors: an emoji's, not a letter's


def _looks_like_another(name: str) -> bool:
    """Whether a name could show like another name: see the module's docstring."""
    if name.strip() != name or not unicodedata.is_normalized("NFC", name) or IGNORABLE.search(name):
        return True
    if name in (".", ".."):  # as a URL path segment, clients fold it into the path: /v1/artists/./works
        return True
    for i, c in enumerate(name):
        kind = unicodedata.category(c)
        if kind == "Cf" and c not in JOINERS or kind in ("Zl", "Zp") or kind == "Zs" and c != " ":
            return True
        if c in JOINERS and not (0 < i < len(name) - 1 and all(not n.isascii() and n not in JOINERS
                                                                for n in (name[i - 1], name[i + 1]))):
            return True  # joins nothing (at an end, beside another joiner, or between Latin letters): unseen
        if VARIATION.match(c) and (i == 0 or unicodedata.category(name[i - 1])[0] != "S"):
            return True  # a variation selector changes a symbol's look (emoji or text); after a letter, nothing
    return False


def valid_name(name: object, new: bool = True) -> bool:
    """Whether `name` follows NAME_RULE. Whole-string match: a regex `$` would also accept a name
    ending in a newline. A lone surrogate (JSON allows "\\ud800") is valid JSON but no UTF-8 text,
    so SQLite cannot store it. The look-alike part of the rule (`_looks_like_another`) is for names
    entering the store (`new`): an artist registered before it came keeps its name, and can still
    be added to."""
    if not isinstance(name, str) or not _NAME.fullmatch(name) or not name.strip():
        return False
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return not new or not _looks_like_another(name)


def addable_name(name: object, exists: Callable[[str], bool]) -> bool:
    """Whether works may be added under `name`: a valid new name, or an artist the store already
    holds (`exists`) whose name predates the look-alike part of the rule."""
    return valid_name(name, new=False) and (valid_name(name) or exists(name))  # type: ignore[arg-type]
