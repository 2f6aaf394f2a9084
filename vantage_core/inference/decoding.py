"""Greedy search, beam search and sampling on the model's key/value caches.

Every mode prefills the prompt once, then feeds one token per step. The schema encoder's
:class:`~vantage_core.model.schema.Memory` is computed once per request by the caller and handed
to every call (its cross-attention K/V are the model's business, cached with the rest; pointer
and copy heads read it at each step). A logits processor (a decoding constraint) may mask
the next-token logits of each row given the tokens that row has generated.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Callable, Sequence

import mlx.core as mx
import numpy as np

from vantage_core.config import DECODING_MODES, DecodingMode
from vantage_core.model.schema import Memory

LogitsProcessor = Callable[[Sequence[Sequence[int]], mx.array], mx.array]


@dataclass(frozen=True)
class Search:
    """How to search for candidates (the decoding fields of ``inference`` in a config)."""

    mode: DecodingMode = "greedy"
    beam_size: int = 4  # beams kept; in sample mode, the samples drawn
    max_new_tokens: int = 160
    temperature: float = 1.0  # sample mode
    top_p: float = 1.0  # sample mode: draw from the smallest set of tokens this probable
    seed: int = 0  # sample mode: the first sample's seed (the next ones count up)
    length_penalty: float = 1.0  # beam ranking: log-probability / length**penalty


@dataclass
class Hypothesis:
    """One decoded output."""

    tokens: list[int]  # generated ids, EOS excluded
    logprob: float  # sum of the log-probabilities of the generated tokens (EOS included)
    finished: bool  # ended with EOS (False: cut at max_new_tokens)
    # per token: per MoE layer {layer, experts, weights} at the position that predicted it
    routing: list[list[dict]] = field(default_factory=list)

    def score(self, length_penalty: float = 1.0) -> float:
        """Log-probability normalized by length**penalty (beam ranking)."""
        return self.logprob / max(1, len(self.tokens) + self.finished) ** length_penalty


# ---------------------------------------------------------------------------- model plumbing

def _forward(model: Any, tokens: mx.array, memory: Memory, cache: Any) -> tuple[mx.array, Any]:
    """Last-position logits (B, V) and the model's aux for ``tokens`` (B, T)."""
    logits, aux = model(tokens, memory, cache=cache)
    return logits[:, -1, :].astype(mx.float32), aux


def routing_of(aux: Any, batch: int) -> list[list[dict]] | None:
    """Per row: per MoE layer ``{"experts": [...], "weights": [...]}`` of the last position.

    Reads the ``Routing`` objects the model returns in its aux (``aux["routing"]``, a list per
    layer, or a list of them); None where the model reports none.
    """
    layers = None
    if isinstance(aux, dict):
        layers = aux.get("routing") or aux.get("routings")
    elif isinstance(aux, (list, tuple)):
        layers = aux
    if not layers:
        return None
    rows: list[list[dict]] = [[] for _ in range(batch)]
    for layer, r in enumerate(layers):
        if r is None or not hasattr(r, "indices"):
            continue
        idx = np.array(r.indices).reshape(batch, -1, r.indices.shape[-1])[:, -1]  # (B, k)
        w = np.array(r.weights.astype(mx.float32)).reshape(batch, -1, r.weights.shape[-1])[:, -1]
        for b in range(batch):
            rows[b].append({"layer": layer, "experts": idx[b].tolist(),
                            "weights": [round(float(x), 4) for x in w[b]]})
    return rows


def reorder_cache(cache: Any, index: mx.array) -> Any:
    """Select batch rows ``index`` of every array in a cache (a beam's parents).

    Walks lists, tuples, dicts and objects' attributes; arrays are indexed on axis 0 (the batch
    axis of mlx-lm's and Vantage's caches). Works in place on objects, returns the new value.
    """
    if isinstance(cache, mx.array):
        return cache[index] if cache.ndim > 0 else cache
    if isinstance(cache, list):
        for i, c in enumerate(cache):
            cache[i] = reorder_cache(c, index)
        return cache
    if isinstance(cache, tuple):
        return tuple(reorder_cache(c, index) for c in cache)
    if isinstance(cache, dict):
        for k in list(cache):
            cache[k] = reorder_cache(cache[k], index)
        return cache
    if hasattr(cache, "__dict__"):
        for k, v in list(vars(cache).items()):
            if isinstance(v, (mx.array, list, tuple, dict)) or hasattr(v, "__dict__") and not callable(v):
                setattr(cache, k, reorder_cache(v, index))
        return cache
    return cache


def _check(cancel: Any) -> None:
    """Stop between steps when the caller gave up (``cancel``: a ``threading.Event``)."""
    if cancel is not None and cancel.is_set():
        from vantage_core.errors import Cancelled

        raise Cancelled("decoding stopped: the request was cancelled")


def _make_cache(model: Any) -> Any:
    return model.make_cache() if hasattr(model, "make_cache") else None


def _log_softmax(logits: mx.array) -> mx.array:
    return logits - mx.logsumexp(logits, axis=-1, keepdims=True)


# ---------------------------------------------------------------------------- greedy and sampling

def greedy(model: Any, prompt: Sequence[int], *, eos_id: int, search: Search = Search(),
           schema: Memory | None = None, processor: LogitsProcessor | None = None, cancel: Any = None) -> Hypothesis:
    """Decode one output token by token, the most probable token at each step, for at most
    ``search.max_new_tokens``; ``cancel`` (a ``threading.Event``) stops it between steps."""
    return _token_by_token(model, prompt, eos_id, replace(search, temperature=0.0), schema, processor, cancel)


def _token_by_token(model: Any, prompt: Sequence[int], eos_id: int, search: Search, schema: Memory | None,
                    processor: LogitsProcessor | None, cancel: Any) -> Hypothesis:
    """One output, token by token: drawn at ``search.temperature`` from nucleus ``search.top_p``
    (seed ``search.seed``) where the temperature is above 0, else the most probable token."""
    schema = schema or Memory()
    key = mx.random.key(search.seed)
    cache = _make_cache(model)
    tokens: list[int] = []
    routing: list[list[dict]] = []
    logprob, finished = 0.0, False
    logits, aux = _forward(model, mx.array([list(prompt)], dtype=mx.int32), schema, cache)
    for _ in range(search.max_new_tokens):
        _check(cancel)
        r = routing_of(aux, 1)
        if processor is not None:
            logits = processor([tokens], logits)
        logp = _log_softmax(logits)[0]  # (V,)
        if search.temperature > 0:
            key, sub = mx.random.split(key)
            tok = int(_sample_top_p(logp / search.temperature, search.top_p, sub))
        else:
            tok = int(mx.argmax(logp))
        logprob += float(logp[tok])
        if tok == eos_id:
            finished = True
            break
        tokens.append(tok)
        if r is not None:
            routing.append(r[0])
        logits, aux = _forward(model, mx.array([[tok]], dtype=mx.int32), schema, cache)
    return _finalized(Hypothesis(tokens, logprob, finished, routing), processor)


def _finalized(h: Hypothesis, processor: LogitsProcessor | None) -> Hypothesis:
    """Cut an output back to what the constraint accepts as a whole query, where it has a say.

    An output with no valid prefix at all stays as it is, marked unfinished."""
    finalize = getattr(processor, "finalize", None)
    if finalize is None:
        return h
    tokens = finalize(h.tokens)
    if tokens is None:
        return Hypothesis(h.tokens, h.logprob, False, h.routing)
    if tokens == h.tokens:
        return h
    return Hypothesis(tokens, h.logprob, True, h.routing[: len(tokens)])


def _sample_top_p(scaled_logp: mx.array, top_p: float, key: mx.array) -> mx.array:
    """Sample from the smallest set of tokens whose probability reaches ``top_p``."""
    if top_p < 1.0:
        probs = mx.softmax(scaled_logp, axis=-1)
        sorted_p = mx.sort(probs)[::-1]
        n_keep = int(mx.sum((mx.cumsum(sorted_p) - sorted_p) < top_p))  # >= 1: the top token stays
        scaled_logp = mx.where(probs >= sorted_p[n_keep - 1], scaled_logp, -float("inf"))
    return mx.random.categorical(scaled_logp, key=key)


def sample(model: Any, prompt: Sequence[int], *, eos_id: int, search: Search = Search(mode="sample"),
           schema: Memory | None = None, processor: LogitsProcessor | None = None,
           cancel: Any = None) -> list[Hypothesis]:
    """``search.beam_size`` independent samples at ``search.temperature`` from nucleus
    ``search.top_p`` (seeds ``search.seed``, ``search.seed + 1``, ...), most probable first."""
    search = replace(search, temperature=max(float(search.temperature), 1e-4))
    hyps = [_token_by_token(model, prompt, eos_id, replace(search, seed=search.seed + i), schema, processor, cancel)
            for i in range(search.beam_size)]
    return sorted(hyps, key=lambda h: -h.score())


# ---------------------------------------------------------------------------- beam search

def beam_search(model: Any, prompt: Sequence[int], *, eos_id: int, search: Search = Search(mode="beam"),
                schema: Memory | None = None, processor: LogitsProcessor | None = None,
                cancel: Any = None) -> list[Hypothesis]:
    """Keep the ``search.beam_size`` best partial outputs of one prompt; return the finished ones,
    best first (:func:`beam_search_batch` with one request)."""
    return beam_search_batch(model, [prompt], eos_id=eos_id, search=search, memory=schema, processors=[processor],
                             cancel=cancel)[0]


def beam_search_batch(model: Any, prompts: Sequence[Sequence[int]], *, eos_id: int,
                      search: Search = Search(mode="beam"), memory: Memory | None = None,
                      processors: Sequence[LogitsProcessor | None] | None = None,
                      spaces: Sequence[tuple[int, int]] | None = None, cancel: Any = None) -> list[list[Hypothesis]]:
    """Beam search for several requests at once, on one KV cache; per request its candidates,
    best first (each request gets exactly what a search of its own would give).

    Every request keeps its ``search.beam_size`` best partial outputs; all live beams of all
    requests run as one batch, the cache rows reordered to the surviving beams' parents after
    each step. A beam ends at EOS; a request stops when no live beam beats its worst kept
    finished one (scores length-normalized with ``search.length_penalty``). The prompts must have
    equal lengths.

    ``memory``: one row per request. ``spaces``: per request ``(N_i, Q_i)``, its own items and
    question pieces when a pointer model's batch pads them to ``(N, Q)``: hypotheses (and the
    request's processor) use the request's own ids ``V .. V+N_i+Q_i-1``.
    """
    if len({len(p) for p in prompts}) > 1:
        raise ValueError("beam_search_batch: prompts of different lengths; decode them one at a time")
    memory = memory or Memory()
    cache = _make_cache(model)
    logits, aux = _forward(model, mx.array([list(p) for p in prompts], dtype=mx.int32), memory, cache)
    # What the steps after the prefill read of the memory (a model that caches its cross-attention
    # keys/values needs no states gathered for every beam).
    step_memory = model.step_memory(memory) if hasattr(model, "step_memory") else memory
    batch = _BeamBatch(model, eos_id, search, processors if processors is not None else [None] * len(prompts),
                       _request_columns(memory, logits.shape[-1], spaces, len(prompts)), step_memory, cache)
    for step in range(search.max_new_tokens):
        _check(cancel)
        scores = np.array(logits.astype(mx.float32))  # (R, width)
        parents, next_ids = batch.extend(scores, routing_of(aux, batch.n_rows), last=step == search.max_new_tokens - 1)
        if not batch.live:
            break
        logits, aux = _forward(model, mx.array(next_ids, dtype=mx.int32)[:, None], batch.reorder(parents),
                               batch.cache)
    return batch.results()


def _request_columns(memory: Memory, width: int, spaces: Sequence[tuple[int, int]] | None,
                     n_requests: int) -> list[np.ndarray | None]:
    """Per request, its own columns of the batch's output space (its ids -> the batch's), or None
    where every request has them all."""
    if spaces is None:
        return [None] * n_requests
    N = memory.n_items
    V = width - N - (memory.question.shape[1] if memory.question is not None else 0)
    return [np.concatenate([np.arange(V + n), V + N + np.arange(q)]) for n, q in spaces]


class _BeamBatch:
    """A batched beam search between two steps: per request its live beams, its finished
    hypotheses and its rows in the batch, and the KV cache those rows index."""

    def __init__(self, model: Any, eos_id: int, search: Search, processors: Sequence[LogitsProcessor | None],
                 columns: list[np.ndarray | None], step_memory: Memory, cache: Any):
        n = len(processors)
        self.model, self.eos_id, self.search, self.processors = model, eos_id, search, list(processors)
        self.columns, self.step_memory, self.cache = columns, step_memory, cache
        self.beams: list[list[Hypothesis]] = [[Hypothesis([], 0.0, False)] for _ in range(n)]
        self.finished: list[list[Hypothesis]] = [[] for _ in range(n)]
        self.live = list(range(n))  # requests still searching, in row order
        self.rows_of = {i: [i] for i in range(n)}  # request -> its rows in the current batch
        self.n_rows = n
        # A model with its own reorder_cache keeps one memory row (and cross-attention keys/values)
        # per request and reads the beams of a request as one group: every live request then has
        # exactly beam_size rows, padded with copies of a survivor whose outputs are ignored.
        self.grouped = hasattr(model, "reorder_cache")
        self.kv_requests = list(range(n))

    def extend(self, scores: np.ndarray, pending: list | None, last: bool) -> tuple[list[int], list[int]]:
        """Extend each live request's beams by one token (``scores``: the batch's next-token
        logits, ``pending``: its rows' routing); the rows the next step continues and the token
        fed to each."""
        parents: list[int] = []
        next_ids: list[int] = []
        still = []
        for i in self.live:
            chosen = self._extend_request(i, scores, pending, last)
            if chosen is None:
                continue
            still.append(i)
            self.rows_of[i] = list(range(len(parents), len(parents) + len(chosen)))
            if self.grouped:  # pad the group to beam_size rows
                chosen += [chosen[-1]] * (self.search.beam_size - len(chosen))
            for row, tok in chosen:
                parents.append(row)
                next_ids.append(tok)
        self.live = still
        self.n_rows = len(parents)
        return parents, next_ids

    def _extend_request(self, i: int, scores: np.ndarray, pending: list | None,
                        last: bool) -> list[tuple[int, int]] | None:
        """Request ``i``'s next beams; per beam its parent's batch row and the batch's id of its
        token, or None once the request is done."""
        rows, columns, beams, lp = self.rows_of[i], self.columns[i], self.beams[i], self.search.length_penalty
        local = scores[rows] if columns is None else scores[rows][:, columns]
        logp = _request_logp(local, self.processors[i], beams)
        ended, survivors, picks = _best_extensions(beams, logp, [pending[r] for r in rows] if pending else None,
                                                   self.eos_id, self.search.beam_size)
        self.finished[i] = sorted(self.finished[i] + ended, key=lambda h: -h.score(lp))[:self.search.beam_size]
        done = not survivors or last or (
            len(self.finished[i]) >= self.search.beam_size and
            max(h.score(lp) for h in survivors) < self.finished[i][-1].score(lp))
        if survivors and (last or not done):
            self.beams[i] = survivors
        if done:
            return None
        return [(rows[parent], tok if columns is None else int(columns[tok])) for parent, tok in picks]

    def reorder(self, parents: list[int]) -> Memory:
        """Reorder the cache to the rows the next step continues; what that step reads of the memory."""
        index = mx.array(parents, dtype=mx.int32)
        if self.grouped:
            requests = None
            if self.live != self.kv_requests:
                requests = mx.array([self.kv_requests.index(i) for i in self.live], dtype=mx.int32)
                self.kv_requests = list(self.live)
            self.cache = self.model.reorder_cache(self.cache, index, requests)
            return self.step_memory.take(mx.array(self.live, dtype=mx.int32))
        self.cache = reorder_cache(self.cache, index)
        return self.step_memory.take(mx.array([i for i in self.live for _ in self.rows_of[i]], dtype=mx.int32))

    def results(self) -> list[list[Hypothesis]]:
        """Per request, its finished hypotheses, then beams cut at max_new_tokens, best first."""
        out = []
        lp, size = self.search.length_penalty, self.search.beam_size
        for beams, finished, processor in zip(self.beams, self.finished, self.processors):
            unfinished = [b for b in beams if not b.finished and b.tokens and
                          all(b.tokens != f.tokens for f in finished)]
            hyps = finished + sorted(unfinished, key=lambda h: -h.score(lp))
            hyps = [_finalized(h, processor) for h in hyps[:size]]
            out.append(hyps if hyps else [Hypothesis([], 0.0, False)])
        return out


def _request_logp(local: np.ndarray, processor: LogitsProcessor | None, beams: list[Hypothesis]) -> np.ndarray:
    """A request's next-token log-probabilities per beam (its own columns), after its processor."""
    if hasattr(processor, "host_masks"):  # a processor that masks on the host: no round trip
        local = local + processor.host_masks([b.tokens for b in beams], local.shape[-1])
    elif processor is not None:
        local = np.array(processor([b.tokens for b in beams], mx.array(local)))
    return local - _logsumexp(local)


def _best_extensions(beams: list[Hypothesis], logp: np.ndarray, routing: list | None, eos_id: int,
                     beam_size: int) -> tuple[list[Hypothesis], list[Hypothesis], list[tuple[int, int]]]:
    """The best one-token extensions of a request's beams, best first: those that ended (EOS),
    up to ``beam_size`` that go on, and for each of these its (parent beam, token)."""
    totals = logp + np.array([b.logprob for b in beams])[:, None]
    flat = totals.reshape(-1)
    n_take = min(flat.size, 2 * beam_size)
    best = np.argpartition(-flat, n_take - 1)[:n_take]
    best = best[np.argsort(-flat[best], kind="stable")]
    W = logp.shape[1]
    ended, survivors, picks = [], [], []
    for j in best:
        if not np.isfinite(flat[j]):
            break
        parent, tok = divmod(int(j), W)
        src = beams[parent]
        if tok == eos_id:
            ended.append(Hypothesis(list(src.tokens), float(flat[j]), True, list(src.routing)))
        else:
            survivors.append(Hypothesis(src.tokens + [tok], float(flat[j]), False,
                                        src.routing + [routing[parent]] if routing else []))
            picks.append((parent, tok))
        if len(survivors) == beam_size:
            break
    return ended, survivors, picks


def _logsumexp(x: np.ndarray) -> np.ndarray:
    """Row-wise log-sum-exp of (R, W) scores (rows that are all -inf give -inf)."""
    top = np.max(x, axis=-1, keepdims=True)
    safe = np.where(np.isfinite(top), top, 0.0)
    with np.errstate(divide="ignore"):
        return safe + np.log(np.sum(np.exp(x - safe), axis=-1, keepdims=True))


# ---------------------------------------------------------------------------- one entry point

def decode(model: Any, prompt: Sequence[int], *, eos_id: int, search: Search = Search(),
           schema: Memory | None = None, processor: LogitsProcessor | None = None,
           cancel: Any = None) -> list[Hypothesis]:
    """Candidates for one prompt, best first, by ``search.mode``: greedy gives one, beam
    ``search.beam_size``, sample ``search.beam_size`` samples. ``cancel`` (a ``threading.Event``)
    stops decoding between steps with :class:`~vantage_core.errors.Cancelled`."""
    inputs = dict(eos_id=eos_id, search=search, schema=schema, processor=processor, cancel=cancel)
    if search.mode == "greedy":
        return [greedy(model, prompt, **inputs)]
    if search.mode == "beam":
        return beam_search(model, prompt, **inputs)
    if search.mode == "sample":
        return sample(model, prompt, **inputs)
    from vantage_core.errors import ConfigError

    raise ConfigError(f"unknown decoding mode {search.mode!r}; valid: {', '.join(DECODING_MODES)}")
