"""``adrec-stream model list|rollback`` (adrec_stream.serving.model_cli), in-process on a registry of tiny models."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
import torch

from adrec_stream.cli import main
from adrec_stream.model import ModelConfig, build_model, load_checkpoint, save_checkpoint
from adrec_stream.serving.registry import ModelRegistry

pytestmark = pytest.mark.usefixtures("one_torch_thread")

VOCAB = [str(i) for i in range(1, 41)]
HEADER = ["VERSION", "LATEST", "PUBLISHED", "(UTC)", "VOCAB", "NEW", "PARENT", "NDCG@10", "OLD->NEW", "WALL", "S",
          "SOURCE"]


@pytest.fixture
def registry(tmp_path: Path) -> ModelRegistry:
    """v1 (initial, 40 items), v2 (fine-tuned, +2 items), v3 (fine-tuned, no held-out numbers), v4 (the fine-tune
    worker's held-out shape); LATEST = v3 (rolled back from v4)."""
    mcfg = ModelConfig(hidden_size=16, max_len=10, num_heads=2, num_blocks=1, diffusion_steps=4)
    reg = ModelRegistry(tmp_path / "reg")
    metas = [
        {"source": "demo", "vocab_size": 40},
        {"source": "finetune", "parent_version": 1, "vocab_size": 42, "new_items": 2,
         "heldout": {"old": 0.0412, "new": 0.0437}, "wall_s": 12.34},
        {"source": "finetune", "parent_version": 2, "vocab_size": 42, "new_items": 0, "wall_s": 3.0},
        # the fine-tune worker's manifest shape
        {"source": "finetune", "parent_version": 3, "vocab_size": 42, "new_items": 0, "wall_s": 1.25,
         "heldout": {"metric": "NDCG@10", "serving": {"NDCG@10": 0.05, "HR@10": 0.1},
                     "candidate": {"NDCG@10": 0.0512345, "HR@10": 0.11}, "tolerance": 0.005}},
    ]
    for seed, meta in enumerate(metas):
        torch.manual_seed(seed)
        vocab = VOCAB + [f"n{i}" for i in range(meta["vocab_size"] - 40)]
        model = build_model(len(vocab), mcfg).eval()
        path = save_checkpoint(tmp_path / f"ck{seed}" / "model.pt", model, vocab=vocab, config={})
        assert reg.publish(path, meta, move=True) == seed + 1
    reg.set_latest(3)
    return reg


def _published(reg: ModelRegistry, v: int) -> str:
    return datetime.fromtimestamp(reg.info(v)["published_at"], tz=UTC).strftime("%Y-%m-%d %H:%M:%S")


def test_list_prints_a_table(registry, capsys):
    assert main(["model", "list", "--registry", str(registry.root)]) == 0
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert len(lines) == 5 and lines[0].split() == HEADER
    (d1, t1), (d2, t2), (d3, t3), (d4, t4) = (_published(registry, v).split() for v in (1, 2, 3, 4))
    assert lines[1].split() == ["v1", d1, t1, "40", "-", "-", "-", "-", "demo"]
    assert lines[2].split() == ["v2", d2, t2, "42", "2", "v1", "0.0412->0.0437", "12.3", "finetune"]
    assert lines[3].split() == ["v3", "*", d3, t3, "42", "0", "v2", "-", "3.0", "finetune"]
    assert lines[4].split() == ["v4", d4, t4, "42", "0", "v3", "0.0500->0.0512", "1.2", "finetune"]
    # the * sits in the LATEST column
    assert lines[3][lines[0].index("LATEST")] == "*"


def test_list_json(registry, capsys):
    assert main(["model", "list", "--registry", str(registry.root), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["version"] for r in rows] == [1, 2, 3, 4]
    assert [r["latest"] for r in rows] == [False, False, True, False]
    assert rows[1] == {
        "version": 2, "published_at": _published(registry, 2).replace(" ", "T") + "+00:00",
        "size": registry.path(2).stat().st_size, "latest": False, "parent_version": 1, "vocab_size": 42,
        "new_items": 2, "heldout": {"old": 0.0412, "new": 0.0437}, "wall_s": 12.34, "source": "finetune",
    }
    assert "heldout" not in rows[2] and rows[0]["source"] == "demo"


def test_rollback_moves_latest_and_says_so(registry, capsys):
    assert main(["model", "rollback", "v1", "--registry", str(registry.root)]) == 0
    out, _ = capsys.readouterr()
    assert out.startswith("LATEST -> v1 (was v3); a running fine-tune worker starts its next round from this version")
    # --registry other than the config's: one line says it was not announced and how workers still switch
    assert f"not announced on model-versions: --registry {registry.root} is not the config's registry_dir" in out
    assert registry.pointer() == 1 and registry.latest() == (1, registry.path(1))
    assert load_checkpoint(registry.latest()[1]).model.n_items == 40
    # registry from the config (--set), poll interval from the config
    assert main(["model", "rollback", "2", "--set", f"registry_dir={registry.root}", "--set", "registry_poll_s=2",
                 "--no-announce"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("LATEST -> v2 (was v1); ")
    assert ("not announced on model-versions (--no-announce); score workers switch at their next batch once 2 s "
            "(registry_poll_s) have passed") in out
    assert out.count("\n") == 2 and "switch now" not in out  # no line contradicting another
    assert main(["model", "list", "--registry", str(registry.root), "--json"]) == 0
    assert [r["latest"] for r in json.loads(capsys.readouterr().out)] == [False, True, False, False]


def test_rollback_to_unknown_version_exits_2_with_one_line(registry, capsys):
    assert main(["model", "rollback", "v9", "--registry", str(registry.root)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err == (f"adrec-stream model: error: registry {registry.root}: version 9 is missing or incomplete; "
                   "valid versions: [1, 2, 3, 4]\n")
    assert registry.pointer() == 3
    assert main(["model", "rollback", "latest", "--registry", str(registry.root)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "VERSION must be a version number" in err


def test_missing_registry_exits_2_and_is_not_created(tmp_path, capsys):
    absent = tmp_path / "no" / "registry"
    assert main(["model", "list", "--registry", str(absent)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"model registry {absent} does not exist" in err
    assert main(["model", "rollback", "1", "--registry", str(absent)]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    assert not (tmp_path / "no").exists()


def test_empty_registry(tmp_path, capsys):
    root = ModelRegistry(tmp_path / "reg").root
    assert main(["model", "list", "--registry", str(root)]) == 0
    assert capsys.readouterr().out == f"registry {root}: no complete version\n"
    assert main(["model", "list", "--registry", str(root), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []
    assert main(["model", "rollback", "1", "--registry", str(root)]) == 2
    assert capsys.readouterr().err == (f"adrec-stream model: error: registry {root} has no complete version: "
                                       "nothing to roll back to\n")


def test_publish_adds_a_loadable_checkpoint_and_refuses_a_broken_one(tmp_path, capsys):
    """A fresh user found no way to get a first model into the registry: `model publish` is it."""
    mcfg = ModelConfig(hidden_size=16, max_len=10, num_heads=2, num_blocks=1, diffusion_steps=4)
    path = save_checkpoint(tmp_path / "run" / "model.pt", build_model(40, mcfg).eval(), vocab=VOCAB, config={})
    reg_dir = tmp_path / "new-registry"
    assert main(["model", "publish", str(path.parent), "--registry", str(reg_dir)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"published {path} as v1 of {reg_dir} (LATEST -> v1; 40 items, model kind adrec)")
    reg = ModelRegistry(reg_dir)
    assert reg.versions() == [1] and reg.manifest(1)["vocab_size"] == 40 and reg.manifest(1)["source"] == "publish"
    broken = tmp_path / "broken.pt"
    broken.write_bytes(path.read_bytes()[:1000])
    assert main(["model", "publish", str(broken), "--registry", str(reg_dir)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "cannot read checkpoint" in err
    assert reg.versions() == [1]


def test_memory_registry_is_refused_by_the_command_line(tmp_path, capsys):
    """memory:// ends with the process: `model publish` used to report a version that `model list` never found."""
    mcfg = ModelConfig(hidden_size=16, max_len=10, num_heads=2, num_blocks=1, diffusion_steps=4)
    path = save_checkpoint(tmp_path / "run" / "model.pt", build_model(40, mcfg).eval(), vocab=VOCAB, config={})
    for argv in (["publish", str(path)], ["list"], ["rollback", "1"]):
        assert main(["model", *argv, "--registry", "memory://reg"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "memory:// lives only inside one process" in err and "file://" in err
