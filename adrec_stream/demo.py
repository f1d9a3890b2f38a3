"""``adrec-stream demo``: the product's main job, end to end on MovieLens 100K.

Steps (all settings in ``configs/demo.yaml``; relative paths there are relative to the repository root):

1. Read the interaction log (default ``../shared/data/events/ml-100k/u.data``) and split it by time: the
   first ``train_fraction`` (80%) of events trains the model, the rest (20%) is replayed as clicks.
2. Train ADRec (three stages, :func:`adrec_stream.training.trainer.train_model`) on per-user sequences of the
   training part, internal ids from its vocabulary, with a SMALL epoch budget (printed), or load it from the
   cache folder when the same data/config was trained before. It is published to a fresh model registry with
   ``item_counts`` (popularity fallback) in its meta.
3. Load the training part into the per-partition sequence stores (``bootstrap_state``, each user into the
   store of the clicks partition its key maps to) so known users keep their history;
   start the embedded broker (Tansu, free loopback port), the ingest and score workers as subprocesses, and
   wait until both have joined their consumer groups; with ``finetune.enabled`` also the fine-tune worker
   (``python -m workers.finetune --device cpu``, :mod:`adrec_stream.incremental.worker`; the stream config's
   ``finetune:`` section with the demo's ``finetune.settings`` applied), which publishes new registry versions
   during the replay that the score worker swaps in.
4. Replay the held-out part into the clicks topic (paced, default 100 events/s) while consuming the
   recommendations and dead-letter topics; wait until every valid click has a recommendation (or no progress
   for ``drain_timeout_s``).
5. Print a summary: events in, recommendations out, dead-lettered, prequential HR@k / NDCG@k
   (:mod:`adrec_stream.evaluation.prequential`) next to a popularity baseline, latency p50/p99 from click produce time to the
   recommendation's arrival at a consumer; the fine-tune worker's rounds from its log (published, rejected,
   staleness), the registry versions added, and the prequential metrics split by the model version that made each
   recommendation (:func:`~adrec_stream.evaluation.prequential.prequential_by_group`); the LAST line is one JSON
   object with those figures (and under ``"ops"`` the workers' operations endpoints).

While the workers run, their operations endpoints (``/metrics``, ``/readyz``, ``/healthz``; free ports, read from
each worker's ``ops_http_listening`` log line) are printed as ``metrics: http://...`` lines, and the status page
(:mod:`adrec_stream.ops.dashboard`) is served on ``ops.dashboard_port`` (a free port if taken) and printed as
``status page: http://...``.

Everything started is stopped on exit, on errors and on Ctrl-C / SIGTERM (workers: SIGTERM then SIGKILL;
broker: :func:`~adrec_stream.broker.process.stop_broker`); the fine-tune worker is stopped with the others once the
replay drained (a round in progress is abandoned, nothing half-published). A Faust worker that exits with
:data:`~adrec_stream.stream.app.EXIT_AGENT_CRASHED` is restarted (it resumes from its committed offset); the
fine-tune worker is restarted after an error exit (1; it rebuilds its state from the topic and the registry).
Any other exit during the run, exit 0 included, stops the demo with the worker's log tail.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import signal
import statistics
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from adrec_stream.argtypes import non_negative_float, positive_int
from adrec_stream.config import CONFIG_DIR, StrictModel, load_config
from adrec_stream.errors import ConfigError, DataFileError
from adrec_stream.logging import get_logger
from adrec_stream.stream.local import (
    READY_MARKERS,
    REPO_ROOT,
    OutputCollector,
    WorkerProcess,
    bootstrap_state,
    finetune_rounds,
    ops_urls,
    run_dir_overrides,
    start_pipeline_broker,
    supervise,
    wait_ready,
)

DEFAULT_DEMO_CONFIG = CONFIG_DIR / "demo.yaml"
#: File that marks a work_dir as the demo's own (only such folders are wiped).
MARKER = ".adrec-demo"
log = get_logger("adrec_stream.demo")


class DemoEpochs(StrictModel):
    """Epoch budget per training stage (the paper trains up to 500 epochs with early stopping)."""

    pretrain: int = Field(8, ge=0)
    align: int = Field(2, ge=0)
    finetune: int = Field(6, ge=0)


#: The demo's ``finetune.settings`` when demo.yaml has none: rounds sized for the ~200 s replay.
DEFAULT_FINETUNE_SETTINGS: dict[str, Any] = {"interval_s": 40, "min_new_events": 4000, "threads": 1, "device": "cpu",
                                             "max_seconds": 30, "epochs": 2}


class DemoFinetune(StrictModel):
    """The fine-tune worker in the demo (``finetune:`` in ``configs/demo.yaml``).

    ``enabled``: start ``python -m workers.finetune`` next to the ingest and score workers.
    ``settings``: overrides of the stream config's ``finetune:`` section
    (:class:`~adrec_stream.incremental.config.FinetuneConfig` keys, e.g. ``interval_s: 40``); keys not given keep
    the stream config's values. They are validated with the stream config (unknown keys are errors naming
    demo.yaml). A ``settings`` mapping replaces :data:`DEFAULT_FINETUNE_SETTINGS` as a whole.
    """

    enabled: bool = True
    settings: dict[str, Any] = Field(default_factory=lambda: dict(DEFAULT_FINETUNE_SETTINGS))


class DemoConfig(StrictModel):
    """Settings of ``adrec-stream demo`` (``configs/demo.yaml``).

    ``bootstrap_state``: load the training part into the sequence store before the replay, so that users
    seen in training are scored with their full history (as a deployment that built its state from the
    historical log would); False starts every user from an empty window.
    ``finetune``: the fine-tune worker (:class:`DemoFinetune`).
    ``experiment_overrides`` are dotted keys applied to the experiment YAML (e.g. ``train.batch_size: 128``:
    with ~750 training users a batch of 512 gives only 2 optimiser steps per epoch).
    """

    data: str = "../shared/data/events/ml-100k/u.data"
    data_format: Literal["auto", "ml100k", "mlcsv", "ml1m", "csv"] = "auto"
    train_fraction: float = Field(0.8, strict=False, gt=0, lt=1)
    stream_config: str = "configs/stream.yaml"
    experiment: str = "configs/adrec-cpu.yaml"
    epochs: DemoEpochs = DemoEpochs()
    experiment_overrides: dict[str, Any] = Field(default_factory=dict)
    train_threads: int = Field(2, ge=1)
    work_dir: str = "var/demo"
    cache_dir: str = "var/demo-cache"
    replay_rate_per_s: float = Field(100.0, strict=False, ge=0)
    replay_limit: int | None = Field(None, ge=1)
    exclude_history: bool = True
    bootstrap_state: bool = True
    top_k: int = Field(10, ge=1)
    ready_timeout_s: float = Field(120.0, strict=False, gt=0)
    drain_timeout_s: float = Field(120.0, strict=False, gt=0)
    max_worker_restarts: int = Field(3, ge=0)
    finetune: DemoFinetune = Field(default_factory=DemoFinetune)


def _repo_path(p: str | Path) -> Path:
    q = Path(p).expanduser()
    return q if q.is_absolute() else (REPO_ROOT / q)


def _say(msg: str) -> None:
    print(msg, flush=True)


# ------------------------------------------------------------------------------------------------ model
def prepare_model(dcfg: DemoConfig, train: list, data_path: Path) -> tuple[Path, dict[str, Any]]:
    """Train ADRec on the training part (or reuse the cached checkpoint); returns (checkpoint path, facts).

    Facts: users, items, events, epochs per stage, wall seconds, and whether it came from the cache.
    """
    import torch  # noqa: PLC0415

    from adrec_stream.data.events import build_vocabulary, item_counts, user_sequences  # noqa: PLC0415
    from adrec_stream.model.checkpoint import save_checkpoint  # noqa: PLC0415
    from adrec_stream.training.cache import cached_checkpoint_path, training_cache_key  # noqa: PLC0415
    from adrec_stream.training.config import load_experiment  # noqa: PLC0415

    exp = load_experiment(_repo_path(dcfg.experiment), dict(dcfg.experiment_overrides))
    vocab = build_vocabulary(train)
    seqs = user_sequences(train, vocab)
    facts: dict[str, Any] = {"train_events": len(train), "train_users": len(seqs), "items": len(vocab),
                             "epochs": dcfg.epochs.model_dump(), "kind": exp.model.kind}
    key = training_cache_key(train, exp, dcfg.epochs.model_dump(), data_path.name)
    ckpt = cached_checkpoint_path(_repo_path(dcfg.cache_dir), exp.model.kind, key)
    if ckpt.is_file():
        facts.update(cached=True, wall_s=0.0)
        return ckpt, facts
    from adrec_stream.training.trainer import train_model  # noqa: PLC0415

    torch.set_num_threads(dcfg.train_threads)
    t0 = time.perf_counter()
    res = train_model(list(seqs.values()), len(vocab), exp, epochs=dcfg.epochs.model_dump(), progress=False,
                      log=get_logger("adrec_stream.demo.train"))
    facts.update(cached=False, wall_s=time.perf_counter() - t0, epochs_run=res.epochs_run)
    counts = item_counts(train, vocab)
    save_checkpoint(ckpt, res.model, vocab=vocab, config=exp.model_dump(mode="json"),
                    meta={"item_counts": counts, "trained_on": str(data_path), "train_fraction": dcfg.train_fraction,
                          "epochs": dcfg.epochs.model_dump()})
    return ckpt, facts


# ---------------------------------------------------------------------------------------------- workers
# ---------------------------------------------------------------------------------------------- stream
async def _stream_phase(bootstrap: str, scfg: Any, clicks: list, dcfg: DemoConfig,
                        workers: list[WorkerProcess]) -> dict[str, Any]:
    """Replay ``clicks`` and collect recommendations / dead letters until drained."""
    from adrec_stream.stream.replay import produce_clicks  # noqa: PLC0415

    last_progress = time.time()
    async with OutputCollector(bootstrap, scfg, client_id="adrec-demo-collector",
                               fetch_max_wait_ms=int(min(scfg.consumer.fetch_max_wait_s, 0.1) * 1000)) as out:

        async def collect() -> None:
            nonlocal last_progress
            while True:
                if await out.poll():
                    last_progress = time.time()

        collector = asyncio.create_task(collect())
        replay_task = asyncio.create_task(produce_clicks(bootstrap, scfg.topics.clicks.name, clicks,
                                                         rate_per_s=dcfg.replay_rate_per_s or None, progress=False))
        try:
            while not replay_task.done():
                supervise(workers, dcfg.max_worker_restarts)
                await asyncio.wait({replay_task, collector}, timeout=0.5, return_when=asyncio.FIRST_COMPLETED)
                if collector.done():
                    collector.result()
            replay = replay_task.result()
            last_progress = max(last_progress, time.time())
            expected = replay.sent
            while out.answered < expected:
                if collector.done():
                    collector.result()
                supervise(workers, dcfg.max_worker_restarts)
                if time.time() - last_progress > dcfg.drain_timeout_s:
                    log.warning("drain_timeout", recommendations=len(out.recs), expected=expected)
                    break
                await asyncio.sleep(0.2)
            await asyncio.sleep(0.5)  # let straggling duplicates arrive, so the count is complete
        finally:
            for t in (collector, replay_task):
                t.cancel()
            await asyncio.gather(collector, replay_task, return_exceptions=True)
    return {"replay": replay, "recs": out.recs, "recommendations_out": out.recommendations_out,
            "dead_lettered": out.dead_lettered, "fallback": out.fallback}


# --------------------------------------------------------------------------------------------- helpers
def _derived_stream_config(dcfg: DemoConfig, run_dir: Path, source: str = "demo config") -> tuple[Any, Path]:
    """Load the stream config, point broker files, state and registry into ``run_dir`` and apply the demo's
    ``finetune.settings`` (as ``finetune.<key>``).

    ``source`` names the demo config in errors: a bad value the demo supplies (a ``finetune.settings`` key or
    ``top_k``) is reported against it, e.g. ``demo.yaml: finetune.settings.intervl_s: unknown key ...``.

    Raises:
        ConfigError: the stream config, or the demo's overrides applied to it, fail validation.
    """
    from adrec_stream.stream.config import load_stream_config  # noqa: PLC0415

    stream_path = _repo_path(dcfg.stream_config)
    over: dict[str, Any] = {**run_dir_overrides(run_dir), "top_k": dcfg.top_k}
    over.update({f"finetune.{key}": value for key, value in dcfg.finetune.settings.items()})
    try:
        scfg = load_stream_config(stream_path, over)
    except ConfigError as err:
        raise ConfigError("\n".join(_blame_demo(line, source) for line in str(err).splitlines())) from None
    return scfg, run_dir / "stream.yaml"


def _blame_demo(line: str, source: str) -> str:
    """Rewrite one stream-config error line about a value the demo supplied so that it names the demo config
    (``load_config`` credits dotted overrides to ``--set``)."""
    head, sep, rest = line.partition(" (value from --set): ")
    if not sep:
        return line
    loc, _, msg = rest.partition(": ")
    if loc == "finetune" or loc.startswith("finetune."):
        return f"{source}: finetune.settings{loc[len('finetune'):]}: {msg} (applied to the finetune section of {head})"
    return f"{source}: {loc}: {msg} (the demo's value for {loc} in {head})"


def finetune_summary(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Counts of ``finetune_round`` records by status.

    Returns:
        ``finetune_rounds`` (rounds that trained: published or rejected), ``published``, ``rounds_rejected``,
        ``rejected_by_reason``, ``skipped``, ``skipped_by_reason`` and ``staleness_s``: the median over the
        published rounds of ``staleness_s_max`` (None when nothing was published).
    """
    published = [r for r in rounds if r.get("status") == "published"]
    rejected = [r for r in rounds if r.get("status") == "rejected"]
    skipped = [r for r in rounds if r.get("status") == "skipped"]
    stale = [float(r["staleness_s_max"]) for r in published if isinstance(r.get("staleness_s_max"), (int, float))]
    by_reason: dict[str, dict[str, int]] = {"rejected": {}, "skipped": {}}
    for kind, recs in (("rejected", rejected), ("skipped", skipped)):
        for r in recs:
            reason = str(r.get("reason"))
            by_reason[kind][reason] = by_reason[kind].get(reason, 0) + 1
    return {"finetune_rounds": len(published) + len(rejected), "published": len(published),
            "rounds_rejected": len(rejected), "rejected_by_reason": by_reason["rejected"], "skipped": len(skipped),
            "skipped_by_reason": by_reason["skipped"],
            "staleness_s": round(statistics.median(stale), 1) if stale else None}


def _version_key(v: Any) -> str:
    return "none" if v is None else str(v)


def _version_metrics(r: Any) -> dict[str, Any]:
    return {"judged": r.judged, f"HR@{r.k}": round(r.hr, 4), f"NDCG@{r.k}": round(r.ndcg, 4)}


def version_order(by_version: dict[Any, Any]) -> list[Any]:
    """Model versions in ascending order, None ("no version": recommendations without a model) last."""
    return sorted(by_version, key=lambda v: (v is None, v if isinstance(v, int) else 0))


def version_lines(by_version: dict[Any, Any], published: list[int], k: int) -> list[str]:
    """The summary's per-version lines, in version order ("no version" last): pairs, HR@k and NDCG@k of each model
    version that made recommendations, and "0 pairs" for each version ``published`` by the run's fine-tune rounds
    (from their log, so pruned versions count too) that made none (published after the last scored click, or
    replaced before its first): every version of "registry vA -> vB" is accounted for."""
    lines = []
    for v in version_order({**dict.fromkeys(published), **by_version}):
        if v in by_version:
            r = by_version[v]
            lines.append(f"  {'v' + str(v) if v is not None else 'no version'}: {r.judged:,} pairs, HR@{k} {r.hr:.4f}, "
                         f"NDCG@{k} {r.ndcg:.4f}")
        else:
            lines.append(f"  v{v}: 0 pairs (no recommendation was made with it: published after the last scored "
                         f"click, or replaced before one)")
    return lines


def _fmt_metric(x: Any) -> str:
    return f"{x:.4f}" if isinstance(x, (int, float)) else "n/a"


def _describe_finetune(scfg: Any) -> str:
    f = scfg.finetune
    return (f"fine-tune worker: rounds every {f.interval_s:g} s or {f.min_new_events:,} clicks (whichever comes first, "
            f"once >= {f.min_round_events} fresh clicks), stage 3 on the fresh window plus replayed users "
            f"({f.epochs} passes, batch {f.batch_size}, at most {f.max_steps} steps / {f.max_seconds:g} s of training) "
            f"on the CPU "
            f"({f.threads} thread{'s' if f.threads != 1 else ''}), held-out newest "
            f"{f.holdout_fraction:.0%} of the fresh clicks; publishes a new registry version when its held-out NDCG@10 "
            f">= the serving model's - {f.tolerance:g}; the score worker loads it within {scfg.registry_poll_s:g} s")


#: display names of the model kinds (``model.kind``)
MODEL_NAMES = {"adrec": "ADRec", "sasrec": "SASRec+"}

#: how the demo's summary words a fine-tune round's rejection reason (status "rejected")
REJECT_REASONS = {"heldout": "held-out NDCG@10 below the tolerance", "diverged": "training diverged",
                  "distributed_failed": "distributed job failed"}

#: how the demo's summary words a fine-tune round's skip reason (``finetune_round`` records with status "skipped")
SKIP_REASONS = {"stopped": "cut short by the shutdown", "no_steps": "no training step",
                "no_training_windows": "no trained sequence of two items", "too_few_fresh_events": "too few fresh clicks",
                "no_serving_model": "no serving model", "serving_model_unreadable": "serving model unreadable"}


def _finetune_report(ft: dict[str, Any], rounds: list[dict[str, Any]], initial: int, versions: list[int],
                     added: int, worker: WorkerProcess) -> list[str]:
    rc = worker.proc.returncode if worker.proc is not None else None
    how = "stopped with SIGTERM, exit 0" if rc == 0 else f"exit code {rc} after SIGTERM"
    rej = ", ".join(f"{REJECT_REASONS.get(k, k)}: {n}" for k, n in sorted(ft["rejected_by_reason"].items()))
    skip = ", ".join(f"{SKIP_REASONS.get(k, k)}: {n}" for k, n in sorted(ft["skipped_by_reason"].items()))
    stale = f"{ft['staleness_s']:.1f} s" if ft["staleness_s"] is not None else "n/a (nothing published)"
    n = ft["finetune_rounds"]
    lines = [f"fine-tune: {n} round{'' if n == 1 else 's'} trained ({ft['published']} published, "
             f"{ft['rounds_rejected']} rejected{f' ({rej})' if rej else ''}), {ft['skipped']} not trained"
             f"{f' ({skip})' if skip else ''}; registry v{initial} -> v{max(versions, default=initial)} "
             f"({added} versions published during the run); staleness (oldest trained click's ingest -> publish, "
             f"median over published rounds) {stale}; worker restarts {worker.restarts}, {how}"]
    for r in rounds:
        if r.get("status") not in ("published", "rejected"):
            continue
        head = (f"v{r.get('version')} published" if r["status"] == "published"
                else f"rejected ({REJECT_REASONS.get(str(r.get('reason')), r.get('reason'))})")
        serving, candidate = r.get("heldout_NDCG@10_serving"), r.get("heldout_NDCG@10_candidate")
        if r["status"] == "published" and isinstance(serving, (int, float)) and isinstance(candidate, (int, float)) \
                and candidate < serving:
            head += " (lower, within the tolerance)"
        lines.append(f"  {head}: window {r.get('window_events', 0):,} events ({r.get('window_users', 0):,} users with "
                     f"fresh clicks, {r.get('replay_users', 0):,} replayed), {r.get('steps', 0)} steps, held-out "
                     f"NDCG@10 {_fmt_metric(serving)} -> {_fmt_metric(candidate)}, "
                     f"round {float(r.get('round_s') or 0):.1f} s")
    return lines


def _on_sigterm(signum: int, frame: Any) -> None:  # noqa: ARG001
    raise KeyboardInterrupt


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register ``--data``, ``--config`` and ``--limit``."""
    parser.add_argument("--data", default=None,
                        help="interaction log (default from configs/demo.yaml: ../shared/data/events/ml-100k/u.data)")
    parser.add_argument("--config", default=str(DEFAULT_DEMO_CONFIG), help="demo config YAML")
    parser.add_argument("--limit", type=positive_int, default=None, help="replay at most N held-out events (N >= 1)")
    parser.add_argument("--rate", type=non_negative_float, default=None,
                        help="replay rate (events/s; default: config, 0 = max)")


def _start_dashboard(stack: ExitStack, scfg: Any, endpoints: list[str]) -> str:
    """Serve the status page (:class:`~adrec_stream.ops.dashboard.Dashboard`) on ``ops.dashboard_port`` (a free
    port when that one is taken) until ``stack`` closes; returns its URL."""
    from adrec_stream.ops.dashboard import Dashboard  # noqa: PLC0415

    dash = Dashboard(scfg, endpoints)
    try:
        port = dash.start()
    except ConfigError:
        port = dash.start(port=0)
    stack.callback(dash.stop)
    from adrec_stream.ops.http import url_host  # noqa: PLC0415

    return f"http://{url_host(scfg.ops.bind)}:{port}/"


def run(args: argparse.Namespace) -> int:
    """Run the demo; returns 0 when every valid click got a recommendation, 1 otherwise."""
    from adrec_stream.data.events import chronological_split, read_interactions  # noqa: PLC0415
    from adrec_stream.evaluation.prequential import (  # noqa: PLC0415
        latency_percentiles,
        next_click_pairs,
        popularity_recommendations,
        prequential_by_group,
        prequential_metrics,
    )
    from adrec_stream.serving.registry import ModelRegistry  # noqa: PLC0415
    from adrec_stream.stream.replay import select_clicks  # noqa: PLC0415

    over: dict[str, Any] = {}
    if args.limit is not None:
        over["replay_limit"] = args.limit
    if args.rate is not None:
        over["replay_rate_per_s"] = args.rate
    dcfg = load_config(args.config, DemoConfig, over)
    data_path = Path(args.data).expanduser() if args.data else _repo_path(dcfg.data)
    if not data_path.is_file():
        raise DataFileError(
            f"demo data file not found: {data_path.resolve()} (expected an interaction log: MovieLens 100K u.data "
            "(user<TAB>item<TAB>rating<TAB>unix_ts), MovieLens ratings.csv (userId,movieId,rating,timestamp), "
            "MovieLens 1M ratings.dat (user::item::rating::ts) or a user,item,ts CSV; the default is "
            f"../shared/data/events/ml-100k/u.data relative to the repository {REPO_ROOT}); pass --data PATH"
        )
    run_dir = _repo_path(dcfg.work_dir)
    if run_dir.exists() and any(run_dir.iterdir()) and not (run_dir / MARKER).exists():
        raise ConfigError(f"work_dir {run_dir} exists and was not made by the demo (no {MARKER} file); the demo "
                          "wipes its work_dir at start: choose an empty or new folder")
    t_start = time.time()
    old_term = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        # validated before training: a bad finetune.settings key stops the job at once; its item_id_type is the
        # id rule the log is read with (the one the ingest workers apply to the replayed clicks)
        scfg, scfg_path = _derived_stream_config(dcfg, run_dir, source=str(args.config))
        interactions = read_interactions(data_path, fmt=dcfg.data_format, item_id_type=scfg.item_id_type)
        train, rest = chronological_split(interactions, dcfg.train_fraction)
        n_users = len({x.user_id for x in interactions})
        n_items = len({x.item_id for x in interactions})
        _say(f"adrec-stream demo: {data_path.name} ({len(interactions):,} events, {n_users:,} users, {n_items:,} items); "
             f"train = first {dcfg.train_fraction:.0%} by time ({len(train):,} events), "
             f"replay = the remaining {len(rest):,} as clicks")
        ckpt, facts = prepare_model(dcfg, train, data_path)
        ep = facts["epochs"]
        budget = f"pretrain {ep['pretrain']} / align {ep['align']} / finetune {ep['finetune']} epochs"
        how = "loaded from cache " + str(ckpt.parent) if facts["cached"] else f"trained in {facts['wall_s']:.0f} s"
        name = MODEL_NAMES.get(facts["kind"], facts["kind"])
        _say(f"model: {name} trained on the training part ({facts['train_users']:,} users / {facts['items']:,} items), "
             f"SMALL TRAINING BUDGET ({budget}; the paper trains up to 500 epochs with early stopping), {how}")
        if run_dir.exists():
            shutil.rmtree(run_dir)  # the broker's memory storage starts empty: old stored offsets would skip all
        (run_dir / "logs").mkdir(parents=True)
        (run_dir / MARKER).write_text("made by adrec-stream demo; wiped at each start\n")
        clicks = select_clicks(interactions, data_path.name, skip_fraction=0.0, limit=None,
                               item_id_type=scfg.item_id_type)[len(train):]
        if dcfg.replay_limit is not None:
            clicks = clicks[: dcfg.replay_limit]
        if dcfg.bootstrap_state:
            bootstrap_state(scfg, train, data_path.name)
            _say(f"state: sequence store bootstrapped with the training part ({len(train):,} clicks, window "
                 f"{scfg.window}), so known users are scored with their history")
        with ExitStack() as stack:
            scfg, bootstrap = start_pipeline_broker(stack, scfg, scfg_path)
            registry = ModelRegistry(scfg.registry_dir)
            version = registry.publish(ckpt, meta={"source": "demo", **{k: v for k, v in facts.items()}})
            _say(f"broker: embedded Tansu at {bootstrap} (memory storage, tansu_compat on); "
                 f"model registry version {version} at {scfg.registry_dir}")
            # the replay runs hundreds of times faster than the log's clock (a user's ratings of one evening arrive
            # milliseconds apart): scoring every click on its own window keeps the prequential figures meaningful
            extra = ["--set", f"scoring.seen_items={'exclude' if dcfg.exclude_history else 'keep'}",
                     "--set", "scoring.deduplicate_users=false"]
            workers = [WorkerProcess("ingest", scfg_path, run_dir / "logs", []),
                       WorkerProcess("score", scfg_path, run_dir / "logs", extra)]
            finetuner: WorkerProcess | None = None
            if dcfg.finetune.enabled:
                # no local state (it rebuilds from the topic and the registry): restarted after an error exit (1)
                finetuner = WorkerProcess("finetune", scfg_path, run_dir / "logs", ["--device", "cpu"],
                                          restart_codes=frozenset({1}))
                workers.append(finetuner)
            for w in workers:
                stack.callback(w.stop)
                w.start()
            ready_s = wait_ready(workers, READY_MARKERS, dcfg.ready_timeout_s)
            ft_pid = f", fine-tune pid {finetuner.proc.pid}" if finetuner is not None else ""
            _say(f"workers: ingest pid {workers[0].proc.pid}, score pid {workers[1].proc.pid}{ft_pid} ready "
                 f"(consumer groups joined) in {ready_s:.1f} s (logs in {run_dir / 'logs'})")
            for role, url in ops_urls(workers).items():
                _say(f"metrics: {url}/metrics ({role} worker; {url}/readyz, {url}/healthz)")
            endpoints = [u.removeprefix("http://") for u in ops_urls(workers).values()]
            dashboard_url = _start_dashboard(stack, scfg, endpoints)
            _say(f"status page: {dashboard_url} (live while the demo runs); one snapshot: adrec-stream status "
                 f"--config {scfg_path} " + " ".join(f"--endpoint {e}" for e in endpoints))
            if finetuner is not None:
                _say(_describe_finetune(scfg))
            res = asyncio.run(_stream_phase(bootstrap, scfg, clicks, dcfg, workers))
            ops = {**ops_urls(workers), "dashboard": dashboard_url}  # read again: a restarted worker has a new port
            # the ExitStack stops the workers (the fine-tune worker first, a round in progress is abandoned)
        replay, recs = res["replay"], res["recs"]
        stream = [(c.user_id, c.item_id, c.event_id) for c in clicks]
        # a superseded record holds the list made after a LATER click of the user (scored together, see
        # stream/score.py): no list was served between the two clicks, so that pair is not judged
        superseded = {e for e, r in recs.items() if r.get("superseded_by")}
        rec_items = {e: r.get("items", []) for e, r in recs.items() if e not in superseded}
        pq = prequential_metrics(stream, rec_items, k=dcfg.top_k, not_judged=superseded)
        n_superseded = sum(e in superseded for e, _ in next_click_pairs(stream))
        by_version = prequential_by_group(stream, rec_items, {e: r.get("model_version") for e, r in recs.items()},
                                          k=dcfg.top_k)
        rounds = finetune_rounds(finetuner.log_text()) if finetuner is not None else []
        versions = ModelRegistry(scfg.registry_dir).versions()
        # version numbers are consecutive and pruning (finetune.keep_versions) only drops old ones
        added = max(versions) - version if versions else 0
        ft = finetune_summary(rounds)
        history: dict[str, list[str]] = {}
        if dcfg.bootstrap_state:
            for x in train:
                history.setdefault(x.user_id, []).append(x.item_id)
        base = prequential_metrics(
            ((c.user_id, c.item_id, c.event_id) for c in clicks),
            popularity_recommendations((x.item_id for x in train), [(c.user_id, c.item_id, c.event_id) for c in clicks],
                                       dcfg.top_k, history=history, exclude_seen=dcfg.exclude_history),
            k=dcfg.top_k)
        timed = [r for r in recs.values() if r.get("produced_ts") is not None]
        lat = latency_percentiles([r["received_ts"] - r["produced_ts"] for r in timed])
        emit = latency_percentiles([r["emitted_ts"] - r["produced_ts"] for r in timed])
        k = dcfg.top_k
        _say(f"replay: {replay.sent:,} clicks in {replay.wall_s:.1f} s ({replay.rate_per_s:,.0f} events/s)")
        _say(f"pipeline: events in {replay.sent:,}, recommendations out {res['recommendations_out']:,} "
             f"({len(recs):,} distinct event ids, {res['recommendations_out'] - len(recs):,} duplicates), "
             f"dead-lettered {res['dead_lettered']:,}, popularity fallback {res['fallback']:,}, "
             f"worker restarts {sum(w.restarts for w in workers)}")
        _say(f"prequential (recommendation after click i of user u vs u's click i+1, {pq.judged:,} pairs, "
             f"{pq.missing:,} without recommendation"
             + (f"; {n_superseded:,} more not judged: the list after click i was scored together with click i+1"
                if n_superseded else "")
             + f"): HR@{k} = {pq.hr:.4f}, NDCG@{k} = {pq.ndcg:.4f}")
        _say(f"baseline, same protocol: popularity in the training part"
             f"{' (seen items excluded)' if dcfg.exclude_history else ''}: HR@{k} = {base.hr:.4f}, "
             f"NDCG@{k} = {base.ndcg:.4f}")
        _say(f"prequential by model version (each pair judged under the version that made its recommendation; "
             f"{sum(r.judged for r in by_version.values()):,} pairs):")
        order = version_order(by_version)
        published = [r["version"] for r in rounds if r.get("status") == "published" and isinstance(r.get("version"), int)]
        for line in version_lines(by_version, published, k):
            _say(line)
        if finetuner is not None:
            for line in _finetune_report(ft, rounds, version, versions, added, finetuner):
                _say(line)
        _say(f"latency click produce -> recommendation received: p50 {lat['p50_ms']:.0f} ms, "
             f"p99 {lat['p99_ms']:.0f} ms (-> published by the score worker: p50 {emit['p50_ms']:.0f} ms, "
             f"p99 {emit['p99_ms']:.0f} ms); total wall time {time.time() - t_start:.0f} s")
        summary = {"events_in": replay.sent, "recommendations_out": res["recommendations_out"],
                   "dead_lettered": res["dead_lettered"], f"HR@{k}": round(pq.hr, 4), f"NDCG@{k}": round(pq.ndcg, 4),
                   "judged": pq.judged, "missing": pq.missing, "superseded": n_superseded,
                   "p50_ms": round(lat["p50_ms"], 1), "p99_ms": round(lat["p99_ms"], 1),
                   "model_versions_published": added, "finetune_rounds": ft["finetune_rounds"],
                   "rounds_rejected": ft["rounds_rejected"], "staleness_s": ft["staleness_s"],
                   "by_version": {_version_key(v): _version_metrics(by_version[v]) for v in order},
                   "ops": ops}
        print(json.dumps(summary), flush=True)
        return 0 if len(recs) + res["dead_lettered"] >= replay.sent else 1
    finally:
        signal.signal(signal.SIGTERM, old_term)
