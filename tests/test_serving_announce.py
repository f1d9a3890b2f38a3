"""ReloadingRecommender.announce and the version rules (adrec_stream.serving.recommender / announce), in-process on
real registries: announced versions load at once, never an older one unless LATEST names it as a rollback, a
checksum that differs from the manifest is refused, a version announced before it is visible is retried."""

from __future__ import annotations

import uuid

import orjson
import pytest
from conftest import tiny_checkpoint

from adrec_stream.serving.announce import announcement, parse_announcement
from adrec_stream.serving.recommender import ReloadingRecommender
from adrec_stream.serving.registry import FsspecRegistry, ModelRegistry


@pytest.fixture
def ckpts(tmp_path):
    return [tiny_checkpoint(tmp_path / f"c{i}" / "model.pt", seed=i) for i in range(3)]


def test_announced_version_loads_without_polling_and_older_ones_are_ignored(tmp_path, ckpts, one_torch_thread):
    reg = ModelRegistry(tmp_path / "reg")
    reg.publish(ckpts[0])
    rr = ReloadingRecommender(reg, poll_s=0, poll=False)
    assert rr.version == 1
    reg.publish(ckpts[1])
    assert rr.recommend([["1"]], k=3)[0].model_version == 1  # polling is off
    key, value = announcement(reg, 2, source="test")
    ann = parse_announcement(value)
    assert key == str((tmp_path / "reg").resolve()).encode() and ann["sha256"] == reg.info(2)["sha256"]
    assert rr.announce(ann["version"], sha256=ann["sha256"], registry_url=ann["registry"]) is True
    assert rr.version == 2 and rr.recommend([["1"]], k=3)[0].model_version == 2
    # an old announcement, a stale poll: no going back
    assert rr.announce(1, sha256=reg.info(1)["sha256"]) is False and rr.version == 2
    (reg.root / "LATEST").write_text("1\n")  # a pointer that lags behind, not a rollback
    assert rr.check() is False and rr.version == 2
    # a deliberate rollback is followed, by poll or by announcement
    reg.set_latest(1)
    assert (reg.root / "LATEST").read_text() == "1 rollback\n" and reg.is_rollback(1)
    assert rr.check() is True and rr.version == 1
    reg.set_latest(2)
    assert (reg.root / "LATEST").read_text() == "2\n"
    assert rr.announce(2) is True and rr.version == 2


def test_wrong_checksum_refused_and_not_yet_visible_version_retried(tmp_path, ckpts, one_torch_thread):
    reg = FsspecRegistry(f"memory://ann-{uuid.uuid4().hex}/reg", cache_dir=tmp_path / "cache")
    reg.publish(ckpts[0])
    rr = ReloadingRecommender(reg, poll=False)
    rr.PENDING_RETRY_S = 0.0
    assert rr.version == 1
    # announced before the registry shows it (a store that lags): pending, loaded once it appears
    assert rr.announce(2, sha256=None) is False and rr.version == 1
    assert rr.maybe_reload() is False
    reg.publish(ckpts[1])
    assert rr.maybe_reload() is True and rr.version == 2
    # an announcement whose checksum is not the manifest's: refused, counted once
    reg.publish(ckpts[2])
    assert rr.announce(3, sha256="0" * 64) is False and rr.version == 2 and rr.refusals == 1
    assert rr.announce(3, sha256="0" * 64) is False and rr.refusals == 1
    assert rr.announce(3, sha256=reg.info(3)["sha256"]) is True and rr.version == 3


def test_parse_announcement_refuses_what_is_not_one():
    assert parse_announcement(orjson.dumps({"version": 4, "sha256": "ab"}))["version"] == 4
    for bad in (b"not json", orjson.dumps([1]), orjson.dumps({"version": "4"}), orjson.dumps({"version": 0}),
                orjson.dumps({"version": True}), None):
        with pytest.raises(ValueError):
            parse_announcement(bad)
