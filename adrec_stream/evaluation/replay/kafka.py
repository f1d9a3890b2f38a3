"""``evaluate-replay --through-kafka``: the model policies' replay through the real pipeline.

For each model policy (``adrec-static``, ``adrec-incremental``, ``sasrec-static``, ``sasrec-incremental``) a
fresh local pipeline runs (:mod:`adrec_stream.stream.local`): the embedded broker, the ingest and score
workers and, for an incremental policy, the fine-tune worker, as separate processes, with the per-partition
sequence stores bootstrapped with the warm-up part and the policy's static model (the same cached checkpoint
the in-process mode uses) published as registry version 1. The replayed clicks are produced to the clicks
topic; the score worker's recommendations are read back from the recommendations topic.

Judging: the list a user was served before click i is the recommendation the score worker emitted after the
user's previous click (that is what a push pipeline has in the output topic when the click happens); it is
requested with ``top_k`` = 20 + ``margin`` items, then the items of the user's whole history are removed when
``--exclude-seen`` is on (the score worker can only exclude its ``window``) and the first 20 are kept. The
target's position gives HR@k / NDCG@k for k = 5, 10, 20 (no ties; beyond the list: a miss). A user's first
replayed click has no recommendation (the warm-up was loaded into the stores, not produced): counted as
``no_recommendation`` and a miss, never dropped. Counter policies (popularity, recent popularity, markov) are
not part of the pipeline and stay in-process.

Cadence (lock-step): the producer sends the clicks in segments that end where the in-process replay runs a
round (:func:`~adrec_stream.evaluation.replay.policies.due_rounds`, with ``finetune.interval_s`` switched off:
the worker's interval is wall-clock time, which a replay does not share); after each segment it waits until
every click of it has its recommendation and, at a round boundary, until the fine-tune worker logged that
round (published, rejected or skipped) and the score worker's registry poll has passed. So the worker trains
on exactly the updates the in-process round saw, and a published version serves from the next segment on.

Agreement (:func:`agreement`): on the clicks judged in both modes (a pipeline recommendation exists and its
list was not cut below 20 items by the exclusion), the relative difference of NDCG@10 and HR@10 between the
modes, the fraction of clicks with the same HR@10 outcome and the mean absolute per-click NDCG@10 difference.
What may differ (docs/replay.md): ADRec's sampling noise
(the score worker's generator is not seeded), the version that served the first click of a user after a swap
(the pipeline's list was made at the user's previous click, possibly by the older version; the in-process mode
judges with the version serving at the click), and the popularity fallback's order among equal counts.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from adrec_stream.errors import AdrecStreamError, ConfigError
from adrec_stream.evaluation.metrics import tie_metrics
from adrec_stream.evaluation.replay.engine import KS, METRICS
from adrec_stream.logging import get_logger

#: the longest cut-off (length of the judged list)
K_MAX = max(KS)
#: default relative tolerance of the agreement with the in-process mode (NDCG@10 and HR@10 on common clicks)
DEFAULT_TOLERANCE = 0.02
#: default minimum fraction of common clicks with the same HR@10 outcome in both modes
DEFAULT_MIN_SAME_HIT = 0.97
#: absolute slack of the agreement, in clicks: |difference| <= tolerance x in-process value + SLACK_CLICKS / clicks
SLACK_CLICKS = 3
#: marker file of a work folder made by this mode (only such folders are wiped)
MARKER = ".adrec-replay-kafka"

log = get_logger("adrec_stream.replay.kafka")


@dataclass
class KafkaRun:
    """What one policy's pipeline run served.

    Attributes:
        policy: the policy name.
        higher: (n,) int64: items ranked above the target in the judged list (``K_MAX`` = not in it: a miss).
        has_rec: (n,) bool: a recommendation existed before the click.
        fallback: (n,) bool: that recommendation was the popularity fallback.
        truncated: (n,) bool: fewer than ``K_MAX`` items were left after the exclusion and the target was not
            among them (its rank is unknown: counted as a miss).
        version: (n,) int64: registry version that made the list (-1: none).
        rounds: the fine-tune worker's ``finetune_round`` records.
        wall_s: seconds from the pipeline's start to its stop; produce_s: seconds spent producing.
        facts: run facts for metrics.json (work folder, top_k asked, dead letters, duplicates, restarts).
    """

    policy: str
    higher: np.ndarray
    has_rec: np.ndarray
    fallback: np.ndarray
    truncated: np.ndarray
    version: np.ndarray
    rounds: list[dict[str, Any]] = field(default_factory=list)
    wall_s: float = 0.0
    produce_s: float = 0.0
    facts: dict[str, Any] = field(default_factory=dict)

    def per_click(self) -> dict[str, np.ndarray]:
        """``{"HR@k": (n,), "NDCG@k": (n,)}`` of the judged lists (no ties)."""
        return tie_metrics(self.higher, np.zeros_like(self.higher))


def segments(n: int, round_after: list[int], chunk: int) -> list[tuple[int, int, bool]]:
    """Lock-step segments ``(start, end, round_due_after)`` covering replay positions ``0 .. n-1``.

    A segment ends after each position in ``round_after`` (a round is due there) and at most ``chunk`` clicks
    after its start (flow control and progress; no round after those).
    """
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    out: list[tuple[int, int, bool]] = []
    start = 0
    due = sorted(set(p for p in round_after if 0 <= p < n))
    for end_incl in [*due, n - 1]:
        end = end_incl + 1
        while end - start > chunk:
            out.append((start, start + chunk, False))
            start += chunk
        if end > start:
            out.append((start, end, end_incl in due))
            start = end
    return out


def pipeline_config(stream_config: str | None, overrides: dict[str, Any], run_dir: Path, *, top_k: int,
                    device: str) -> Any:
    """The stream config of one pipeline run: the replay's stream config and ``--set`` overrides, with the
    broker, stores and registry inside ``run_dir``, string item ids (any id of the log is accepted as it was
    read), ``top_k`` list length, a 0.2 s registry poll, and the fine-tune worker on the click-count trigger only
    (``interval_s`` = 1e12) on ``device``.

    Raises:
        ConfigError: the stream config or an override is invalid.
    """
    from adrec_stream.stream.config import load_stream_config  # noqa: PLC0415
    from adrec_stream.stream.local import run_dir_overrides  # noqa: PLC0415

    over = {**overrides, **run_dir_overrides(run_dir), "top_k": top_k, "item_id_type": "str", "registry_poll_s": 0.2,
            "finetune.interval_s": 1e12, "finetune.device": device}
    return load_stream_config(stream_config, over)


def _prepare_run_dir(run_dir: Path) -> None:
    if run_dir.exists() and any(run_dir.iterdir()) and not (run_dir / MARKER).exists():
        raise ConfigError(f"--kafka-work-dir: {run_dir} exists and was not made by evaluate-replay --through-kafka "
                          f"(no {MARKER} file); it is wiped at each start: choose an empty or new folder")
    if run_dir.exists():
        shutil.rmtree(run_dir)
    (run_dir / "logs").mkdir(parents=True)
    (run_dir / MARKER).write_text("made by adrec-stream evaluate-replay --through-kafka; wiped at each start\n")


def run_policy(policy: str, *, warm: list, replay: list, source: str, checkpoint: Path, scfg: Any,
               round_after: list[int], exclude_seen: bool, run_dir: Path, chunk: int = 2000,
               ready_timeout_s: float = 180.0, stall_timeout_s: float = 300.0, progress: bool = True) -> KafkaRun:
    """Replay ``replay`` through a fresh local pipeline serving ``policy`` (module docstring).

    Args:
        policy: a model policy name; ``*-incremental`` also runs the fine-tune worker.
        warm, replay: the warm-up and replayed :class:`~adrec_stream.data.events.Interaction` lists.
        source: the data file's name (event id prefix).
        checkpoint: the static model (published as version 1).
        scfg: :func:`pipeline_config` (its ``run_dir`` must be the one given here; its ``top_k`` is the list
            length asked for: ``K_MAX`` plus room for the items the history exclusion removes).
        round_after: replay positions after which the in-process replay's rounds are due (incremental only).
        exclude_seen: remove the user's whole history from the lists (the score worker excludes its window).
        run_dir: the run's work folder (wiped; logs in ``run_dir/logs``).
        chunk: most clicks per produced segment.
        ready_timeout_s: wait for the workers to join their groups.
        stall_timeout_s: give up when no recommendation or round arrives for this long.
        progress: tqdm progress bar.

    Returns:
        :class:`KafkaRun`.

    Raises:
        AdrecStreamError: a worker exited, the pipeline stalled, or the broker could not start.
        ConfigError: ``run_dir`` holds something this mode did not make.
    """
    from adrec_stream.serving.registry import ModelRegistry  # noqa: PLC0415
    from adrec_stream.stream.local import (  # noqa: PLC0415
        READY_MARKERS,
        WorkerProcess,
        bootstrap_state,
        finetune_rounds,
        start_pipeline_broker,
        wait_ready,
    )
    from adrec_stream.stream.replay import select_clicks  # noqa: PLC0415

    incremental = policy.endswith("-incremental")
    _prepare_run_dir(run_dir)
    t0 = time.perf_counter()
    bootstrap_state(scfg, warm, source)
    clicks = select_clicks([*warm, *replay], source)[len(warm):]
    with ExitStack() as stack:
        cfg_path = run_dir / "stream.yaml"
        scfg, bootstrap = start_pipeline_broker(stack, scfg, cfg_path)
        ModelRegistry(scfg.registry_dir).publish(checkpoint, meta={"source": "evaluate-replay --through-kafka",
                                                                   "policy": policy})
        workers = [WorkerProcess("ingest", cfg_path, run_dir / "logs", []),
                   WorkerProcess("score", cfg_path, run_dir / "logs",
                                 ["--set", f"scoring.seen_items={'exclude' if exclude_seen else 'keep'}",
                                  "--set", "scoring.deduplicate_users=false"])]  # every click gets its own list
        finetuner = None
        if incremental:
            finetuner = WorkerProcess("finetune", cfg_path, run_dir / "logs", ["--device", scfg.finetune.device])
            workers.append(finetuner)
        for w in workers:
            stack.callback(w.stop)
            w.start()
        ready_s = wait_ready(workers, READY_MARKERS, ready_timeout_s)
        log.info("replay_kafka_pipeline_ready", policy=policy, bootstrap=bootstrap, ready_s=round(ready_s, 1),
                 logs=str(run_dir / "logs"))
        segs = segments(len(clicks), round_after if incremental else [], chunk)
        state = asyncio.run(_drive(bootstrap, scfg, clicks, segs, workers, finetuner,
                                   stall_timeout_s=stall_timeout_s, progress=progress, policy=policy))
    rounds = finetune_rounds(finetuner.log_text()) if finetuner is not None else []
    out = judge(replay, clicks, state["recs"], warm, exclude_seen=exclude_seen, policy=policy)
    out.rounds = rounds
    out.wall_s = time.perf_counter() - t0
    out.produce_s = state["produce_s"]
    out.facts = {"work_dir": str(run_dir), "top_k_asked": scfg.top_k, "segments": len(segs),
                 "recommendations_out": state["recommendations_out"], "duplicates": state["duplicates"],
                 "dead_lettered": state["dead_lettered"], "worker_restarts": sum(w.restarts for w in workers),
                 "ready_s": round(ready_s, 2)}
    return out


async def _drive(bootstrap: str, scfg: Any, clicks: list, segs: list[tuple[int, int, bool]], workers: list,
                 finetuner: Any, *, stall_timeout_s: float, progress: bool, policy: str) -> dict[str, Any]:
    """Produce the segments in lock-step and collect the recommendations (see the module docstring)."""
    from tqdm import tqdm  # noqa: PLC0415

    from adrec_stream.stream.local import OutputCollector, finetune_rounds, supervise  # noqa: PLC0415
    from adrec_stream.stream.replay import produce_clicks  # noqa: PLC0415

    produce_s = 0.0
    bar = tqdm(total=len(clicks), unit="click", desc=f"{policy} via kafka", disable=not progress, mininterval=1.0)
    async with OutputCollector(bootstrap, scfg, client_id="adrec-replay-kafka-collector") as out:

        async def collect(until: int) -> None:
            """Read until ``until`` clicks are answered (recommendation or dead letter), or stall."""
            last = time.monotonic()
            while out.answered < until:
                supervise(workers, 0)
                before = len(out.recs)
                if await out.poll():
                    last = time.monotonic()
                    bar.update(len(out.recs) - before)
                elif time.monotonic() - last > stall_timeout_s:
                    raise AdrecStreamError(f"{policy} via kafka: {out.answered:,} of {until:,} clicks answered, "
                                           f"nothing new for {stall_timeout_s:.0f} s; worker logs in "
                                           f"{workers[0].log_path.parent}")

        async def wait_round(count: int) -> dict[str, Any]:
            """Wait until the fine-tune worker logged its ``count``-th round record; return it."""
            last = time.monotonic()
            while True:
                supervise(workers, 0)
                rounds = finetune_rounds(finetuner.log_text())
                if len(rounds) >= count:
                    return rounds[count - 1]
                if time.monotonic() - last > stall_timeout_s:
                    raise AdrecStreamError(f"{policy} via kafka: fine-tune round {count} not logged after "
                                           f"{stall_timeout_s:.0f} s; log {finetuner.log_path}:\n{finetuner.tail()}")
                await asyncio.sleep(0.2)

        try:
            rounds_done = 0
            for start, end, round_due in segs:
                t = time.perf_counter()
                await produce_clicks(bootstrap, scfg.topics.clicks.name, clicks[start:end], rate_per_s=None,
                                     progress=False)
                produce_s += time.perf_counter() - t
                await collect(end)
                if round_due and finetuner is not None:
                    rounds_done += 1
                    rec = await wait_round(rounds_done)
                    log.info("replay_kafka_round", policy=policy, after_pos=end - 1, status=rec.get("status"),
                             reason=rec.get("reason"), version=rec.get("version"))
                    if rec.get("status") == "published":
                        await asyncio.sleep(scfg.registry_poll_s + 0.3)  # the score worker's next batch loads it
        finally:
            bar.close()
    return {"recs": out.recs, "produce_s": produce_s, "recommendations_out": out.recommendations_out,
            "duplicates": out.duplicates, "dead_lettered": out.dead_lettered}


def judge(replay: list, clicks: list, recs: dict[str, dict[str, Any]], warm: list, *, exclude_seen: bool,
          policy: str = "") -> KafkaRun:
    """Judge every replayed click against the list the pipeline emitted after the user's previous click.

    Args:
        replay: the replayed interactions; clicks: their :class:`~adrec_stream.data.events.Interaction` (event
            ids); recs: event id -> the recommendation record read from the recommendations topic ("items",
            "model_version", "fallback"; :class:`~adrec_stream.stream.local.OutputCollector`).
        warm: the warm-up interactions (the users' histories before the replay, for the exclusion).
        exclude_seen: remove the user's whole history before the click from the list (a click on an item the
            user clicked before is then a miss, as in-process).

    Returns:
        :class:`KafkaRun` without rounds or timings.
    """
    n = len(replay)
    higher = np.full(n, K_MAX, dtype=np.int64)
    has_rec = np.zeros(n, dtype=bool)
    fallback = np.zeros(n, dtype=bool)
    truncated = np.zeros(n, dtype=bool)
    version = np.full(n, -1, dtype=np.int64)
    seen: dict[str, set[str]] = {}
    for x in warm:
        seen.setdefault(x.user_id, set()).add(x.item_id)
    previous: dict[str, str] = {}
    for pos, (x, c) in enumerate(zip(replay, clicks)):
        rec = recs.get(previous.get(x.user_id, ""))
        if rec is not None and rec.get("superseded_by"):
            rec = None  # made after a later click of this user (scored together): not the list after the previous
        if rec is not None:
            has_rec[pos] = True
            fallback[pos] = bool(rec.get("fallback"))
            version[pos] = -1 if rec.get("model_version") is None else int(rec["model_version"])
            mine = seen.get(x.user_id, set())
            items = [str(i) for i in rec.get("items", []) if not (exclude_seen and str(i) in mine)][:K_MAX]
            if x.item_id in items:
                higher[pos] = items.index(x.item_id)
            elif len(items) < K_MAX:
                truncated[pos] = True
        previous[x.user_id] = c.event_id
        seen.setdefault(x.user_id, set()).add(x.item_id)
    return KafkaRun(policy, higher, has_rec, fallback, truncated, version)


def inprocess_versions(facts: dict[str, Any], n: int) -> np.ndarray:
    """(n,) version (1 = static, then 2, 3, ..., as the registry numbers them) that served each click in-process,
    from the policy's ``versions`` facts (``swap_pos``); all 1 for a static policy."""
    out = np.ones(n, dtype=np.int64)
    for v in sorted(facts.get("versions", []), key=lambda r: r["swap_pos"]):
        if v["version"] > 1 and v.get("swap_pos") is not None and v["swap_pos"] < n:
            out[v["swap_pos"]:] = v["version"]
    return out


def agreement(run: KafkaRun, inproc: dict[str, np.ndarray], inproc_version: np.ndarray, *,
              tolerance: float = DEFAULT_TOLERANCE, min_same_hit: float = DEFAULT_MIN_SAME_HIT) -> dict[str, Any]:
    """Agreement of a pipeline run with the in-process replay of the same policy (module docstring).

    Args:
        run: the pipeline run.
        inproc: the in-process per-click metrics of the policy (``tie_metrics``).
        inproc_version: (n,) in-process serving version per click (:func:`inprocess_versions`).
        tolerance: largest allowed relative difference of NDCG@10 and HR@10 on the common clicks, plus
            :data:`SLACK_CLICKS` clicks' worth (``SLACK_CLICKS / common clicks``), so that a handful of clicks
            cannot fail a data set where hits are rare.
        min_same_hit: smallest allowed fraction of common clicks with the same HR@10 outcome.

    Returns:
        {"common_clicks", "excluded": {...}, "in_process": {metric: mean}, "kafka": {...}, "rel_diff":
        {"NDCG@10", "HR@10"}, "same_hit10": fraction, "mean_abs_ndcg10_diff", "same_version_clicks",
        "same_version": {"clicks", "rel_diff_NDCG@10", "same_hit10"}, "tolerance", "min_same_hit", "passed"}.
    """
    kafka = run.per_click()
    common = run.has_rec & ~run.truncated
    # both number the static model v1 and each published round's model the next version
    same_v = common & (run.version == inproc_version)
    out: dict[str, Any] = {"common_clicks": int(common.sum()),
                           "excluded": {"no_recommendation": int((~run.has_rec).sum()),
                                        "truncated_list": int((run.has_rec & run.truncated).sum())},
                           "in_process": {}, "kafka": {}, "rel_diff": {}}
    for m in METRICS:
        out["in_process"][m] = _mean(inproc[m][common])
        out["kafka"][m] = _mean(kafka[m][common])
    for m in ("NDCG@10", "HR@10"):
        out["rel_diff"][m] = _rel(out["kafka"][m], out["in_process"][m])
    hit_k, hit_i = kafka["HR@10"][common] > 0.5, inproc["HR@10"][common] > 0.5
    out["same_hit10"] = float(np.mean(hit_k == hit_i)) if common.any() else None
    out["mean_abs_ndcg10_diff"] = _mean(np.abs(kafka["NDCG@10"][common] - inproc["NDCG@10"][common]))
    sv_k, sv_i = kafka["HR@10"][same_v] > 0.5, inproc["HR@10"][same_v] > 0.5
    out["same_version"] = {"clicks": int(same_v.sum()),
                           "rel_diff_NDCG@10": _rel(_mean(kafka["NDCG@10"][same_v]), _mean(inproc["NDCG@10"][same_v])),
                           "same_hit10": float(np.mean(sv_k == sv_i)) if same_v.any() else None}
    n_common = int(common.sum())
    slack = SLACK_CLICKS / n_common if n_common else 0.0
    ok = n_common > 0 and out["same_hit10"] >= min_same_hit
    for m in ("NDCG@10", "HR@10"):
        base, new = out["in_process"][m], out["kafka"][m]
        ok = ok and base is not None and new is not None and abs(new - base) <= tolerance * abs(base) + slack
    out.update(tolerance=tolerance, slack=slack, min_same_hit=min_same_hit, passed=bool(ok))
    return out


def summary(run: KafkaRun) -> dict[str, Any]:
    """Overall metrics of a pipeline run over ALL replayed clicks (no recommendation = a miss) with coverage."""
    v = run.per_click()
    o: dict[str, Any] = {m: _mean(v[m]) for m in METRICS}
    o.update(total=int(run.higher.size), with_recommendation=int(run.has_rec.sum()),
             no_recommendation=int((~run.has_rec).sum()), fallback=int(run.fallback.sum()),
             truncated_list=int(run.truncated.sum()))
    versions = sorted({int(x) for x in run.version[run.has_rec]})
    return {"overall": o, "versions_served": versions, "rounds": run.rounds, "wall_s": round(run.wall_s, 3),
            "produce_s": round(run.produce_s, 3), **run.facts}


def _mean(a: np.ndarray) -> float | None:
    return float(np.mean(a)) if np.size(a) else None


def _rel(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return (a - b) / b
