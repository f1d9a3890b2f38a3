"""ModelRegistry (adrec_stream.serving.registry): numbered versions, atomic LATEST pointer, validity."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import pytest

from adrec_stream.errors import CheckpointError
from adrec_stream.serving.registry import ModelRegistry


def _ckpt(tmp_path, name: str, payload: bytes) -> object:
    p = tmp_path / name
    p.write_bytes(payload)
    return p


def test_publish_numbers_versions_and_moves_pointer(tmp_path):
    reg = ModelRegistry(tmp_path / "reg")
    assert reg.latest() is None and reg.versions() == []
    v1 = reg.publish(_ckpt(tmp_path, "a.pt", b"first"), {"trained_on": "ml-100k", "hr10": 0.12})
    v2 = reg.publish(_ckpt(tmp_path, "b.pt", b"second!"))
    assert (v1, v2) == (1, 2)
    assert reg.latest() == (2, tmp_path / "reg" / "v000002" / "model.pt")
    assert reg.path(1).read_bytes() == b"first" and reg.path(2).read_bytes() == b"second!"
    assert (tmp_path / "reg" / "LATEST").read_text() == "2\n"
    info = reg.info(1)
    assert info["meta"] == {"trained_on": "ml-100k", "hr10": 0.12}
    assert info["size"] == 5 and info["source"] == str((tmp_path / "a.pt").resolve())
    assert reg.versions() == [1, 2]
    assert (tmp_path / "a.pt").exists()  # copied, not moved
    assert not [p for p in (tmp_path / "reg").iterdir() if p.name.startswith((".stage", ".LATEST"))]


def test_publish_folder_and_move(tmp_path):
    folder = tmp_path / "ck"
    folder.mkdir()
    (folder / "model.pt").write_bytes(b"weights")
    reg = ModelRegistry(tmp_path / "reg")
    assert reg.publish(folder) == 1
    assert reg.publish(folder / "model.pt", move=True) == 2
    assert not (folder / "model.pt").exists()
    assert reg.path(2).read_bytes() == b"weights"


def test_publish_errors_leave_registry_unchanged(tmp_path):
    reg = ModelRegistry(tmp_path / "reg")
    with pytest.raises(CheckpointError, match="no such checkpoint file"):
        reg.publish(tmp_path / "missing.pt")
    with pytest.raises(TypeError):
        reg.publish(_ckpt(tmp_path, "a.pt", b"x"), {"bad": object()})
    assert reg.latest() is None
    assert [p.name for p in (tmp_path / "reg").iterdir() if not p.name.startswith(".lock")] == []


def test_latest_falls_back_to_newest_complete_version(tmp_path):
    reg = ModelRegistry(tmp_path / "reg")
    for i in range(3):
        reg.publish(_ckpt(tmp_path, f"{i}.pt", b"x" * (10 + i)))
    # truncated checkpoint of the current version: size no longer matches version.json
    reg.path(3).write_bytes(b"x" * 4)
    assert not reg.is_valid(3)
    assert reg.latest() == (2, reg.path(2))
    # pointer garbage -> newest complete version
    (tmp_path / "reg" / "LATEST").write_text("garbage")
    assert reg.pointer() is None and reg.latest() == (2, reg.path(2))
    # pointer to a deleted version -> newest complete version
    (tmp_path / "reg" / "LATEST").write_text("9\n")
    assert reg.latest() == (2, reg.path(2))
    # an incomplete version folder (no version.json) is ignored
    (tmp_path / "reg" / "v000007").mkdir()
    assert reg.versions() == [1, 2]


def test_set_latest_rolls_back(tmp_path):
    reg = ModelRegistry(tmp_path / "reg")
    for i in range(3):
        reg.publish(_ckpt(tmp_path, f"{i}.pt", bytes([i])))
    reg.set_latest(1)
    assert reg.latest() == (1, reg.path(1))
    assert reg.publish(_ckpt(tmp_path, "n.pt", b"new")) == 4  # numbering continues after the highest
    assert reg.latest()[0] == 4
    with pytest.raises(CheckpointError, match="version 8 is missing"):
        reg.set_latest(8)


def test_verify_detects_same_size_corruption(tmp_path):
    reg = ModelRegistry(tmp_path / "reg")
    reg.publish(_ckpt(tmp_path, "a.pt", b"abcdef"))
    assert reg.verify(1)
    reg.path(1).write_bytes(b"abcdeX")
    assert reg.is_valid(1) and not reg.verify(1)
    assert json.loads((reg.version_dir(1) / "version.json").read_text())["sha256"] != ""


def test_concurrent_publishers_get_distinct_versions(tmp_path):
    reg = ModelRegistry(tmp_path / "reg")
    sources = [_ckpt(tmp_path, f"{i}.pt", f"model-{i}".encode()) for i in range(12)]
    with ThreadPoolExecutor(max_workers=6) as pool:
        versions = list(pool.map(lambda p: ModelRegistry(tmp_path / "reg").publish(p), sources))
    assert sorted(versions) == list(range(1, 13))
    assert reg.versions() == list(range(1, 13))
    assert reg.latest()[0] == 12
    assert sorted(reg.path(v).read_bytes() for v in versions) == sorted(f"model-{i}".encode() for i in range(12))


def test_prune_keeps_newest_and_current(tmp_path):
    reg = ModelRegistry(tmp_path / "reg")
    for i in range(6):
        reg.publish(_ckpt(tmp_path, f"{i}.pt", bytes([i])))
    reg.set_latest(2)  # rolled back: version 2 must survive pruning
    assert reg.prune(keep=2) == [1, 3, 4]
    assert reg.versions() == [2, 5, 6]
    assert reg.latest() == (2, reg.path(2))
    assert reg.publish(_ckpt(tmp_path, "n.pt", b"n")) == 7
    with pytest.raises(ValueError, match="keep"):
        reg.prune(keep=0)
