"""Decoding modes on a toy cached decoder: greedy, beam search, sampling, processors."""

import itertools

import numpy as np
import pytest

from infer_standins import ToyDecoder, sequence_logprob
import mlx.core as mx

from vantage_core.model.schema import Memory
from vantage_core.inference.decoding import Search, beam_search, decode, greedy, reorder_cache, sample

EOS = 1
PROMPT = [2, 5, 7]


@pytest.fixture(scope="module")
def model():
    return ToyDecoder(vocab_size=12, seed=3)


def test_greedy_matches_stepwise_argmax_without_cache(model):
    hyp = greedy(model, PROMPT, eos_id=EOS, search=Search(max_new_tokens=8))
    seq = list(PROMPT)
    for tok in hyp.tokens:
        logits, _ = model(mx.array([seq], dtype=mx.int32))
        assert int(mx.argmax(logits[0, -1])) == tok
        seq.append(tok)
    assert hyp.logprob == pytest.approx(sequence_logprob(model, PROMPT, hyp.tokens, EOS, hyp.finished), abs=1e-4)
    assert len(hyp.routing) == len(hyp.tokens) and hyp.routing[0][0]["experts"]
    for h in beam_search(model, PROMPT, eos_id=EOS, search=Search("beam", beam_size=3, max_new_tokens=6)):
        assert len(h.routing) == len(h.tokens)


def test_beam_scores_are_true_sequence_logprobs(model):
    """If the cache rows were reordered wrongly, the scores would not match a fresh forward."""
    hyps = beam_search(model, PROMPT, eos_id=EOS, search=Search("beam", beam_size=4, max_new_tokens=6))
    assert 1 <= len(hyps) <= 4
    for h in hyps:
        ref = sequence_logprob(model, PROMPT, h.tokens, EOS, h.finished)
        assert h.logprob == pytest.approx(ref, abs=1e-4)
    assert len({tuple(h.tokens) for h in hyps}) == len(hyps)


def test_beam_of_one_is_greedy_and_wide_beam_finds_the_best(model):
    g = greedy(model, PROMPT, eos_id=EOS, search=Search(max_new_tokens=4))
    b1 = beam_search(model, PROMPT, eos_id=EOS, search=Search("beam", beam_size=1, max_new_tokens=4, length_penalty=0.0))
    assert b1[0].tokens == g.tokens
    # Exhaustive search over every finished output of up to 3 tokens (V=12, no EOS inside).
    V, best = 12, -np.inf
    for n in range(0, 4):
        for toks in itertools.product([t for t in range(V) if t != EOS], repeat=n):
            best = max(best, sequence_logprob(model, PROMPT, toks, EOS))
    wide = beam_search(model, PROMPT, eos_id=EOS,
                       search=Search("beam", beam_size=144, max_new_tokens=4, length_penalty=0.0))
    done = [h for h in wide if h.finished and len(h.tokens) <= 3]
    assert max(h.logprob for h in done) == pytest.approx(best, abs=1e-4)


def test_processor_masks_tokens_in_every_mode(model):
    banned = {3, 4, 6}

    def processor(generated, logits):
        mask = np.ones(logits.shape, bool)
        mask[:, list(banned)] = False
        return mx.where(mx.array(mask), logits, -float("inf"))

    for mode in ("greedy", "beam", "sample"):
        for h in decode(model, PROMPT, eos_id=EOS, search=Search(mode, beam_size=3, max_new_tokens=6), processor=processor):
            assert not banned & set(h.tokens), mode


def test_sampling_is_seeded_and_top_p_tiny_is_greedy(model):
    a = sample(model, PROMPT, eos_id=EOS, search=Search("sample", 3, max_new_tokens=6, temperature=1.5, seed=7))
    b = sample(model, PROMPT, eos_id=EOS, search=Search("sample", 3, max_new_tokens=6, temperature=1.5, seed=7))
    assert [h.tokens for h in a] == [h.tokens for h in b]
    g = greedy(model, PROMPT, eos_id=EOS, search=Search(max_new_tokens=6))
    nucleus = sample(model, PROMPT, eos_id=EOS,
                     search=Search("sample", 2, max_new_tokens=6, temperature=1.0, top_p=1e-6, seed=1))
    assert all(h.tokens == g.tokens for h in nucleus)
    for h in a:
        assert h.logprob <= 0


def test_schema_context_is_used_and_repeated_for_beams(model):
    states = mx.random.normal((1, 5, 16))
    ctx = Memory(states, mx.ones((1, 5), dtype=mx.bool_))
    hyps = beam_search(model, PROMPT, eos_id=EOS, search=Search("beam", beam_size=3, max_new_tokens=5), schema=ctx)
    for h in hyps:
        assert h.logprob == pytest.approx(sequence_logprob(model, PROMPT, h.tokens, EOS, h.finished, ctx), abs=1e-4)


def test_reorder_cache_walks_nested_structures():
    class C:
        def __init__(self):
            self.keys = mx.arange(6).reshape(3, 2)
            self.offset = 5
    cache = [C(), {"k": mx.arange(3)}, (mx.arange(3),)]
    out = reorder_cache(cache, mx.array([2, 2, 0]))
    assert out[0].keys.tolist() == [[4, 5], [4, 5], [0, 1]] and out[0].offset == 5
    assert out[1]["k"].tolist() == [2, 2, 0] and out[2][0].tolist() == [2, 2, 0]
