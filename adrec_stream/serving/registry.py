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

``LATEST`` holds ``"N\\n"``; :meth:`ModelRegistry.set_latest` to a version older than the newest complete one
writes ``"N rollback\\n"``: score workers never move to an older version unless the pointer says that it is a
deliberate rollback (:meth:`ModelRegistry.pointer_state`).

A registry reachable from many hosts at an fsspec URL (``s3://bucket/prefix``, ``memory://...``,
``file:///shared/registry``) is a :class:`FsspecRegistry` (object stores have no atomic rename; its publish
protocol is in its docstring). :func:`open_registry` picks the class from the location: a plain path is a
:class:`ModelRegistry`, anything with a ``scheme://`` a :class:`FsspecRegistry`.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import socket
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from adrec_stream.errors import CheckpointError
from adrec_stream.logging import get_logger
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


def _parse_pointer(text: str) -> tuple[int, bool] | None:
    """``"N"`` or ``"N rollback"`` -> (N, rollback?); None for anything else."""
    parts = text.split()
    if not parts or not parts[0].isdigit() or len(parts) > 2 or (len(parts) == 2 and parts[1] != "rollback"):
        return None
    return int(parts[0]), len(parts) == 2


def _pointer_text(version: int, newest: int | None) -> str:
    return f"{version} rollback\n" if newest is not None and version < newest else f"{version}\n"


def _sha256_of(fh: Any) -> str:
    """Hex SHA-256 of an open binary file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    for chunk in iter(lambda: fh.read(1 << 20), b""):
        h.update(chunk)
    return h.hexdigest()


def _sha256(path: Path) -> str:
    with path.open("rb") as fh:
        return _sha256_of(fh)


def _checkpoint_file(checkpoint_path: str | Path) -> Path:
    """The checkpoint file to publish: ``checkpoint_path`` itself, or ``model.pt`` inside it when it is a folder.

    Raises:
        CheckpointError: no such file.
    """
    src = Path(checkpoint_path)
    if src.is_dir():
        src = src / CHECKPOINT_NAME
    if not src.is_file():
        raise CheckpointError(f"cannot publish {src}: no such checkpoint file (save one with save_checkpoint first)")
    return src


def _version_info(version: int, checkpoint_path: str | Path, size: int, digest: str, meta_json: str) -> dict[str, Any]:
    """A version's manifest (``version.json`` / ``manifest.json``): number, publish time (epoch s), source path,
    checkpoint size (bytes) and SHA-256, and the caller's meta."""
    return {"version": version, "published_at": time.time(), "source": str(Path(checkpoint_path).resolve()),
            "size": size, "sha256": digest, "meta": json.loads(meta_json)}


class _RegistryReads:
    """Reads shared by :class:`ModelRegistry` and :class:`FsspecRegistry` (built on ``info``, ``_all_versions`` and
    ``pointer_state``)."""

    def info(self, version: int) -> dict[str, Any] | None:  # pragma: no cover - overridden
        raise NotImplementedError

    def _all_versions(self) -> list[int]:  # pragma: no cover - overridden
        raise NotImplementedError

    def pointer_state(self) -> tuple[int, bool] | None:  # pragma: no cover - overridden
        raise NotImplementedError

    def is_valid(self, version: int) -> bool:
        """True if the version is complete (manifest readable, checkpoint present with the recorded size)."""
        return self.info(version) is not None

    def _require_valid(self, version: int) -> None:
        """Raises CheckpointError naming the valid versions unless ``version`` is complete."""
        if not self.is_valid(version):
            raise CheckpointError(f"registry {self.root}: version {version} is missing or incomplete; valid versions: "
                                  f"{self.versions()}")

    def _prune_plan(self, keep: int) -> list[int]:
        """The versions :meth:`prune` deletes: all but the newest ``keep`` and the one ``LATEST`` names, ascending.

        Raises:
            ValueError: ``keep < 1``.
        """
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep}")
        all_versions = self._all_versions()
        protect = set(all_versions[-keep:])
        current = self.pointer()
        if current is not None:
            protect.add(current)
        return [v for v in all_versions if v not in protect]

    def versions(self) -> list[int]:
        """Complete versions, ascending."""
        return [v for v in self._all_versions() if self.is_valid(v)]

    def pointer(self) -> int | None:
        """The version named by ``LATEST`` (not checked), or None if there is no readable pointer."""
        state = self.pointer_state()
        return state[0] if state is not None else None

    def is_rollback(self, version: int) -> bool:
        """True if ``LATEST`` names ``version`` as a deliberate rollback (``set_latest`` to an older version)."""
        return self.pointer_state() == (version, True)

    def current_version(self) -> int | None:
        """The version readers get: the one ``LATEST`` names when it is complete, else the newest complete one;
        None when the registry has no complete version. Reads manifests only (never downloads a checkpoint)."""
        v = self.pointer()
        if v is not None and self.is_valid(v):
            return v
        valid = self.versions()
        return valid[-1] if valid else None

    def manifest(self, version: int) -> dict[str, Any] | None:
        """What was published as ``version``: its ``meta`` dict (as given to ``publish``) with the registry's
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
        """When ``version`` was published, Unix seconds (``published_at`` of its manifest: epoch seconds,
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
        ``size`` (bytes of the checkpoint), ``latest`` (True for the version readers currently get,
        :meth:`current_version`), and those of ``parent_version``, ``vocab_size``, ``new_items``, ``heldout``,
        ``wall_s``, ``source`` that the version's manifest has (see :data:`LIST_KEYS`).
        """
        current = self.current_version()
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


class ModelRegistry(_RegistryReads):
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

    def pointer_state(self) -> tuple[int, bool] | None:
        """``(version, rollback)`` from ``LATEST`` (not checked), or None if there is no readable pointer."""
        try:
            return _parse_pointer((self.root / POINTER_NAME).read_text())
        except OSError:
            return None

    @property
    def url(self) -> str:
        """The registry's location as announced to score workers (the absolute folder path)."""
        return str(self.root.resolve())

    def fetch(self, version: int) -> Path:
        """Local checkpoint path of a complete ``version`` (the file in the registry itself: nothing to download).

        Raises:
            CheckpointError: the version is missing or incomplete.
        """
        if not self.is_valid(version):
            raise CheckpointError(f"registry {self.root}: version {version} is missing or incomplete")
        return self.path(version)

    def latest(self) -> tuple[int, Path] | None:
        """``(version, checkpoint path)`` of the current version, or None if the registry is empty.

        The current version is the one ``LATEST`` names when that version is complete; otherwise (pointer
        missing, unreadable, or naming a broken/deleted version) the newest complete version.
        """
        v = self.current_version()
        return (v, self.path(v)) if v is not None else None

    # ------------------------------------------------------------------ writes
    def _write_pointer(self, version: int) -> None:
        tmp = self.root / f".{POINTER_NAME}.{uuid.uuid4().hex}.tmp"
        valid = self.versions()
        with open(tmp, "w") as fh:
            fh.write(_pointer_text(version, valid[-1] if valid else None))
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
        src = _checkpoint_file(checkpoint_path)
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
                info = _version_info(version, checkpoint_path, size, digest, meta_json)
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
        """Point ``LATEST`` at an existing complete version (e.g. roll back to an older model; the pointer then
        says ``rollback``, which lets score workers move back to it).

        Raises:
            CheckpointError: the version does not exist or is incomplete.
        """
        with self._locked():
            self._require_valid(version)
            self._write_pointer(version)

    def prune(self, keep: int = 5) -> list[int]:
        """Delete all but the newest ``keep`` version folders; the version ``LATEST`` names is always kept
        (so a rollback target survives pruning, whatever its age).

        Returns:
            The deleted versions, ascending. Incomplete folders older than the kept ones are deleted too.

        Raises:
            ValueError: ``keep < 1``.
        """
        with self._locked():
            doomed = self._prune_plan(keep)
            for v in doomed:
                shutil.rmtree(self.version_dir(v), ignore_errors=True)
            return doomed

    def stamp(self, version: int) -> tuple[int, int]:
        """What identifies the stored bytes of ``version`` without reading them: (size, mtime in ns); (-1, -1) when
        the file is missing."""
        try:
            st = self.path(version).stat()
        except OSError:
            return -1, -1
        return st.st_size, st.st_mtime_ns

    def verify(self, version: int) -> bool:
        """True if the stored checkpoint's SHA-256 still matches the one recorded at publish time."""
        info = self.info(version)
        return info is not None and _sha256(self.path(version)) == info.get("sha256")


#: the manifest of a version in a :class:`FsspecRegistry`: written last, its presence commits the version
MANIFEST_NAME = "manifest.json"
#: the first object of a version in a :class:`FsspecRegistry`: created exclusively, it reserves the number
CLAIM_NAME = ".claim"
#: publish attempts for a version number before giving up (another publisher claimed each one first)
CLAIM_ATTEMPTS = 20


class FsspecRegistry(_RegistryReads):
    """The model registry at an fsspec URL (``s3://bucket/prefix``, ``gs://...``, ``memory://...``,
    ``file:///shared/registry``), reachable from every host, safe on object stores without atomic rename.

    Layout under the URL::

        v000001/.claim          {"pid", "host", "ts"}: reserves the version number (created with mode "xb")
        v000001/model.pt        the checkpoint (uploaded second)
        v000001/manifest.json   {"version", "published_at", "source", "size", "sha256", "meta"}: written LAST
        LATEST                  "N\\n" or "N rollback\\n" (written after the manifest; advisory)

    Publish protocol: reserve the next number by creating ``vNNNNNN/.claim`` exclusively (mode ``"xb"``; where a
    store cannot create exclusively, an existence check first: one publisher at a time), upload the checkpoint,
    check its size, write the manifest (the commit point), then the pointer. Readers trust a version only when its
    manifest exists, names that version and records the checkpoint's size, and load it only after downloading it
    into the local cache and checking its SHA-256 against the manifest (:meth:`fetch`); a version without
    manifest (a publisher died half-way) or with a wrong checksum is ignored. Versions are never modified after
    their manifest is written.

    Args:
        url: the registry URL (any fsspec protocol; the protocol's package must be installed, e.g. ``s3fs``).
        cache_dir: local folder for verified downloads (``<cache_dir>/<hash of url>/vNNNNNN-<sha256[:16]>/model.pt``);
            None: ``$TMPDIR/adrec-registry-cache``.
        create: create the prefix when missing (default). With False, a registry without any object is an error.
        storage_options: passed to the fsspec file system (credentials come from the protocol's own environment
            variables or config files, never from the stream config).

    Raises:
        CheckpointError: ``create=False`` and nothing exists at ``url``; or the URL's protocol is unknown / its
            package is not installed.
    """

    def __init__(self, url: str, *, cache_dir: str | Path | None = None, create: bool = True,
                 storage_options: dict[str, Any] | None = None) -> None:
        import fsspec  # noqa: PLC0415 - only registries at a URL need it

        self._url = url.rstrip("/")
        try:
            self.fs, self.base = fsspec.core.url_to_fs(self._url, **(storage_options or {}))
        except (ImportError, ValueError) as err:
            raise CheckpointError(f"model registry {url}: {err} (install the fsspec package of that protocol, e.g. "
                                  "s3fs for s3://, gcsfs for gs://)") from None
        self.base = self.base.rstrip("/")
        if create:
            self.fs.makedirs(self.base, exist_ok=True)
        elif not self.fs.exists(self.base):
            raise CheckpointError(f"model registry {url} does not exist (no model was published there; check "
                                  "--registry / registry_dir in the stream config)")
        key = hashlib.sha256(self._url.encode()).hexdigest()[:16]
        root = Path(cache_dir) if cache_dir is not None else Path(tempfile.gettempdir()) / "adrec-registry-cache"
        self.cache_dir = root / key
        self._logged_bad: set[tuple[int, str]] = set()  # (version, sha256) of versions logged as ignored
        self.log = get_logger("adrec_stream.registry", registry=self._url)

    @property
    def root(self) -> str:
        """The registry URL (for messages; there is no local folder)."""
        return self._url

    @property
    def url(self) -> str:
        """The registry URL (announced to score workers)."""
        return self._url

    def _key(self, *parts: str) -> str:
        return "/".join([self.base, *parts])

    def _vkey(self, version: int, name: str | None = None) -> str:
        return self._key(f"v{version:06d}", *([name] if name else []))

    # ------------------------------------------------------------------ reads
    def _all_versions(self) -> list[int]:
        """Every version prefix (complete or not), ascending."""
        try:
            entries = self.fs.ls(self.base, detail=False)
        except FileNotFoundError:
            return []
        out = []
        for e in entries:
            m = _VERSION_DIR.fullmatch(str(e).rstrip("/").rsplit("/", 1)[-1])
            if m:
                out.append(int(m.group(1)))
        return sorted(set(out))

    def _read_json(self, key: str) -> Any:
        try:
            return json.loads(self.fs.cat_file(key))
        except (OSError, ValueError):
            return None

    def info(self, version: int) -> dict[str, Any] | None:
        """The manifest of a complete version, or None (no manifest, unreadable, or the checkpoint's size differs)."""
        info = self._read_json(self._vkey(version, MANIFEST_NAME))
        if not isinstance(info, dict) or info.get("version") != version or not isinstance(info.get("sha256"), str):
            return None
        try:
            size = self.fs.size(self._vkey(version, CHECKPOINT_NAME))
        except OSError:
            return None
        return info if info.get("size") == size else None

    def pointer_state(self) -> tuple[int, bool] | None:
        """``(version, rollback)`` from ``LATEST`` (not checked), or None if there is no readable pointer."""
        try:
            return _parse_pointer(self.fs.cat_file(self._key(POINTER_NAME)).decode(errors="replace"))
        except OSError:
            return None

    def fetch(self, version: int) -> Path:
        """Download a complete ``version`` into the local cache (once) and return the local checkpoint path.

        The download goes to a temporary file whose SHA-256 must equal the manifest's before it is renamed into
        the cache, so a cached file is always a verified one.

        Raises:
            CheckpointError: the version is missing or incomplete, the download failed, or its checksum does
                not match the manifest (the version is then ignored by :meth:`latest`).
        """
        info = self.info(version)
        if info is None:
            raise CheckpointError(f"registry {self._url}: version {version} is missing or incomplete (no manifest)")
        sha = info["sha256"]
        target = self.cache_dir / f"v{version:06d}-{sha[:16]}" / CHECKPOINT_NAME
        if target.is_file() and target.stat().st_size == info["size"]:
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.parent / f".{CHECKPOINT_NAME}.{os.getpid()}.{uuid.uuid4().hex}.tmp"
        try:
            try:
                self.fs.get_file(self._vkey(version, CHECKPOINT_NAME), str(tmp))
            except OSError as err:
                raise CheckpointError(f"registry {self._url}: downloading version {version} failed: {err}") from None
            got = _sha256(tmp)
            if got != sha:
                raise CheckpointError(f"registry {self._url}: version {version} checksum mismatch (manifest sha256 "
                                      f"{sha[:16]}..., downloaded {got[:16]}...): not loaded; publish a new version")
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
        return target

    def latest(self) -> tuple[int, Path] | None:
        """``(version, local checkpoint path)`` of the current version, downloaded and verified; None if no version
        can be served.

        The candidates are the version ``LATEST`` names (when complete), then the complete versions newest first;
        one whose download fails or whose checksum does not match its manifest is skipped (logged once).
        """
        first = self.pointer()
        valid = self.versions()
        order = ([first] if first in valid else []) + [v for v in reversed(valid) if v != first]
        for v in order:
            try:
                return v, self.fetch(v)
            except CheckpointError as err:
                info = self.info(v) or {}
                key = (v, str(info.get("sha256")))
                if key not in self._logged_bad:
                    self._logged_bad.add(key)
                    self.log.error("registry_version_ignored", version=v, error=str(err))
        return None

    def path(self, version: int) -> Path:
        """Local (verified, cached) checkpoint path of ``version``: :meth:`fetch`."""
        return self.fetch(version)

    def stamp(self, version: int) -> tuple[Any, Any]:
        """What identifies the stored bytes of ``version`` without downloading them: the manifest's (sha256, size);
        (None, None) without a manifest."""
        info = self.info(version) or {}
        return info.get("sha256"), info.get("size")

    def verify(self, version: int) -> bool:
        """True if the stored checkpoint's SHA-256 matches its manifest (downloads it again, bypassing the cache)."""
        info = self.info(version)
        if info is None:
            return False
        try:
            with self.fs.open(self._vkey(version, CHECKPOINT_NAME), "rb") as fh:
                return _sha256_of(fh) == info.get("sha256")
        except OSError:
            return False

    # ------------------------------------------------------------------ writes
    def _create_exclusive(self, key: str, data: bytes) -> bool:
        """Create ``key`` holding ``data`` unless it exists; False if it existed."""
        try:
            with self.fs.open(key, "xb") as fh:
                fh.write(data)
            return True
        except FileExistsError:
            return False
        except (ValueError, NotImplementedError, TypeError):  # the store cannot create exclusively
            if self.fs.exists(key):
                return False
            self.fs.pipe_file(key, data)
            return True

    def _write_pointer(self, version: int) -> None:
        valid = self.versions()
        self.fs.pipe_file(self._key(POINTER_NAME), _pointer_text(version, valid[-1] if valid else None).encode())

    def clean_staging(self, min_age_s: float = 3600.0) -> list[str]:
        """Remove version prefixes without a manifest whose claim is older than ``min_age_s`` seconds (a publisher
        that died half-way; a younger one may still be uploading). Returns the removed prefixes."""
        removed = []
        for v in self._all_versions():
            if self.fs.exists(self._vkey(v, MANIFEST_NAME)):
                continue
            claim = self._read_json(self._vkey(v, CLAIM_NAME))
            ts = claim.get("ts") if isinstance(claim, dict) else None
            if isinstance(ts, int | float) and time.time() - ts < min_age_s:
                continue
            try:
                self.fs.rm(self._vkey(v), recursive=True)
            except FileNotFoundError:
                continue
            removed.append(self._vkey(v))
        return removed

    def publish(
        self,
        checkpoint_path: str | Path,
        meta: dict[str, Any] | None = None,
        *,
        move: bool = False,
        before_commit: Callable[[Any], object] | None = None,
    ) -> int:
        """Add a checkpoint as the next version (protocol in the class docstring) and point ``LATEST`` at it.

        Args:
            checkpoint_path: a checkpoint file, or a folder holding ``model.pt``.
            meta: JSON-serialisable facts about this version, stored in the manifest.
            move: delete the local file once the version is committed.
            before_commit: test hook, called with the version's prefix (a string) once the checkpoint is uploaded,
                before the manifest is written; an exception it raises aborts the publish (the prefix is removed).

        Returns:
            The new version number (1 for the first).

        Raises:
            CheckpointError: the checkpoint file does not exist, the upload's size differs, or no version number
                could be reserved in :data:`CLAIM_ATTEMPTS` tries.
            TypeError: ``meta`` is not JSON-serialisable.
        """
        src = _checkpoint_file(checkpoint_path)
        meta_json = json.dumps(meta or {})
        size, digest = src.stat().st_size, _sha256(src)
        claim = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "ts": time.time()}).encode()
        existing = self._all_versions()
        version = (existing[-1] + 1) if existing else 1
        for _ in range(CLAIM_ATTEMPTS):
            self.fs.makedirs(self._vkey(version), exist_ok=True)  # a folder on file://; nothing on object stores
            if self._create_exclusive(self._vkey(version, CLAIM_NAME), claim):
                break
            version += 1
        else:
            raise CheckpointError(f"registry {self._url}: could not reserve a version number after {CLAIM_ATTEMPTS} "
                                  "tries (other publishers); try again")
        try:
            self.fs.put_file(str(src), self._vkey(version, CHECKPOINT_NAME))
            if self.fs.size(self._vkey(version, CHECKPOINT_NAME)) != size:
                raise CheckpointError(f"registry {self._url}: upload of version {version} is incomplete; try again")
            if before_commit is not None:
                before_commit(self._vkey(version))
            info = _version_info(version, checkpoint_path, size, digest, meta_json)
            self.fs.pipe_file(self._vkey(version, MANIFEST_NAME), json.dumps(info, indent=1).encode())
        except BaseException:
            try:
                self.fs.rm(self._vkey(version), recursive=True)
            except OSError:
                pass
            raise
        self._write_pointer(version)
        if move:
            src.unlink(missing_ok=True)
        return version

    def set_latest(self, version: int) -> None:
        """Point ``LATEST`` at an existing complete version (``rollback`` when older than the newest).

        Raises:
            CheckpointError: the version does not exist or is incomplete.
        """
        self._require_valid(version)
        self._write_pointer(version)

    def prune(self, keep: int = 5) -> list[int]:
        """Delete all but the newest ``keep`` versions; the version ``LATEST`` names is always kept. Each version's
        manifest is deleted first, so readers stop trusting it before its checkpoint goes.

        Returns:
            The deleted versions, ascending.

        Raises:
            ValueError: ``keep < 1``.
        """
        doomed = self._prune_plan(keep)
        for v in doomed:
            try:
                self.fs.rm_file(self._vkey(v, MANIFEST_NAME))
            except OSError:
                pass
            try:
                self.fs.rm(self._vkey(v), recursive=True)
            except OSError:
                pass
        return doomed


AnyRegistry = ModelRegistry | FsspecRegistry


def is_url(location: str | Path) -> bool:
    """True if ``location`` is written as a URL (``scheme://...``), i.e. a :class:`FsspecRegistry`."""
    return isinstance(location, str) and re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", location) is not None


def open_registry(location: str | Path, *, cache_dir: str | Path | None = None, create: bool = True) -> AnyRegistry:
    """The registry at ``location``: a plain path -> :class:`ModelRegistry` (staging folder + rename, ``flock``);
    a URL (``s3://``, ``memory://``, ``file://``, ...) -> :class:`FsspecRegistry` (downloads cached in
    ``cache_dir``).

    Raises:
        CheckpointError: ``create=False`` and the registry does not exist; unknown URL protocol.
    """
    if is_url(location):
        return FsspecRegistry(str(location), cache_dir=cache_dir, create=create)
    return ModelRegistry(location, create=create)
