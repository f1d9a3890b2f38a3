"""FsspecRegistry (adrec_stream.serving.registry) on fsspec's in-memory file system: publish, list, latest, a version
without manifest or with a bad checksum ignored, verified local cache; ``open_registry`` picks the class."""

from __future__ import annotations

import hashlib
import json
import uuid

import fsspec
import pytest

from adrec_stream.errors import CheckpointError
from adrec_stream.serving.registry import FsspecRegistry, ModelRegistry, open_registry


@pytest.fixture
def url():
    """A fresh memory:// prefix per test (the memory file system is shared by the whole process)."""
    u = f"memory://reg-{uuid.uuid4().hex}/models"
    yield u
    fs = fsspec.filesystem("memory")
    fs.rm(u.removeprefix("memory:/").split("/models")[0], recursive=True)


def _ckpt(tmp_path, name: str, payload: bytes):
    p = tmp_path / name
    p.write_bytes(payload)
    return p


def test_publish_list_latest_and_cache(tmp_path, url):
    reg = FsspecRegistry(url, cache_dir=tmp_path / "cache")
    assert reg.latest() is None and reg.versions() == [] and reg.current_version() is None
    assert reg.publish(_ckpt(tmp_path, "a.pt", b"first"), {"source": "publish", "vocab_size": 40}) == 1
    assert reg.publish(_ckpt(tmp_path, "b.pt", b"second!"), {"source": "finetune", "parent_version": 1}) == 2
    fs = fsspec.filesystem("memory")
    base = url.removeprefix("memory:/")
    assert fs.cat_file(f"{base}/LATEST") == b"2\n"
    man = json.loads(fs.cat_file(f"{base}/v000002/manifest.json"))
    assert man["version"] == 2 and man["size"] == 7 and man["sha256"] == hashlib.sha256(b"second!").hexdigest()
    assert man["meta"] == {"source": "finetune", "parent_version": 1}
    assert reg.versions() == [1, 2]
    version, path = reg.latest()
    # downloaded into the local cache, under the url's hash and the version's checksum
    assert version == 2 and path.read_bytes() == b"second!" and str(path).startswith(str(tmp_path / "cache"))
    assert path.parent.name == f"v000002-{man['sha256'][:16]}"
    rows = reg.list_versions()
    assert [(r["version"], r["latest"], r["size"], r["source"]) for r in rows] == [
        (1, False, 5, "publish"), (2, True, 7, "finetune")]
    assert rows[1]["parent_version"] == 1 and rows[0]["vocab_size"] == 40
    assert reg.manifest(1)["sha256"] == hashlib.sha256(b"first").hexdigest()
    assert reg.verify(1) and reg.verify(2)
    # a second reader (another host) sees the same registry through the URL
    other = open_registry(url, cache_dir=tmp_path / "cache2")
    assert isinstance(other, FsspecRegistry) and other.latest()[0] == 2 and other.fetch(1).read_bytes() == b"first"


def test_version_without_manifest_is_ignored_and_numbers_go_on(tmp_path, url):
    reg = FsspecRegistry(url, cache_dir=tmp_path / "cache")
    assert reg.publish(_ckpt(tmp_path, "a.pt", b"first")) == 1
    fs = fsspec.filesystem("memory")
    base = url.removeprefix("memory:/")
    # a publisher that died after the upload: claim + checkpoint, no manifest; it even wrote a pointer to it
    fs.pipe_file(f"{base}/v000002/.claim", json.dumps({"pid": 1, "host": "h", "ts": 0}).encode())
    fs.pipe_file(f"{base}/v000002/model.pt", b"half-published")
    fs.pipe_file(f"{base}/LATEST", b"2\n")
    assert reg.versions() == [1] and reg.latest()[0] == 1 and reg.current_version() == 1
    with pytest.raises(CheckpointError, match="version 2 is missing or incomplete"):
        reg.fetch(2)
    assert [r["version"] for r in reg.list_versions()] == [1]
    # the next publish does not reuse the reserved number; stale leftovers are cleaned
    assert reg.publish(_ckpt(tmp_path, "c.pt", b"third")) == 3
    assert reg.clean_staging() == [f"{base}/v000002"] and not fs.exists(f"{base}/v000002")
    assert reg.versions() == [1, 3] and reg.latest()[0] == 3


def test_bad_checksum_is_ignored_and_never_cached(tmp_path, url):
    reg = FsspecRegistry(url, cache_dir=tmp_path / "cache")
    reg.publish(_ckpt(tmp_path, "a.pt", b"first"))
    reg.publish(_ckpt(tmp_path, "b.pt", b"second"))
    fs = fsspec.filesystem("memory")
    base = url.removeprefix("memory:/")
    fs.pipe_file(f"{base}/v000002/model.pt", b"SECOND")  # same size, different bytes
    assert reg.versions() == [1, 2]  # the manifest is there ...
    assert not reg.verify(2)
    with pytest.raises(CheckpointError, match="version 2 checksum mismatch"):
        reg.fetch(2)
    assert reg.latest() == (1, reg.fetch(1))  # ... but the version is never served
    assert not list((tmp_path / "cache").rglob("v000002*/model.pt"))
    # a manifest naming another version, or unreadable, does not count either
    fs.pipe_file(f"{base}/v000002/manifest.json", b"{not json")
    assert reg.versions() == [1]


def test_rollback_pointer_prune_and_concurrent_claims(tmp_path, url):
    reg = FsspecRegistry(url, cache_dir=tmp_path / "cache")
    for i in range(4):
        reg.publish(_ckpt(tmp_path, f"{i}.pt", f"m{i}".encode()))
    reg.set_latest(2)
    assert reg.pointer_state() == (2, True) and reg.is_rollback(2) and reg.latest()[0] == 2
    with pytest.raises(CheckpointError, match="version 9 is missing"):
        reg.set_latest(9)
    assert reg.prune(keep=1) == [1, 3]  # newest (4) and the rollback target (2) kept
    assert reg.versions() == [2, 4]
    reg.set_latest(4)
    assert reg.pointer_state() == (4, False)
    # a second publisher that reserved the next number first: this one takes the one after
    fs = fsspec.filesystem("memory")
    fs.pipe_file(f"{url.removeprefix('memory:/')}/v000005/.claim", b"{}")
    assert reg.publish(_ckpt(tmp_path, "x.pt", b"x"), move=True) == 6 and not (tmp_path / "x.pt").exists()


def test_failed_publish_leaves_no_version(tmp_path, url):
    reg = FsspecRegistry(url, cache_dir=tmp_path / "cache")

    def boom(prefix):
        assert prefix.endswith("/v000001")
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError, match="interrupted"):
        reg.publish(_ckpt(tmp_path, "a.pt", b"first"), before_commit=boom)
    assert reg.versions() == [] and reg._all_versions() == [] and reg.latest() is None
    with pytest.raises(CheckpointError, match="no such checkpoint file"):
        reg.publish(tmp_path / "missing.pt")


def test_open_registry_picks_the_class(tmp_path):
    assert isinstance(open_registry(tmp_path / "reg"), ModelRegistry)
    assert isinstance(open_registry(str(tmp_path / "reg2")), ModelRegistry)
    file_reg = open_registry(f"file://{tmp_path}/reg3", cache_dir=tmp_path / "cache")
    assert isinstance(file_reg, FsspecRegistry)
    assert file_reg.publish(_ckpt(tmp_path, "a.pt", b"on a shared file system")) == 1
    assert (tmp_path / "reg3" / "v000001" / "manifest.json").is_file()
    with pytest.raises(CheckpointError, match="does not exist"):
        open_registry(f"memory://absent-{uuid.uuid4().hex}", create=False)
    with pytest.raises(CheckpointError, match="install the fsspec package"):
        open_registry("nosuchproto://bucket/x")
