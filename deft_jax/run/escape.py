"""Text from the user's data (class names from folder names or dataset metadata, file paths)
made safe for where it is written: a terminal or a tab-separated line, Markdown, and HTML.

A class name can hold an escape sequence (which rewrites the terminal it is printed on), a
newline or tab (which splits a prediction line), or Markdown/HTML syntax (which breaks
report.md's tables or injects markup). Control and format characters (Unicode categories
Cc, Cf, Zl, Zp: ESC, CR, LF, TAB, bidirectional overrides, ...) become visible escapes such
as `\\x1b` and `\\u202e`; other characters, non-ASCII letters included, are kept.
"""

from __future__ import annotations

import html
import re
import unicodedata

_INVISIBLE = {"Cc", "Cf", "Zl", "Zp"}
_MARKDOWN = re.compile(r"([\\`*_\[\]|#])")


def _escape_char(ch: str) -> str:
    if unicodedata.category(ch) not in _INVISIBLE:
        return ch
    code = ord(ch)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def terminal(text: str) -> str:
    """`text` with every control/format character as a visible escape: one line, no
    terminal sequences, no tabs (safe in a tab-separated line)."""
    return "".join(_escape_char(ch) for ch in str(text))


def markdown(text: str) -> str:
    """`text` for a Markdown line or table cell: visible escapes (as `terminal`), HTML
    special characters as entities, and Markdown syntax characters backslash-escaped."""
    return _MARKDOWN.sub(r"\\\1", html.escape(terminal(text), quote=False))


def html_text(text: str) -> str:
    """`text` for HTML content or a quoted attribute: visible escapes (as `terminal`) and
    `& < > " '` as entities."""
    return html.escape(terminal(text), quote=True)
