"""Greedy search, beam search and sampling on the model's key/value caches.

Every mode prefills the prompt once, then feeds one token per step. The schema encoder's
:class:`~vantage_core.model.schema.Memory` is computed once per request by the caller and handed
to every call (its cross-attention K/V are the model's business, cached with the rest; pointer
and copy heads read it at each step). A logits processor (a decoding constraint) may mask
the next-token logits of each row given the tokens that row has generated.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import mlx.core as mx
import numpy as np

from vantage_core.model.schema import Memory

LogitsProcessor = Callable[[Sequence[Sequence[int]], mx.array], mx.array]


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

def greedy(model: Any, prompt: Sequence[int], *, eos_id: int, max_new_tokens: int = 160,
           schema: Memory | None = None, processor: LogitsProcessor | None = None,
           temperature: float = 0.0, top_p: float = 1.0, seed: int | None = None, cancel: Any = None) -> Hypothesis:
    """Decode one output token by token; ``temperature > 0`` samples (nucleus ``top_p``);
    ``cancel`` (a ``threading.Event``) stops it between steps."""
    schema = schema or Memory()
    key = mx.random.key(seed if seed is not None else 0)
    cache = _make_cache(model)
    tokens: list[int] = []
    routing: list[list[dict]] = []
    logprob, finished = 0.0, False
    logits, aux = _forward(model, mx.array([list(prompt)], dtype=mx.int32), schema, cache)
    for _ in range(max_new_tokens):
        _check(cancel)
        r = routing_of(aux, 1)
        if processor is not None:
            logits = processor([tokens], logits)
        logp = _log_softmax(logits)[0]  # (V,)
        if temperature > 0:
            key, sub = mx.random.split(key)
            tok = int(_sample_top_p(logp / temperature, top_p, sub))
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


def sample(model: Any, prompt: Sequence[int], *, eos_id: int, num_samples: int = 1,
           temperature: float = 1.0, top_p: float = 1.0, seed: int = 0, **kwargs: Any) -> list[Hypothesis]:
    """``num_samples`` independent samples (temperature, nucleus), most probable first."""
    temperature = max(float(temperature), 1e-4)
    hyps = [greedy(model, prompt, eos_id=eos_id, temperature=temperature, top_p=top_p,
                   seed=seed + i, **kwargs) for i in range(num_samples)]
    return sorted(hyps, key=lambda h: -h.score())


# ---------------------------------------------------------------------------- beam search

def beam_search(model: Any, prompt: Sequence[int], *, eos_id: int, beam_size: int = 4,
                max_new_tokens: int = 160, schema: Memory | None = None,
                processor: LogitsProcessor | None = None, length_penalty: float = 1.0,
                cancel: Any = None) -> list[Hypothesis]:
    """Keep the ``beam_size`` best partial outputs of one prompt; return the finished ones, best
    first (:func:`beam_search_batch` with one request)."""
    return beam_search_batch(model, [prompt], eos_id=eos_id, beam_size=beam_size, max_new_tokens=max_new_tokens,
                             memory=schema, processors=[processor], length_penalty=length_penalty,
                             cancel=cancel)[0]


def beam_search_batch(model: Any, prompts: Sequence[Sequence[int]], *, eos_id: int, beam_size: int = 4,
                      max_new_tokens: int = 160, memory: Memory | None = None,
                      processors: Sequence[LogitsProcessor | None] | None = None,
                      spaces: Sequence[tuple[int, int]] | None = None, length_penalty: float = 1.0,
                      cancel: Any = None) -> list[list[Hypothesis]]:
    """Beam search for several requests at once, on one KV cache; per request its candidates,
    best first (each request gets exactly what a search of its own would give).

    Every request keeps its ``beam_size`` best partial outputs; all live beams of all requests
    run as one batch, the cache rows reordered to the surviving beams' parents after each step.
    A beam ends at EOS; a request stops when no live beam beats its worst kept finished one
    (scores length-normalized with ``length_penalty``). The prompts must have equal lengths.

    ``memory``: one row per request. ``spaces``: per request ``(N_i, Q_i)``, its own items and
    question pieces when a pointer model's batch pads them to ``(N, Q)``: hypotheses (and the
    request's processor) use the request's own ids ``V .. V+N_i+Q_i-1``.
    """
    B = len(prompts)
    if len({len(p) for p in prompts}) > 1:
        raise ValueError("beam_search_batch: prompts of different lengths; decode them one at a time")
    memory = memory or Memory()
    processors = list(processors) if processors is not None else [None] * B
    cache = _make_cache(model)
    logits, aux = _forward(model, mx.array([list(p) for p in prompts], dtype=mx.int32), memory, cache)
    width = logits.shape[-1]
    N = memory.n_items
    if spaces is None:
        columns = [None] * B
    else:  # a request's own columns of the batch's output space, and its ids -> the batch's
        V = width - N - (memory.question.shape[1] if memory.question is not None else 0)
        columns = [np.concatenate([np.arange(V + n), V + N + np.arange(q)]) for n, q in spaces]
    # What the steps after the prefill read of the memory (a model that caches its cross-attention
    # keys/values needs no states gathered for every beam).
    step_memory = model.step_memory(memory) if hasattr(model, "step_memory") else memory
    beams: list[list[Hypothesis]] = [[Hypothesis([], 0.0, False)] for _ in range(B)]
    finished: list[list[Hypothesis]] = [[] for _ in range(B)]
    live = list(range(B))  # requests still searching, in row order
    rows_of = {i: [i] for i in range(B)}  # request -> its rows in the current batch
    n_rows = B
    # A model with its own reorder_cache keeps one memory row (and cross-attention keys/values)
    # per request and reads the beams of a request as one group: every live request then has
    # exactly beam_size rows, padded with copies of a survivor whose outputs are ignored.
    grouped = hasattr(model, "reorder_cache")
    kv_requests = list(range(B))
    for step in range(max_new_tokens):
        _check(cancel)
        pending = routing_of(aux, n_rows)
        scores = np.array(logits.astype(mx.float32))  # (R, width)
        parents, next_ids, still = [], [], []
        for i in live:
            rows = rows_of[i]
            local = scores[rows] if columns[i] is None else scores[rows][:, columns[i]]
            if hasattr(processors[i], "host_masks"):  # a processor that masks on the host: no round trip
                local = local + processors[i].host_masks([b.tokens for b in beams[i]], local.shape[-1])
            elif processors[i] is not None:
                local = np.array(processors[i]([b.tokens for b in beams[i]], mx.array(local)))
            logp = local - _logsumexp(local)
            totals = logp + np.array([b.logprob for b in beams[i]])[:, None]
            flat = totals.reshape(-1)
            n_take = min(flat.size, 2 * beam_size)
            best = np.argpartition(-flat, n_take - 1)[:n_take]
            best = best[np.argsort(-flat[best], kind="stable")]
            W = logp.shape[1]
            survivors, chosen = [], []
            for j in best:
                if not np.isfinite(flat[j]):
                    break
                parent, tok = divmod(int(j), W)
                src = beams[i][parent]
                if tok == eos_id:
                    finished[i].append(Hypothesis(list(src.tokens), float(flat[j]), True, list(src.routing)))
                else:
                    survivors.append(Hypothesis(src.tokens + [tok], float(flat[j]), False,
                                                src.routing + [pending[rows[parent]]] if pending else []))
                    chosen.append((rows[parent], tok if columns[i] is None else int(columns[i][tok])))
                if len(survivors) == beam_size:
                    break
            finished[i] = sorted(finished[i], key=lambda h: -h.score(length_penalty))[:beam_size]
            done = not survivors or step == max_new_tokens - 1 or (
                len(finished[i]) >= beam_size and
                max(h.score(length_penalty) for h in survivors) < finished[i][-1].score(length_penalty))
            if survivors and (done and step == max_new_tokens - 1 or not done):
                beams[i] = survivors
            if done:
                continue
            still.append(i)
            rows_of[i] = list(range(len(parents), len(parents) + len(chosen)))
            if grouped:  # pad the group to beam_size rows
                chosen += [chosen[-1]] * (beam_size - len(chosen))
            for row, tok in chosen:
                parents.append(row)
                next_ids.append(tok)
        live = still
        if not live:
            break
        n_rows = len(parents)
        index = mx.array(parents, dtype=mx.int32)
        if grouped:
            requests = None
            if live != kv_requests:
                requests = mx.array([kv_requests.index(i) for i in live], dtype=mx.int32)
                kv_requests = list(live)
            cache = model.reorder_cache(cache, index, requests)
            step_rows = step_memory.take(mx.array(live, dtype=mx.int32))
        else:
            cache = reorder_cache(cache, index)
            step_rows = step_memory.take(mx.array([i for i in live for _ in rows_of[i]], dtype=mx.int32))
        logits, aux = _forward(model, mx.array(next_ids, dtype=mx.int32)[:, None], step_rows, cache)
    out = []
    for i in range(B):
        # Beams cut at max_new_tokens still count, after every finished one.
        unfinished = [b for b in beams[i] if not b.finished and b.tokens and
                      all(b.tokens != f.tokens for f in finished[i])]
        hyps = finished[i] + sorted(unfinished, key=lambda h: -h.score(length_penalty))
        hyps = [_finalized(h, processors[i]) for h in hyps[:beam_size]]
        out.append(hyps if hyps else [Hypothesis([], 0.0, False)])
    return out


def _logsumexp(x: np.ndarray) -> np.ndarray:
    """Row-wise log-sum-exp of (R, W) scores (rows that are all -inf give -inf)."""
    top = np.max(x, axis=-1, keepdims=True)
    safe = np.where(np.isfinite(top), top, 0.0)
    with np.errstate(divide="ignore"):
        return safe + np.log(np.sum(np.exp(x - safe), axis=-1, keepdims=True))


# ---------------------------------------------------------------------------- one entry point

def decode(model: Any, prompt: Sequence[int], *, eos_id: int, mode: str = "greedy", beam_size: int = 4,
           temperature: float = 1.0, top_p: float = 1.0, max_new_tokens: int = 160,
           schema: Memory | None = None, processor: LogitsProcessor | None = None,
           seed: int = 0, length_penalty: float = 1.0, cancel: Any = None) -> list[Hypothesis]:
    """Candidates for one prompt, best first: greedy gives one, beam ``beam_size``, sample
    ``beam_size`` samples. ``cancel`` (a ``threading.Event``) stops decoding between steps with
    :class:`~vantage_core.errors.Cancelled`."""
    common = dict(eos_id=eos_id, max_new_tokens=max_new_tokens, schema=schema, processor=processor, cancel=cancel)
    if mode == "greedy":
        return [greedy(model, prompt, **common)]
    if mode == "beam":
        return beam_search(model, prompt, beam_size=beam_size, length_penalty=length_penalty, **common)
    if mode == "sample":
        return sample(model, prompt, num_samples=beam_size, temperature=temperature, top_p=top_p,
                      seed=seed, **common)
    from vantage_core.errors import ConfigError

    raise ConfigError(f"unknown decoding mode {mode!r}; valid: greedy, beam, sample")
