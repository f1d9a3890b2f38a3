"""Top-k next-item recommendations from raw-id histories, with hot reload from the model registry.

:class:`Recommender` wraps one loaded checkpoint: it maps raw item ids through the checkpoint vocabulary
(``vocab[i]`` is the raw id of internal index ``i + 1``; index 0 is padding), drops ids the model has
never seen, keeps the last L = ``model.cfg.max_len`` known items, left-pads, scores all items with
``model.score`` in batches (full ranking, ADRec paper Sec. 3.4 inference: the last token is denoised
from noise and compared with every item embedding) and maps the top-k indices back to raw ids. The
padding index is never returned. Users without a usable history get the popularity fallback (items
ranked by ``meta["item_counts"]``, uniform if absent), marked ``fallback=True``.

:class:`ReloadingRecommender` follows a model registry (local folder or fsspec URL): it swaps in a new version
when one is announced (:mod:`adrec_stream.serving.announce`) or when a registry poll finds ``LATEST`` changed, never
going back to an older version except a deliberate rollback; a version that fails to load (``CheckpointError``:
truncated, corrupted, incompatible, wrong checksum) is logged, remembered and skipped while the previous model keeps
serving.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch

from adrec_stream.data.batching import left_pad
from adrec_stream.errors import CheckpointError
from adrec_stream.logging import get_logger
from adrec_stream.model.checkpoint import Checkpoint, load_checkpoint
from adrec_stream.serving.registry import AnyRegistry, FsspecRegistry, ModelRegistry, open_registry
from adrec_stream.state.vocab import Vocabulary

log = get_logger("adrec_stream.serving")


class Recommendation(NamedTuple):
    """Top-k raw item ids (best first) with their scores (finite floats, same length).

    ``fallback`` is True when the list comes from popularity, not from the model (no known item in the
    history, no model loaded, or non-finite model scores). ``model_version`` is the registry version that
    produced it (None outside a registry).
    """

    items: list[str]
    scores: list[float]
    fallback: bool
    model_version: int | None


class Recommender:
    """Serve one checkpoint. Thread-safe for concurrent :meth:`recommend` calls (read-only state).

    Args:
        checkpoint: a loaded :class:`~adrec_stream.model.checkpoint.Checkpoint`.
        version: registry version of the checkpoint (reported in every :class:`Recommendation`).
        batch_size: users per ``model.score`` call.
        max_len: history length L fed to the model (default ``model.cfg.max_len``; must not exceed it).
        deterministic: passed to ``model.score`` (None = the model config's ``deterministic_sampling``).
        steps: reverse diffusion steps at inference, passed to ``model.score`` (None = the model config's
            ``sampling_steps``, i.e. T; fewer steps are faster, see docs/sampling-steps.md). Ignored by SASRec+.

    Raises:
        CheckpointError: the vocabulary has duplicate ids, or ``meta["item_counts"]`` is present but not
            a list of ``n_items + 1`` finite non-negative numbers.
    """

    def __init__(
        self,
        checkpoint: Checkpoint,
        *,
        version: int | None = None,
        batch_size: int = 256,
        max_len: int | None = None,
        deterministic: bool | None = None,
        steps: int | None = None,
    ) -> None:
        self.checkpoint = checkpoint
        self.model = checkpoint.model
        self.model.eval()
        self.version = version
        try:
            self.vocabulary = Vocabulary(checkpoint.vocab)
        except ValueError as err:
            raise CheckpointError(f"{checkpoint.path}: bad vocabulary ({err}); re-save the checkpoint") from None
        self.vocab = self.vocabulary.raw_ids
        self.n_items = len(self.vocab)
        model_len = int(self.model.cfg.max_len)
        self.max_len = model_len if max_len is None else int(max_len)
        if not 1 <= self.max_len <= model_len:
            raise ValueError(f"max_len must be in [1, model max_len={model_len}], got {max_len}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = batch_size
        self.deterministic = deterministic
        if steps is not None and not 1 <= steps <= self.model.cfg.diffusion_steps:
            raise ValueError(f"steps must be in [1, T={self.model.cfg.diffusion_steps}], got {steps}")
        self.steps = steps
        self.device = next(self.model.parameters()).device
        self.popularity = self._popularity(checkpoint)
        # Fallback ranking: most popular first, ties by lower index (stable sort of the negated counts).
        order = torch.argsort(-self.popularity[1:], stable=True) + 1
        self._fallback_order = order.tolist()

    @classmethod
    def from_checkpoint(
        cls, path: str | Path, *, version: int | None = None, device: str = "cpu", **kwargs: Any
    ) -> Recommender:
        """Load a checkpoint file (or folder with ``model.pt``) and wrap it.

        Raises:
            CheckpointError: missing, truncated, corrupted or incompatible checkpoint.
        """
        return cls(load_checkpoint(path, device=device), version=version, **kwargs)

    def _popularity(self, ckpt: Checkpoint) -> torch.Tensor:
        counts = ckpt.meta.get("item_counts") if isinstance(ckpt.meta, dict) else None
        if counts is None:
            return torch.zeros(self.n_items + 1, dtype=torch.float64)
        ok = isinstance(counts, list) and len(counts) == self.n_items + 1
        if ok:
            try:
                t = torch.tensor(counts, dtype=torch.float64)
            except (TypeError, ValueError, RuntimeError):
                ok = False
            else:
                ok = bool(torch.isfinite(t).all()) and bool((t >= 0).all())
        if not ok:
            raise CheckpointError(
                f"{ckpt.path}: meta['item_counts'] must be a list of {self.n_items + 1} finite non-negative numbers "
                "(entry i = interactions with item index i, entry 0 = padding); re-save the checkpoint"
            )
        t[0] = 0.0
        return t

    # ------------------------------------------------------------------ mapping
    def to_indices(self, history: Sequence[str]) -> list[int]:
        """Internal indices of the known raw ids of ``history`` (unknown ones dropped), last ``max_len`` kept."""
        return self.vocabulary.encode(history)[-self.max_len :]

    def fallback(self, k: int, exclude: Sequence[int] = ()) -> Recommendation:
        """The popularity list: top-``k`` by ``meta["item_counts"]`` (uniform -> lowest indices first).

        Scores are the counts (finite); ``exclude`` lists internal indices to leave out.
        """
        k = max(0, min(k, self.n_items))
        skip = set(exclude)
        items: list[str] = []
        scores: list[float] = []
        for idx in self._fallback_order:
            if len(items) >= k:
                break
            if idx in skip:
                continue
            items.append(self.vocab[idx - 1])
            scores.append(float(self.popularity[idx]))
        return Recommendation(items, scores, True, self.version)

    # ------------------------------------------------------------------ scoring
    def recommend(
        self, histories: Sequence[Sequence[str]], k: int = 10, *, exclude_history: bool = False,
        exclude_last: int = 0,
    ) -> list[Recommendation]:
        """Top-``k`` recommendations for each history.

        Args:
            histories: per user, raw item ids oldest first (any length; only the last ``max_len`` known
                items are used).
            k: list length (clamped to the number of items; with ``exclude_history`` it can be shorter).
            exclude_history: leave out every known item of the history (also those older than the last
                ``max_len`` that the model sees).
            exclude_last: without ``exclude_history``: leave out the known items among the last
                ``exclude_last`` of each history (0 = keep everything).

        Returns:
            One :class:`Recommendation` per history, in order. Never contains the padding index, never a
            non-finite score; a row whose model scores are non-finite falls back to popularity (logged).
        """
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        k_eff = min(k, self.n_items)
        full = [self.vocabulary.encode(h) for h in histories]
        mapped = [f[-self.max_len :] for f in full]
        if exclude_history:
            seen = [sorted(set(f)) for f in full]
        elif exclude_last > 0:
            seen = [sorted(set(f[-exclude_last:])) for f in full]
        else:
            seen = None
        out: list[Recommendation | None] = [None] * len(mapped)
        rows = [i for i, m in enumerate(mapped) if m]
        for i, m in enumerate(mapped):
            if not m:
                out[i] = self.fallback(k_eff)
        for start in range(0, len(rows), self.batch_size):
            chunk = rows[start : start + self.batch_size]
            self._score_chunk(chunk, mapped, k_eff, seen, out)
        return [r for r in out if r is not None]

    @torch.inference_mode()
    def _score_chunk(
        self,
        chunk: list[int],
        mapped: list[list[int]],
        k: int,
        seen: list[list[int]] | None,
        out: list[Recommendation | None],
    ) -> None:
        hist = left_pad([mapped[i] for i in chunk])
        scores = self.model.score(hist.to(self.device), steps=self.steps,
                                  deterministic=self.deterministic).float().cpu()
        if scores.shape != (len(chunk), self.n_items + 1):
            raise RuntimeError(
                f"model.score returned shape {tuple(scores.shape)}, expected ({len(chunk)}, {self.n_items + 1})"
            )
        scores[:, 0] = float("-inf")
        if seen is not None:
            for row, i in enumerate(chunk):
                scores[row, seen[i]] = float("-inf")
        top_vals, top_idx = torch.topk(scores, k, dim=1)
        for row, i in enumerate(chunk):
            excluded = seen[i] if seen is not None else []
            keep = min(k, self.n_items - len(excluded))
            vals = top_vals[row, :keep]
            idx = top_idx[row, :keep]
            if not bool(torch.isfinite(vals).all()):
                log.warning("non_finite_scores", model_version=self.version, history_len=len(mapped[i]))
                out[i] = self.fallback(keep, exclude=excluded)
                continue
            out[i] = Recommendation(
                [self.vocab[j - 1] for j in idx.tolist()], vals.tolist(), False, self.version
            )


class ReloadingRecommender:
    """A :class:`Recommender` that follows a model registry (:class:`ModelRegistry` or
    :class:`~adrec_stream.serving.registry.FsspecRegistry`).

    Two ways bring a new version in: an announcement (:meth:`announce`, called by the score worker's
    :class:`~adrec_stream.serving.announce.VersionFollower` for every record of the model-versions topic) and the
    registry poll: every :meth:`recommend` call checks the registry's current version at most once per ``poll_s``
    seconds (``poll=False`` switches polling off; :meth:`check` still works). A version is loaded from the
    registry (a URL registry downloads and checks it first) and swapped in; one that fails to load
    (``CheckpointError``) is logged as an error, remembered (not retried unless its file / checksum changes) and
    the previous version keeps serving. The serving version never goes down, except to the version that the
    registry's ``LATEST`` names as a deliberate rollback. Before any version loads, every user gets an empty
    ``fallback=True`` recommendation (there is no vocabulary).

    Args:
        registry: the registry (or its folder / URL, :func:`~adrec_stream.serving.registry.open_registry`).
        poll_s: minimum seconds between registry checks (0 = every call).
        poll: check the registry on :meth:`recommend` / :meth:`maybe_reload` at all.
        device: where to load models.
        **recommender_kwargs: passed to :class:`Recommender` (batch_size, max_len, deterministic, steps).
    """

    #: seconds between retries of an announced version that the registry does not show yet
    PENDING_RETRY_S = 1.0

    def __init__(
        self,
        registry: AnyRegistry | str | Path,
        poll_s: float = 5.0,
        *,
        poll: bool = True,
        device: str = "cpu",
        **recommender_kwargs: Any,
    ) -> None:
        self.registry = registry if isinstance(registry, ModelRegistry | FsspecRegistry) else open_registry(registry)
        self.poll_s = float(poll_s)
        self.poll = poll
        self.device = device
        self._kwargs = recommender_kwargs
        self._current: Recommender | None = None
        self._refused: dict[int, Any] = {}
        self._reload_lock = threading.RLock()
        self._last_poll = float("-inf")
        self._warned_empty = False
        self._warned_older: set[int] = set()
        self._pending: tuple[int, str | None] | None = None  # announced, not visible in the registry yet
        self._last_pending_try = float("-inf")
        self.reloads = 0
        self.refusals = 0
        self.check()

    @property
    def current(self) -> Recommender | None:
        """The recommender serving now (None before the first successful load)."""
        return self._current

    @property
    def version(self) -> int | None:
        """Registry version serving now, or None."""
        cur = self._current
        return cur.version if cur is not None else None

    def _older(self, version: int) -> bool:
        """True (logged once per version) when ``version`` is below the serving one and is not a rollback."""
        serving = self.version
        if serving is None or version >= serving or self.registry.is_rollback(version):
            return False
        if version not in self._warned_older:
            self._warned_older.add(version)
            log.warning("older_model_version_ignored", version=version, serving_version=serving,
                        hint="score workers never go back unless LATEST names the version as a rollback "
                             "(adrec-stream model rollback)")
        return True

    def _load(self, version: int, *, via: str) -> bool:
        """Load ``version`` from the registry and swap it in (caller holds the lock). True if swapped in."""
        stamp = self.registry.stamp(version)  # a refused version is retried only when its stored bytes change
        if self._refused.get(version) == stamp:
            return False
        try:
            path = self.registry.fetch(version)
            rec = Recommender.from_checkpoint(path, version=version, device=self.device, **self._kwargs)
        except CheckpointError as err:
            self._refused[version] = stamp
            self.refusals += 1
            log.error("model_version_refused", version=version, path=str(self.registry.root), error=str(err),
                      serving_version=self.version, via=via)
            return False
        previous = self.version
        self._current = rec
        self.reloads += 1
        if self._pending is not None and self._pending[0] <= version:
            self._pending = None
        log.info("model_version_loaded", version=version, previous_version=previous, path=str(path),
                 n_items=rec.n_items, via=via)
        return True

    def check(self) -> bool:
        """Check the registry now; load and swap in a changed version. True if a new version was swapped in."""
        with self._reload_lock:
            self._last_poll = time.monotonic()
            version = self.registry.current_version()
            if version is None:
                if not self._warned_empty:
                    self._warned_empty = True
                    log.warning("no_model_in_registry", registry=str(self.registry.root),
                                action="every user gets an empty fallback recommendation until a version appears",
                                hint="adrec-stream model publish CHECKPOINT (e.g. the --output of adrec-stream train)")
                return False
            if version == self.version or self._older(version):
                return False
            if self._load(version, via="registry_poll"):
                return True
            if self._current is None:
                # nothing serving yet and the current version cannot be loaded: the newest loadable older one
                for older in reversed([v for v in self.registry.versions() if v < version]):
                    if self._load(older, via="registry_poll"):
                        return True
            return False

    def announce(self, version: int, *, sha256: str | None = None, registry_url: str | None = None,
                 rollback: bool = False) -> bool:
        """An announcement says ``version`` was published (or, ``rollback``, that ``LATEST`` moved back to it):
        load it now from this recommender's registry. True if it was swapped in.

        Ignored when it is the serving version, older (unless the registry's ``LATEST`` names it as a rollback) or
        its ``sha256`` differs from the registry's manifest (logged as an error). A version the registry does not
        show yet is retried by :meth:`maybe_reload` every :data:`PENDING_RETRY_S` seconds until it does.
        ``registry_url`` is only compared with this recommender's registry for the log (a host may mount a shared
        file system elsewhere; the checksum decides).
        """
        with self._reload_lock:
            if version == self.version or self._older(version):
                return False
            if registry_url is not None and registry_url != self.registry.url:
                log.info("announcement_from_other_registry_url", version=version, announced=registry_url,
                         registry=self.registry.url, action="loading it from this worker's registry if the checksum "
                                                            "matches")
            info = self.registry.info(version)
            if info is None:
                if self._pending is None or self._pending[0] < version:
                    self._pending = (version, sha256)
                    log.info("announced_model_version_not_in_registry_yet", version=version,
                             registry=str(self.registry.root), retry_s=self.PENDING_RETRY_S)
                self._last_pending_try = time.monotonic()
                return False
            if sha256 is not None and info.get("sha256") != sha256:
                if self._refused.get(version) != ("announced", sha256):
                    self._refused[version] = ("announced", sha256)
                    self.refusals += 1
                    log.error("model_version_refused", version=version, path=str(self.registry.root), via="announcement",
                              error=f"announced sha256 {sha256[:16]}... differs from the registry manifest's "
                                    f"{str(info.get('sha256'))[:16]}...", serving_version=self.version)
                return False
            return self._load(version, via="announcement")

    def maybe_reload(self) -> bool:
        """Retry an announced version not yet visible (every :data:`PENDING_RETRY_S` s); then, with ``poll``,
        :meth:`check` if at least ``poll_s`` seconds passed since the last check."""
        pending = self._pending
        now = time.monotonic()
        if pending is not None and now - self._last_pending_try >= self.PENDING_RETRY_S:
            if self.announce(pending[0], sha256=pending[1]):
                return True
        if self.poll and now - self._last_poll >= self.poll_s:
            return self.check()
        return False

    def recommend(
        self, histories: Sequence[Sequence[str]], k: int = 10, *, exclude_history: bool = False,
        exclude_last: int = 0,
    ) -> list[Recommendation]:
        """Like :meth:`Recommender.recommend`, with the newest loadable registry version."""
        self.maybe_reload()
        cur = self._current
        if cur is None:
            return [Recommendation([], [], True, None) for _ in histories]
        return cur.recommend(histories, k, exclude_history=exclude_history, exclude_last=exclude_last)
