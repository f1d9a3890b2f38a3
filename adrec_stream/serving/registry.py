"""A file-system model registry: numbered, immutable versions and an atomic "latest" pointer.

Layout under ``root``::

    v000001/model.pt        the checkpoint (copied in; never modified afterwards)
    v000001/version.json    {"version", "published_at", "source", "size", "sha256", "meta"}
    v000002/...
    LATEST                  "2\\n"   (written to a temp file, fsynced, then os.replace'd)
    .lock                   flock() taken by publishers and set_latest (serialises version numbers)
    .stage-<pid>-<hex>/     a version being assembled by process <pid> (never read)
    .LATEST.<hex>.tmp       the pointer being written

A version folder is assembled in a hidden staging folder and renamed into place in one step, so a reader
never sees a half-written version; the pointer then moves to it. A publisher killed half-way (``kill -9``)
leaves at most a staging folder (no version, ``LATEST`` unchanged) or, when killed between the rename and the
pointer write, a complete version that ``LATEST`` does not name yet; :meth:`ModelRegistry.clean_staging`
(also run at the start of every publish) removes the staging folders of dead processes and stray pointer
temp files.

Readers (:meth:`ModelRegistry.latest`) take no lock and never look at staging folders: they read ``LATEST``
and check that version is complete (``version.json`` readable, the checkpoint present with the recorded
size); if not, the newest complete version is used instead.
Whether the checkpoint *loads* is checked by the consumer (:class:`~adrec_stream.serving.recommender.
ReloadingRecommender` refuses a version whose load raises ``CheckpointError`` and keeps the previous one).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from adrec_stream.errors import CheckpointError
from adrec_stream.procs import pid_alive

CHECKPOINT_NAME = "model.pt"
INFO_NAME = "version.json"
POINTER_NAME = "LATEST"
_VERSION_DIR = re.compile(r"v(\d{6,})")
_STAGE_DIR = re.compile(r"\.stage-(\d+)-[0-9a-zA-Z]+")
_POINTER_TMP = re.compile(r"\.LATEST\..+\.tmp")
#: manifest keys that :meth:`ModelRegistry.list_versions` copies when the version's ``meta`` has them
LIST_KEYS = ("parent_version", "vocab_size", "new_items", "heldout", "wall_s", "source")


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class ModelRegistry:
    """Versioned checkpoints under ``root``. See the module docstring for the layout.

    Safe for several publisher processes (an ``flock`` serialises them) and any number of readers.

    Args:
        root: the registry folder.
        create: create ``root`` (and its parents) when missing (default). With False, a missing folder is
            an error (for read-only tools such as ``adrec-stream model list``, which must not create it).

    Raises:
        CheckpointError: ``create=False`` and ``root`` is not an existing folder.
    """

    def __init__(self, root: str | Path, *, create: bool = True) -> None:
        self.root = Path(root)
        if create:
            self.root.mkdir(parents=True, exist_ok=True)
        elif not self.root.is_dir():
            raise CheckpointError(
                f"model registry {self.root} does not exist (no model was published there; check --registry / "
                "registry_dir in the stream config)"
            )

    # ------------------------------------------------------------------ paths
    def version_dir(self, version: int) -> Path:
        """Folder of ``version`` (whether or not it exists)."""
        return self.root / f"v{version:06d}"

    def path(self, version: int) -> Path:
        """Checkpoint file of ``version`` (whether or not it exists)."""
        return self.version_dir(version) / CHECKPOINT_NAME

    @contextmanager
    def _locked(self) -> Iterator[None]:
        with open(self.root / ".lock", "a+") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    # ------------------------------------------------------------------ reads
    def _all_versions(self) -> list[int]:
        out = []
        try:
            entries = list(os.scandir(self.root))
        except FileNotFoundError:
            return []
        for e in entries:
            m = _VERSION_DIR.fullmatch(e.name)
            if m and e.is_dir():
                out.append(int(m.group(1)))
        return sorted(out)

    def info(self, version: int) -> dict[str, Any] | None:
        """The ``version.json`` of a complete version (with its ``meta``), or None if absent/incomplete."""
        d = self.version_dir(version)
        try:
            info = json.loads((d / INFO_NAME).read_text())
            size = (d / CHECKPOINT_NAME).stat().st_size
        except (OSError, ValueError):
            return None
        if not isinstance(info, dict) or info.get("version") != version or info.get("size") != size:
            return None
        return info

    def is_valid(self, version: int) -> bool:
        """True if the version folder is complete (info readable, checkpoint present with the recorded size)."""
        return self.info(version) is not None

    def versions(self) -> list[int]:
        """Complete versions, ascending."""
        return [v for v in self._all_versions() if self.is_valid(v)]

    def pointer(self) -> int | None:
        """The version named by ``LATEST`` (not checked), or None if there is no readable pointer."""
        try:
            text = (self.root / POINTER_NAME).read_text().strip()
        except OSError:
            return None
        return int(text) if text.isdigit() else None

    def manifest(self, version: int) -> dict[str, Any] | None:
        """What was published as ``version``: its ``meta`` dict (as given to :meth:`publish`) with the registry's
        own facts on top: ``version``, ``published_at`` (epoch seconds, float), ``sha256`` and ``size`` (bytes)
        of the checkpoint. None when the version is absent or incomplete.
        """
        info = self.info(version)
        if info is None:
            return None
        meta = info.get("meta")
        out: dict[str, Any] = dict(meta) if isinstance(meta, dict) else {}
        out.update(version=version, published_at=info.get("published_at"), sha256=info.get("sha256"),
                   size=info.get("size"))
        return out

    def published_ts(self, version: int) -> float | None:
        """When ``version`` was published, Unix seconds (``published_at`` of its ``version.json``: epoch seconds,
        or an ISO-8601 time from a hand-written registry); None when absent, incomplete or unreadable."""
        info = self.info(version)
        ts = info.get("published_at") if info is not None else None
        if isinstance(ts, bool):
            return None
        if isinstance(ts, int | float):
            return float(ts)
        if isinstance(ts, str):
            try:
                when = datetime.fromisoformat(ts.replace("Z", "+00:00"))
            except ValueError:
                return None
            return (when if when.tzinfo is not None else when.replace(tzinfo=UTC)).timestamp()
        return None

    def list_versions(self) -> list[dict[str, Any]]:
        """One row per complete version, ascending, for listings (``adrec-stream model list``).

        Each row: ``version`` (int), ``published_at`` (ISO-8601 string, UTC, seconds; None if unknown),
        ``size`` (bytes of the checkpoint), ``latest`` (True for the version readers currently get from
        :meth:`latest`, i.e. the one ``LATEST`` names, or the newest complete one when the pointer is unusable),
        and those of ``parent_version``, ``vocab_size``, ``new_items``, ``heldout``, ``wall_s``, ``source``
        that the version's manifest has (see :data:`LIST_KEYS`).
        """
        cur = self.latest()
        current = cur[0] if cur is not None else None
        rows = []
        for v in self._all_versions():
            man = self.manifest(v)
            if man is None:
                continue
            ts = man.get("published_at")
            published = (datetime.fromtimestamp(ts, tz=UTC).isoformat(timespec="seconds")
                         if isinstance(ts, int | float) else None)
            row: dict[str, Any] = {"version": v, "published_at": published, "size": man.get("size"),
                                   "latest": v == current}
            row.update({k: man[k] for k in LIST_KEYS if k in man})
            rows.append(row)
        return rows

    def latest(self) -> tuple[int, Path] | None:
        """``(version, checkpoint path)`` of the current version, or None if the registry is empty.

        The current version is the one ``LATEST`` names when that version is complete; otherwise (pointer
        missing, unreadable, or naming a broken/deleted version) the newest complete version.
        """
        v = self.pointer()
        if v is not None and self.is_valid(v):
            return v, self.path(v)
        valid = self.versions()
        if not valid:
            return None
        return valid[-1], self.path(valid[-1])

    # ------------------------------------------------------------------ writes
    def _write_pointer(self, version: int) -> None:
        tmp = self.root / f".{POINTER_NAME}.{uuid.uuid4().hex}.tmp"
        with open(tmp, "w") as fh:
            fh.write(f"{version}\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.root / POINTER_NAME)
        _fsync_dir(self.root)

    def clean_staging(self) -> list[Path]:
        """Remove what interrupted publishers left behind: staging folders ``.stage-<pid>-<hex>`` whose process
        is no longer alive (:func:`~adrec_stream.procs.pid_alive`), and ``.LATEST.*.tmp`` pointer temp files.

        Folders of live processes (including this one: another thread may be publishing) are left alone. The
        pointer temp files are removed under the registry lock, which every pointer writer holds, so a
        pointer being written right now is never touched. Safe to call at any time, from any process.

        Returns:
            The removed paths, sorted.
        """
        removed: list[Path] = []
        try:
            entries = list(os.scandir(self.root))
        except FileNotFoundError:
            return []
        stale_tmp = False
        for e in entries:
            m = _STAGE_DIR.fullmatch(e.name)
            if m and e.is_dir(follow_symlinks=False) and not pid_alive(int(m.group(1))):
                shutil.rmtree(e.path, ignore_errors=True)
                if not os.path.lexists(e.path):
                    removed.append(Path(e.path))
            elif _POINTER_TMP.fullmatch(e.name):
                stale_tmp = True
        if stale_tmp:
            with self._locked():
                for e in os.scandir(self.root):
                    if _POINTER_TMP.fullmatch(e.name) and e.is_file(follow_symlinks=False):
                        try:
                            os.unlink(e.path)
                        except FileNotFoundError:
                            continue
                        removed.append(Path(e.path))
        if removed:
            _fsync_dir(self.root)
        return sorted(removed)

    def publish(
        self,
        checkpoint_path: str | Path,
        meta: dict[str, Any] | None = None,
        *,
        move: bool = False,
        before_commit: Callable[[Path], object] | None = None,
    ) -> int:
        """Add a checkpoint as the next version and point ``LATEST`` at it.

        Leftovers of interrupted publishers are removed first (:meth:`clean_staging`). The checkpoint is
        copied (or moved) into a staging folder and fsynced; then, under the registry lock, the version number
        is taken, ``version.json`` written, the folder renamed to ``vNNNNNN`` and ``LATEST`` moved.

        Args:
            checkpoint_path: a checkpoint file, or a folder holding ``model.pt`` (as written by
                :func:`~adrec_stream.model.checkpoint.save_checkpoint`).
            meta: JSON-serialisable facts about this version (training data, metrics...), stored in
                ``version.json`` and returned by :meth:`manifest`.
            move: move the file in instead of copying it (same file system: one rename). If the publish fails
                with an exception the file is moved back; after ``kill -9`` it is in the staging folder, which
                a later :meth:`clean_staging` deletes.
            before_commit: test hook, called with the staging folder's path once the checkpoint is in it and
                fsynced, before the version number is taken and the folder renamed. An exception it raises
                aborts the publish (nothing is published, the staging folder is removed).

        Returns:
            The new version number (1 for the first).

        Raises:
            CheckpointError: the checkpoint file does not exist.
            TypeError: ``meta`` is not JSON-serialisable.
        """
        src = Path(checkpoint_path)
        if src.is_dir():
            src = src / CHECKPOINT_NAME
        if not src.is_file():
            raise CheckpointError(f"cannot publish {src}: no such checkpoint file (save one with save_checkpoint first)")
        meta_json = json.dumps(meta or {})  # TypeError early, before anything is written
        self.clean_staging()
        stage = self.root / f".stage-{os.getpid()}-{uuid.uuid4().hex}"
        stage.mkdir()
        try:
            target = stage / CHECKPOINT_NAME
            if move:
                shutil.move(str(src), target)
            else:
                shutil.copyfile(src, target)
            with open(target, "rb+") as fh:
                os.fsync(fh.fileno())
            size = target.stat().st_size
            digest = _sha256(target)
            _fsync_dir(stage)
            if before_commit is not None:
                before_commit(stage)
            with self._locked():
                existing = self._all_versions()
                version = (existing[-1] + 1) if existing else 1
                info = {
                    "version": version,
                    "published_at": time.time(),
                    "source": str(Path(checkpoint_path).resolve()),
                    "size": size,
                    "sha256": digest,
                    "meta": json.loads(meta_json),
                }
                (stage / INFO_NAME).write_text(json.dumps(info, indent=1))
                _fsync_dir(stage)
                os.rename(stage, self.version_dir(version))
                _fsync_dir(self.root)
                self._write_pointer(version)
            return version
        except BaseException:
            if move and (stage / CHECKPOINT_NAME).exists() and not src.exists():
                shutil.move(str(stage / CHECKPOINT_NAME), src)  # give the caller its file back
            raise
        finally:
            if stage.exists():
                shutil.rmtree(stage, ignore_errors=True)

    def set_latest(self, version: int) -> None:
        """Point ``LATEST`` at an existing complete version (e.g. roll back to an older model).

        Raises:
            CheckpointError: the version does not exist or is incomplete.
        """
        with self._locked():
            if not self.is_valid(version):
                raise CheckpointError(
                    f"registry {self.root}: version {version} is missing or incomplete; valid versions: {self.versions()}"
                )
            self._write_pointer(version)

    def prune(self, keep: int = 5) -> list[int]:
        """Delete all but the newest ``keep`` version folders; the version ``LATEST`` names is always kept
        (so a rollback target survives pruning, whatever its age).

        Returns:
            The deleted versions, ascending. Incomplete folders older than the kept ones are deleted too.

        Raises:
            ValueError: ``keep < 1``.
        """
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep}")
        with self._locked():
            all_versions = self._all_versions()
            protect = set(all_versions[-keep:])
            current = self.pointer()
            if current is not None:
                protect.add(current)
            doomed = [v for v in all_versions if v not in protect]
            for v in doomed:
                shutil.rmtree(self.version_dir(v), ignore_errors=True)
            return doomed

    def verify(self, version: int) -> bool:
        """True if the stored checkpoint's SHA-256 still matches the one recorded at publish time."""
        info = self.info(version)
        return info is not None and _sha256(self.path(version)) == info.get("sha256")
