"""Restricted loading of pickled dataset files (the paper's ``dataset.pkl`` splits).

A pickle is a small program: the ``GLOBAL``/``STACK_GLOBAL`` + ``REDUCE`` opcodes can import and
call any function (``os.system`` ...) while loading. :func:`safe_load_pickle` refuses every
global lookup, so only the container and scalar opcodes remain, and then checks that the result
is made only of ``dict``/``list``/``tuple``/``int``/``str``/``float``/``bool``/``None``.
Nothing from the file is ever executed.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

from adrec_stream.errors import DataFileError, UnsafePickleError

#: Python types a dataset pickle may contain (``bool`` is a subclass of ``int``, listed for clarity).
ALLOWED_TYPES: tuple[type, ...] = (dict, list, tuple, int, bool, float, str, type(None))

EXPECTED_FORMAT = (
    'a pickled dict {"train": [[item, ...] per user], "val": [[item] per user], "test": [[item] per user]} '
    "with integer item ids 1..N"
)


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that refuses every global (class or function) lookup and persistent id."""

    def __init__(self, file: io.BufferedIOBase, path: Path) -> None:
        super().__init__(file)
        self._path = path

    def find_class(self, module: str, name: str) -> Any:  # noqa: D401 - pickle hook
        raise UnsafePickleError(
            f"{self._path}: refused to load: the pickle asks for the global {module}.{name}; "
            "only dict/list/tuple/int/str/float/bool/None are allowed (is this file from a trusted source?)"
        )

    def persistent_load(self, pid: Any) -> Any:  # noqa: D401 - pickle hook
        raise UnsafePickleError(
            f"{self._path}: refused to load: the pickle uses a persistent id ({pid!r}); "
            "only plain containers and scalars are allowed"
        )


def _check_types(obj: Any, path: Path) -> None:
    """Walk ``obj`` iteratively and refuse any value whose type is not in :data:`ALLOWED_TYPES`."""
    stack = [obj]
    while stack:
        cur = stack.pop()
        if type(cur) not in ALLOWED_TYPES:
            raise UnsafePickleError(
                f"{path}: refused to load: the pickle contains a {type(cur).__name__} value; "
                "only dict/list/tuple/int/str/float/bool/None are allowed"
            )
        if isinstance(cur, dict):
            stack.extend(cur.keys())
            stack.extend(cur.values())
        elif isinstance(cur, (list, tuple)):
            stack.extend(cur)


def safe_load_pickle(path: str | Path) -> object:
    """Load a pickle that may contain only plain containers and scalars.

    Args:
        path: the pickle file (opened read-only; it is never modified).

    Returns:
        The unpickled object (nested dict/list/tuple of int/str/float/bool/None).

    Raises:
        DataFileError: the file is missing, unreadable, or not a valid pickle.
        UnsafePickleError: the pickle references any global (e.g. a ``__reduce__`` payload
            calling ``os.system``) or yields a type outside the allowed set; nothing is executed.
    """
    p = Path(path)
    if not p.is_file():
        raise DataFileError(f"dataset file not found: {p} (expected {EXPECTED_FORMAT})")
    try:
        data = p.read_bytes()
    except OSError as err:
        raise DataFileError(f"cannot read {p}: {err}") from None
    try:
        obj = _RestrictedUnpickler(io.BytesIO(data), p).load()
    except UnsafePickleError:
        raise
    except Exception as err:  # truncated / garbage input raises many different types
        raise DataFileError(f"{p}: not a valid pickle ({type(err).__name__}: {err}); expected {EXPECTED_FORMAT}") from None
    _check_types(obj, p)
    return obj
