"""``adrec-stream model publish|list|rollback``: put a trained model into the registry, look at the versions,
move ``LATEST`` back.

``publish CHECKPOINT`` copies a checkpoint (``adrec-stream train --output DIR`` writes ``DIR/model.pt``) into the
registry as the next version after checking that it loads (a broken or mismatched file is refused before it
can reach a score worker); it is how the first model of a deployment gets to the score and fine-tune workers.

The registry is the stream config's ``registry_dir`` (``--config``, ``--set registry_dir=...``) or ``--registry
DIR``. ``list`` prints one row per complete version (``--json``: a JSON list of
:meth:`~adrec_stream.serving.registry.ModelRegistry.list_versions` rows); it never creates a missing registry.
``rollback VERSION`` points ``LATEST`` at an older (or any existing) version (marked as a rollback, the only way
score workers go back); score workers pick it up at once from the announcement, or at their next registry poll
(``registry_poll_s``). ``publish`` and ``rollback`` announce the new ``LATEST`` on ``topics.model_versions``
(:mod:`adrec_stream.serving.announce`) when the registry is the config's own and a broker answers; ``--no-announce``
skips it. The registry may be a folder or an fsspec URL. A later publish (e.g. the next fine-tune round) moves ``LATEST`` to
the new version again.

Errors (missing registry folder, unknown version, empty registry) are
:class:`~adrec_stream.errors.CheckpointError`: the CLI prints one line and exits 2.
"""

from __future__ import annotations

import argparse
import json
import re
from typing import Any

from adrec_stream.errors import CheckpointError, ConfigError
from adrec_stream.serving.registry import open_registry
from adrec_stream.stream.worker_cli import add_common_config_arguments, load_from_args

_VERSION_ARG = re.compile(r"[vV]?(\d+)")
_NDCG_KEYS = ("NDCG@10", "ndcg@10", "ndcg10", "ndcg_10", "NDCG10")
_OLD_KEYS = ("serving", "old", "before", "parent")
_NEW_KEYS = ("candidate", "new", "after")


def _add_registry_arguments(parser: argparse.ArgumentParser, *, announce: bool = False) -> None:
    parser.add_argument("--registry", default=None, metavar="DIR",
                        help="registry folder or fsspec URL (overrides registry_dir of the stream config)")
    add_common_config_arguments(parser)
    if announce:
        parser.add_argument("--no-announce", action="store_true",
                            help="do not announce the new LATEST on topics.model_versions (score workers then switch at "
                                 "their next registry poll)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the ``publish``, ``list`` and ``rollback`` actions and their options."""
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    p_pub = sub.add_parser("publish", help="add a trained checkpoint as the next version (and LATEST)",
                           description="Check that CHECKPOINT loads, then add it to the registry as the next version "
                                       "and point LATEST at it, announced on topics.model_versions when the registry is "
                                       "the config's (score workers switch at once; otherwise at their next registry "
                                       "poll, registry_poll_s); the fine-tune worker starts its next round from it.")
    p_pub.add_argument("checkpoint", metavar="CHECKPOINT",
                       help="a checkpoint file or a folder holding model.pt (e.g. the --output of adrec-stream train)")
    _add_registry_arguments(p_pub, announce=True)
    p_list = sub.add_parser("list", help="list the complete versions (LATEST marked with *)",
                            description="List the registry's complete versions, oldest first; * marks LATEST.")
    _add_registry_arguments(p_list)
    p_list.add_argument("--json", action="store_true", help="print a JSON list of versions instead of a table")
    p_rb = sub.add_parser("rollback", help="point LATEST at an existing version",
                          description="Point LATEST at VERSION, announced like publish (score workers switch at once, "
                                      "or at their next registry poll without an announcement). "
                                      "The next publish moves LATEST to the new version again.")
    p_rb.add_argument("version", metavar="VERSION", help="version number: 3, v3 or v000003")
    _add_registry_arguments(p_rb, announce=True)


def parse_version(text: str) -> int:
    """``"3"``, ``"v3"`` or ``"v000003"`` -> 3.

    Raises:
        CheckpointError: not a version number >= 1.
    """
    m = _VERSION_ARG.fullmatch(text.strip())
    if not m or int(m.group(1)) < 1:
        raise CheckpointError(f"VERSION must be a version number >= 1 such as 3, v3 or v000003, got {text!r}")
    return int(m.group(1))


def _ndcg(value: Any) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, dict):
        for k in _NDCG_KEYS:
            if isinstance(value.get(k), int | float):
                return float(value[k])
    return None


def heldout_text(heldout: Any) -> str:
    """``heldout`` of a manifest as ``"old->new"`` NDCG@10 (4 decimals); ``-`` when absent.

    Accepted shapes: the fine-tune worker's ``{"metric": "NDCG@10", "serving": {"NDCG@10": x, ...},
    "candidate": {"NDCG@10": y, ...}, ...}``; ``{"old": x, "new": y}`` (also ``before``/``after``) where x, y
    are numbers or dicts holding ``NDCG@10``; or ``{"NDCG@10": {"old": x, "new": y}}``. Anything else is shown
    as compact JSON (40 characters at most).
    """
    if heldout is None:
        return "-"
    if isinstance(heldout, dict):
        inner = next((heldout[k] for k in _NDCG_KEYS if isinstance(heldout.get(k), dict)), heldout)
        old = _ndcg(next((inner[k] for k in _OLD_KEYS if k in inner), None))
        new = _ndcg(next((inner[k] for k in _NEW_KEYS if k in inner), None))
        if old is not None or new is not None:
            return f"{'?' if old is None else f'{old:.4f}'}->{'?' if new is None else f'{new:.4f}'}"
    return json.dumps(heldout, separators=(",", ":"))[:40]


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.1f}"
    return str(value)


def format_table(rows: list[dict[str, Any]]) -> str:
    """The ``list`` table: VERSION, * for LATEST, PUBLISHED (UTC), VOCAB, NEW, PARENT, NDCG@10 OLD->NEW, WALL S,
    SOURCE; ``-`` where the manifest has no value."""
    header = ["VERSION", "LATEST", "PUBLISHED (UTC)", "VOCAB", "NEW", "PARENT", "NDCG@10 OLD->NEW", "WALL S", "SOURCE"]
    lines = [header]
    for r in rows:
        published = (r.get("published_at") or "-").replace("T", " ").removesuffix("+00:00")
        parent = r.get("parent_version")
        lines.append([
            f"v{r['version']}",
            "*" if r.get("latest") else "",
            published,
            _cell(r.get("vocab_size")),
            _cell(r.get("new_items")),
            f"v{parent}" if isinstance(parent, int) else _cell(parent),
            heldout_text(r.get("heldout")),
            _cell(r.get("wall_s")),
            _cell(r.get("source")),
        ])
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in lines)


def run(args: argparse.Namespace) -> int:
    """CLI entry: ``list`` or ``rollback``; returns 0 (errors are raised as CheckpointError / ConfigError).

    Raises:
        ConfigError: the stream config cannot be loaded.
        CheckpointError: the registry folder does not exist, VERSION is malformed or not a complete version,
            or (rollback) the registry has no version.
    """
    cfg = load_from_args(args)
    location = args.registry or cfg.registry_dir
    if str(location).startswith("memory://"):
        raise ConfigError(f"model registry {location}: memory:// lives only inside one process, so what this command "
                          "writes is gone when it exits; use a folder or a shared URL (file://, s3://, ...)")
    if args.action == "publish":
        registry = open_registry(location, cache_dir=cfg.registry_cache)
        version = _publish(registry, args.checkpoint)
        _announce(cfg, args, registry, version, rollback=False)
        return 0
    registry = open_registry(location, cache_dir=cfg.registry_cache, create=False)
    if args.action == "list":
        rows = registry.list_versions()
        if args.json:
            print(json.dumps(rows, indent=1))
        elif not rows:
            print(f"registry {registry.root}: no complete version")
        else:
            print(format_table(rows))
        return 0
    version = parse_version(args.version)
    before = registry.latest()
    if before is None:
        raise CheckpointError(f"registry {registry.root} has no complete version: nothing to roll back to")
    registry.set_latest(version)
    print(f"LATEST -> v{version} (was v{before[0]}); a running fine-tune worker starts its next round from this "
          "version and publishes over it")
    _announce(cfg, args, registry, version, rollback=version < before[0])
    return 0


def _announce(cfg: Any, args: argparse.Namespace, registry: Any, version: int, *, rollback: bool) -> bool:
    """Announce ``version`` on ``topics.model_versions`` and print one line saying whether it was.

    Only the stream config's own registry is announced (not one named by a different ``--registry``: the score
    workers of that config do not read it), only with ``model_versions.announce`` and without ``--no-announce``, and
    only when a bootstrap server accepts connections (checked first: no Kafka client retries against a stopped
    cluster). A failure is one line, not an error: score workers still find the version by polling.
    """
    from adrec_stream.broker.admin import port_open  # noqa: PLC0415
    from adrec_stream.broker.process import effective_bootstrap  # noqa: PLC0415
    from adrec_stream.errors import AdrecStreamError  # noqa: PLC0415
    from adrec_stream.serving.announce import Announcer  # noqa: PLC0415

    topic = cfg.topics.model_versions.name
    if cfg.model_versions.registry_poll:
        poll = (f"score workers switch at their next batch once {cfg.registry_poll_s:g} s (registry_poll_s) have "
                "passed")
    else:
        poll = ("registry polling is off (model_versions.registry_poll: false): score workers switch only when they "
                "restart or a later version is announced")
    if getattr(args, "no_announce", False) or not cfg.model_versions.announce:
        why = "--no-announce" if getattr(args, "no_announce", False) else "model_versions.announce: false"
        print(f"not announced on {topic} ({why}); {poll}")
        return False
    if args.registry is not None and args.registry != cfg.registry_dir:
        print(f"not announced on {topic}: --registry {args.registry} is not the config's registry_dir "
              f"({cfg.registry_dir}), which its score workers read; score workers reading {args.registry} switch at "
              "their next registry poll (pass --config with that registry_dir to announce)")
        return False
    bootstrap = effective_bootstrap(cfg)
    hosts = [s.rpartition(":") for s in bootstrap.split(",")]
    if not any(port_open(h, int(p), timeout=1.0) for h, _, p in hosts):
        print(f"not announced on {topic}: no Kafka broker answers at {bootstrap}; {poll}")
        return False
    announcer = Announcer(cfg)
    try:
        announcer.announce(registry, version, source="rollback" if rollback else "publish", rollback=rollback)
    except AdrecStreamError as err:
        print(f"not announced on {topic}: {err}; {poll}")
        return False
    finally:
        announcer.close()
    print(f"announced v{version} on {topic} ({bootstrap}): score workers switch now")
    return True


def _publish(registry: Any, checkpoint: str) -> int:
    """Load ``checkpoint`` (refused with its CheckpointError if it does not), publish it, print one line; returns the
    new version."""
    from adrec_stream.model.checkpoint import load_checkpoint  # noqa: PLC0415 - torch only for this action

    ckpt = load_checkpoint(checkpoint)
    version = registry.publish(ckpt.path, meta={"source": "publish", "vocab_size": len(ckpt.vocab),
                                                "published_from": str(ckpt.path.resolve())})
    print(f"published {ckpt.path} as v{version} of {registry.root} (LATEST -> v{version}; "
          f"{len(ckpt.vocab):,} items, model kind {ckpt.model.cfg.kind})")
    return version
