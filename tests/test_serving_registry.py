"""ModelRegistry (adrec_stream.serving.registry): numbered versions, atomic LATEST pointer, validity."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import pytest

from adrec_stream.errors import CheckpointError
from adrec_stream.procs import pid_alive
from adrec_stream.serving.registry import ModelRegistry

DEAD_PID = 999999  # above the default pid_max (32768 / 4194304 on 64-bit): never a live process here


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


def _hidden(reg_root) -> list[str]:
    return sorted(p.name for p in reg_root.iterdir() if p.name.startswith((".stage", ".LATEST")))


def test_before_commit_hook_sees_the_staged_checkpoint_before_the_version_exists(tmp_path):
    reg = ModelRegistry(tmp_path / "reg")
    seen = []

    def hook(stage):
        seen.append(stage)
        assert stage.parent == tmp_path / "reg" and stage.name.startswith(f".stage-{os.getpid()}-")
        assert sorted(p.name for p in stage.iterdir()) == ["model.pt"]  # version.json comes after the hook
        assert (stage / "model.pt").read_bytes() == b"weights"
        assert reg.versions() == [] and reg.pointer() is None

    assert reg.publish(_ckpt(tmp_path, "a.pt", b"weights"), before_commit=hook) == 1
    assert len(seen) == 1 and not seen[0].exists()
    assert reg.latest() == (1, reg.path(1)) and _hidden(tmp_path / "reg") == []


def test_publish_interrupted_in_before_commit_leaves_no_version(tmp_path):
    reg = ModelRegistry(tmp_path / "reg")
    assert reg.publish(_ckpt(tmp_path, "a.pt", b"one")) == 1

    def boom(stage):
        raise RuntimeError("interrupted")

    src = _ckpt(tmp_path, "b.pt", b"two")
    with pytest.raises(RuntimeError, match="interrupted"):
        reg.publish(src, {"round": 2}, before_commit=boom)
    with pytest.raises(RuntimeError, match="interrupted"):
        reg.publish(src, move=True, before_commit=boom)
    assert src.read_bytes() == b"two"  # moved back to the caller
    assert reg.versions() == [1] and reg.pointer() == 1 and reg.latest() == (1, reg.path(1))
    assert _hidden(tmp_path / "reg") == []
    assert reg.publish(src) == 2  # numbering unaffected


def test_clean_staging_removes_only_dead_publishers_leftovers(tmp_path):
    assert not pid_alive(DEAD_PID)
    reg = ModelRegistry(tmp_path / "reg")
    root = tmp_path / "reg"
    dead = root / f".stage-{DEAD_PID}-abc"
    dead.mkdir()
    (dead / "model.pt").write_bytes(b"half")
    live = root / f".stage-{os.getpid()}-def"  # this process: maybe another thread publishing
    live.mkdir()
    tmp = root / ".LATEST.0123abcd.tmp"
    tmp.write_text("7\n")
    (root / ".stage-notapid").mkdir()  # not a staging name: left alone
    assert reg.clean_staging() == [tmp, dead]  # sorted
    assert _hidden(root) == sorted([".stage-notapid", live.name])
    assert reg.clean_staging() == []
    assert reg.versions() == [] and reg.latest() is None  # readers never saw the staging folders

    # publish cleans first as well
    dead.mkdir()
    assert reg.publish(_ckpt(tmp_path, "a.pt", b"x")) == 1
    assert not dead.exists() and live.exists()


def test_kill_9_while_publishing_leaves_no_version_and_is_cleaned(tmp_path):
    reg = ModelRegistry(tmp_path / "reg")
    assert reg.publish(_ckpt(tmp_path, "a.pt", b"one")) == 1
    src = _ckpt(tmp_path, "b.pt", b"two")
    code = textwrap.dedent(f"""
        import time
        from adrec_stream.serving.registry import ModelRegistry
        def hook(stage):
            print("STAGED", stage, flush=True)
            time.sleep(60)
        ModelRegistry({str(tmp_path / "reg")!r}).publish({str(src)!r}, {{"round": 2}}, before_commit=hook)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.startswith("STAGED "), line
        stage = tmp_path / "reg" / line.split(" ", 1)[1].strip()
        assert (stage / "model.pt").read_bytes() == b"two"
    finally:
        proc.kill()  # SIGKILL: no cleanup runs
        proc.wait(10)
    assert proc.returncode == -9 and stage.exists()
    for _ in range(100):  # the kernel reaps the process; pid_alive also treats zombies as dead
        if not pid_alive(proc.pid):
            break
        time.sleep(0.05)
    assert reg.versions() == [1] and reg.latest() == (1, reg.path(1)) and reg.list_versions()[0]["version"] == 1
    assert reg.clean_staging() == [stage]
    assert _hidden(tmp_path / "reg") == []
    assert reg.publish(src) == 2 and reg.latest()[0] == 2


def test_manifest_and_list_versions(tmp_path):
    reg = ModelRegistry(tmp_path / "reg")
    assert reg.list_versions() == []
    reg.publish(_ckpt(tmp_path, "a.pt", b"a" * 10), {"source": "demo", "vocab_size": 40, "item_counts": [0, 1]})
    reg.publish(_ckpt(tmp_path, "b.pt", b"b" * 11), {
        "source": "finetune", "parent_version": 1, "vocab_size": 42, "new_items": 2,
        "heldout": {"old": 0.041, "new": 0.044}, "wall_s": 12.5, "round": 1})
    reg.publish(_ckpt(tmp_path, "c.pt", b"c" * 12))
    reg.set_latest(2)

    info = reg.info(2)
    man = reg.manifest(2)
    assert man == {"source": "finetune", "parent_version": 1, "vocab_size": 42, "new_items": 2,
                   "heldout": {"old": 0.041, "new": 0.044}, "wall_s": 12.5, "round": 1,
                   "version": 2, "published_at": info["published_at"], "sha256": info["sha256"], "size": 11}
    assert reg.manifest(3) == {"version": 3, "published_at": reg.info(3)["published_at"],
                               "sha256": reg.info(3)["sha256"], "size": 12}
    assert reg.manifest(9) is None

    rows = reg.list_versions()
    iso = [datetime.fromtimestamp(reg.info(v)["published_at"], tz=UTC).isoformat(timespec="seconds")
           for v in (1, 2, 3)]
    assert all(s.endswith("+00:00") for s in iso)
    assert rows == [
        {"version": 1, "published_at": iso[0], "size": 10, "latest": False, "vocab_size": 40, "source": "demo"},
        {"version": 2, "published_at": iso[1], "size": 11, "latest": True, "parent_version": 1, "vocab_size": 42,
         "new_items": 2, "heldout": {"old": 0.041, "new": 0.044}, "wall_s": 12.5, "source": "finetune"},
        {"version": 3, "published_at": iso[2], "size": 12, "latest": False},
    ]
    # an incomplete version folder is not listed; a pointer to a deleted version marks the newest complete one
    (tmp_path / "reg" / "v000004").mkdir()
    (tmp_path / "reg" / "LATEST").write_text("9\n")
    assert [(r["version"], r["latest"]) for r in reg.list_versions()] == [(1, False), (2, False), (3, True)]


def test_prune_never_deletes_the_rollback_target(tmp_path):
    reg = ModelRegistry(tmp_path / "reg")
    for i in range(4):
        reg.publish(_ckpt(tmp_path, f"{i}.pt", bytes([i])))
    reg.set_latest(1)  # rolled back to the oldest
    assert reg.prune(keep=1) == [2, 3]
    assert reg.versions() == [1, 4] and reg.latest() == (1, reg.path(1))
    assert [(r["version"], r["latest"]) for r in reg.list_versions()] == [(1, True), (4, False)]
    assert reg.prune(keep=1) == []  # still protected on the next round
    assert reg.publish(_ckpt(tmp_path, "n.pt", b"n")) == 5  # the pointer moves on: v1 is no longer protected
    assert reg.prune(keep=1) == [1, 4] and reg.versions() == [5]


def test_registry_without_create_refuses_a_missing_folder(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        ModelRegistry(tmp_path / "absent", create=False)
    assert not (tmp_path / "absent").exists()
    ModelRegistry(tmp_path / "reg")
    assert ModelRegistry(tmp_path / "reg", create=False).versions() == []
