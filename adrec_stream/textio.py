"""Reading the text files a user gives (interaction logs, YAML configs): one decoding rule with byte-order marks.

A file is UTF-8. A leading byte-order mark, as spreadsheet exports and some editors write it, is not part of the
text: the UTF-8 mark (EF BB BF) is dropped, and a UTF-16 or UTF-32 mark (Excel's "Unicode text" export is
UTF-16 with a mark) selects that encoding. Without a mark the file must be UTF-8.
"""

from __future__ import annotations

import codecs
from pathlib import Path

#: byte-order marks and the encoding each announces; UTF-32 first (its little-endian mark starts like UTF-16's)
_BOMS: tuple[tuple[bytes, str], ...] = (
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)


def encoding_of(raw: bytes) -> str:
    """The encoding a file's leading bytes announce: the byte-order mark's, else ``"utf-8"``."""
    for bom, name in _BOMS:
        if raw.startswith(bom):
            return name
    return "utf-8"


def read_text(path: str | Path) -> str:
    """The text of a file, decoded by the rule of the module docstring (the byte-order mark removed).

    Raises:
        OSError: the file cannot be read.
        UnicodeDecodeError: the bytes are not valid in the announced encoding (``err.encoding`` names it,
            ``err.start`` the byte offset).
    """
    raw = Path(path).read_bytes()
    return raw.decode(encoding_of(raw))
