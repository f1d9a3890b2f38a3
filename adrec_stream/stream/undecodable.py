"""Record batches a Kafka client cannot decode: one clear operations error instead of a crash loop.

Producers may compress their record batches with gzip, snappy, lz4 or zstd; the codec libraries of both clients
(``cramjam`` for aiokafka, under the Faust workers; ``lz4``, ``python-snappy``, ``zstandard`` for kafka-python,
under the fine-tune worker and the tools) are dependencies of the project, so every codec is read. A batch that
still cannot be decoded (a codec library missing from the install, a corrupt or truncated batch, a CRC
mismatch) used to escape from the client's fetcher as a bare library error (``UnsupportedCodecError``,
``cramjam.DecompressionError``...): the worker died with a traceback and died again at every restart, at the same
offset, with nothing naming where.

:func:`install_undecodable_batch_errors` (idempotent) wraps both clients' record-unpacking generators: the first
failure to decode a partition's records is logged once as one ``undecodable_record_batch`` error event (topic,
partition, the first offset that could not be read, the cause, what to do) and re-raised as
:class:`UndecodableBatchError` (an :class:`~adrec_stream.errors.AdrecStreamError`: the CLI prints it as one line
and exits 2, which supervisors such as the demo's do not restart). Later log records lose their tracebacks (the
client's and the framework's shutdown add nothing an operator can use). Nothing is skipped: the records of that
batch are still unread, and the committed offset stays before them.
"""

from __future__ import annotations

import threading
from typing import Any

from adrec_stream.errors import AdrecStreamError
from adrec_stream.logging import drop_tracebacks_from_now_on

_LOCK = threading.Lock()
_INSTALLED = False
_FIRST: UndecodableBatchError | None = None


class UndecodableBatchError(AdrecStreamError):
    """A partition's record batch that the Kafka client cannot decode.

    Attributes:
        topic, partition: where.
        offset: the first offset that could not be read (the failed batch starts at or before it).
        cause: the client's error, as ``TypeName: message``.
    """

    def __init__(self, topic: str, partition: int, offset: int, cause: str) -> None:
        self.topic, self.partition, self.offset, self.cause = topic, int(partition), int(offset), cause
        super().__init__(
            f"cannot decode the record batch of {topic} partition {partition} at offset {offset}: {cause}. "
            f"{hint_for(cause)}")


def hint_for(cause: str) -> str:
    """What an operator can do about an undecodable batch with this cause."""
    if "codec" in cause.lower() and ("not found" in cause.lower() or "unsupported" in cause.lower()):
        return ("The compression codec's library is missing from this install: reinstall the project "
                "(pip install -e .; it brings cramjam, lz4, python-snappy and zstandard) and restart the worker.")
    return ("The batch is corrupt or was written by an incompatible producer; nothing after it is read. Fix or "
            "re-produce it, or move the consumer group past the batch (its records are then lost) and restart.")


def first_undecodable() -> UndecodableBatchError | None:
    """The first undecodable batch met in this process (None if none): a worker's exit reports it."""
    return _FIRST


def _report(topic: str, partition: int, offset: int, err: BaseException) -> UndecodableBatchError:
    """Log the failure once (per process) and return the error to raise in place of the client's."""
    global _FIRST
    text, name = str(err)[:300], type(err).__name__
    error = UndecodableBatchError(topic, partition, offset, text if text.startswith(name) else f"{name}: {text}")
    with _LOCK:
        first = _FIRST is None
        if first:
            _FIRST = error
    if first:
        from adrec_stream.logging import get_logger  # noqa: PLC0415

        get_logger("adrec_stream.undecodable").error(
            "undecodable_record_batch", topic=topic, partition=int(partition), offset=int(offset),
            cause=error.cause, hint=hint_for(error.cause))
        drop_tracebacks_from_now_on()
    return error


def _wrap(unpack: Any, where: Any) -> Any:
    """A record-unpacking generator method whose decoding failures become :class:`UndecodableBatchError`.

    ``where(self, args)`` -> (topic, partition, next offset) of the partition being unpacked.
    """

    def unpack_reporting(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            yield from unpack(self, *args, **kwargs)
        except UndecodableBatchError:
            raise
        except Exception as err:  # the client's codec / CRC / format errors, whatever their type
            topic, partition, offset = where(self, args)
            raise _report(topic, partition, offset, err) from err

    unpack_reporting.adrec_wrapped = True  # type: ignore[attr-defined]
    return unpack_reporting


def install_undecodable_batch_errors() -> None:
    """Wrap the record unpacking of aiokafka (Faust workers) and kafka-python (fine-tune worker, tools) once per
    process (module docstring). A client that is not installed is left out."""
    global _INSTALLED
    with _LOCK:
        if _INSTALLED:
            return
        _INSTALLED = True
    try:
        from aiokafka.consumer.fetcher import PartitionRecords  # noqa: PLC0415
    except ImportError:
        pass
    else:
        if not getattr(PartitionRecords._unpack_records, "adrec_wrapped", False):
            PartitionRecords._unpack_records = _wrap(
                PartitionRecords._unpack_records, lambda s, _a: (s._tp.topic, s._tp.partition, s.next_fetch_offset))
    try:
        from kafka.consumer.fetcher import Fetcher  # noqa: PLC0415
    except ImportError:
        pass
    else:
        records = Fetcher.PartitionRecords
        if not getattr(records._unpack_records, "adrec_wrapped", False):
            records._unpack_records = _wrap(
                records._unpack_records, lambda s, a: (a[0].topic, a[0].partition, s.next_fetch_offset))
