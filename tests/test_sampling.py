"""sampling.py: logits processing (temperature, top-k, top-p), sampling, greedy, parameter checks."""

from __future__ import annotations

import math

import pytest
import torch

from quickdraft.errors import QuickdraftError
from quickdraft.sampling import check_params, greedy, probs, probs_reference, sample, sample_reference
from quickdraft.types import SamplingParams

from stats_helpers import chi2_pvalue


LN2, LN4 = math.log(2), math.log(4)
BASE = [0.0, LN2, LN4]  # probabilities 1/7, 2/7, 4/7 at temperature 1

# (name, logits, params, expected probabilities)
CASES = [
    ("temperature 1", BASE, SamplingParams(temperature=1.0), [1 / 7, 2 / 7, 4 / 7]),
    ("temperature 0.5 squares", BASE, SamplingParams(temperature=0.5), [1 / 21, 4 / 21, 16 / 21]),
    ("temperature 2 square roots", [0.0, LN4, 2 * LN4], SamplingParams(temperature=2.0), [1 / 7, 2 / 7, 4 / 7]),
    ("temperature 0 is argmax", BASE, SamplingParams(temperature=0.0), [0, 0, 1]),
    ("top_k 2", BASE, SamplingParams(temperature=1.0, top_k=2), [0, 1 / 3, 2 / 3]),
    ("top_k 1", BASE, SamplingParams(temperature=1.0, top_k=1), [0, 0, 1]),
    ("top_k >= V is off", BASE, SamplingParams(temperature=1.0, top_k=3), [1 / 7, 2 / 7, 4 / 7]),
    ("top_k 0 is off", BASE, SamplingParams(temperature=1.0, top_k=0), [1 / 7, 2 / 7, 4 / 7]),
    ("top_p 0.5: top token alone reaches it", BASE, SamplingParams(temperature=1.0, top_p=0.5), [0, 0, 1]),
    ("top_p 0.6: needs two tokens", BASE, SamplingParams(temperature=1.0, top_p=0.6), [0, 1 / 3, 2 / 3]),
    ("top_p 0.99: needs all", BASE, SamplingParams(temperature=1.0, top_p=0.99), [1 / 7, 2 / 7, 4 / 7]),
    ("top_p tiny keeps the top token", BASE, SamplingParams(temperature=1.0, top_p=1e-6), [0, 0, 1]),
    ("top_p after top_k renormalises", BASE, SamplingParams(temperature=1.0, top_k=2, top_p=0.6), [0, 0, 1]),
    ("top_k keeps ties", [1.0, 1.0, 0.0], SamplingParams(temperature=1.0, top_k=1), [0.5, 0.5, 0]),
    ("top_p keeps ties", [1.0, 1.0, 0.0], SamplingParams(temperature=1.0, top_p=0.3), [0.5, 0.5, 0]),
    ("temperature then top_p", BASE, SamplingParams(temperature=0.5, top_p=0.7), [0, 0, 1]),
    ("order does not matter", [LN4, 0.0, LN2], SamplingParams(temperature=1.0, top_k=2), [2 / 3, 0, 1 / 3]),
]


@pytest.mark.parametrize("name,logits,params,expected", CASES, ids=[c[0] for c in CASES])
def test_probs_table(name, logits, params, expected):
    x = torch.tensor(logits, dtype=torch.float64)
    fast = probs(x, params)
    assert fast.dtype == torch.float32
    torch.testing.assert_close(fast.double(), torch.tensor(expected, dtype=torch.float64), atol=1e-6, rtol=0)
    ref = probs_reference(x, params)
    torch.testing.assert_close(ref, torch.tensor(expected, dtype=torch.float64), atol=1e-12, rtol=0)


PARAMS = [
    SamplingParams(temperature=1.0),
    SamplingParams(temperature=0.7, top_k=5),
    SamplingParams(temperature=1.3, top_p=0.8),
    SamplingParams(temperature=0.6, top_k=300, top_p=0.95),
    SamplingParams(temperature=2.0, top_p=0.999),  # flat: the nucleus is past the top 256, full sort
    SamplingParams(temperature=0.0, top_k=3),
]


@pytest.mark.parametrize("params", PARAMS, ids=range(len(PARAMS)))
def test_probs_matches_reference_and_sums_to_one(params):
    g = torch.Generator().manual_seed(1)
    for scale, V in [(1.0, 7), (4.0, 1000), (0.5, 1000)]:
        logits = torch.randn(2, 3, V, generator=g) * scale  # [2, 3, V]
        fast = probs(logits, params)
        assert fast.shape == (2, 3, V)
        assert bool((fast >= 0).all())
        torch.testing.assert_close(fast.sum(-1), torch.ones(2, 3), atol=1e-5, rtol=0)
        ref = probs_reference(logits, params)
        torch.testing.assert_close(fast.double(), ref, atol=2e-6, rtol=0)
        assert bool(((fast > 0) == (ref > 0)).all())  # the same kept set


def test_probs_takes_half_precision_and_one_row():
    logits = torch.randn(50, generator=torch.Generator().manual_seed(2))
    params = SamplingParams(temperature=0.8, top_p=0.9)
    out = probs(logits.bfloat16(), params)
    assert out.dtype == torch.float32 and out.shape == (50,)
    torch.testing.assert_close(out, probs(logits.bfloat16().float(), params))


def test_small_temperature_approaches_argmax():
    logits = torch.tensor([0.3, 1.2, 1.19, -2.0])
    for t, floor in [(0.1, 0.5), (0.01, 0.7), (1e-3, 0.9999), (1e-4, 1 - 1e-7)]:
        p = probs(logits, SamplingParams(temperature=t))
        assert int(p.argmax()) == 1 and float(p[1]) > floor
    assert probs(logits, SamplingParams(temperature=0.0)).tolist() == [0, 1, 0, 0]


@pytest.mark.parametrize("fields,word", [
    (dict(temperature=-0.1), "temperature"),
    (dict(temperature=float("nan")), "temperature"),
    (dict(temperature=float("inf")), "temperature"),
    (dict(top_p=0.0), "top_p"),
    (dict(top_p=1.5), "top_p"),
    (dict(top_p=-0.2), "top_p"),
    (dict(top_k=-1), "top_k"),
    (dict(max_new_tokens=0), "max_new_tokens"),
    (dict(max_new_tokens=-5), "max_new_tokens"),
])
def test_check_params_rejects(fields, word):
    with pytest.raises(QuickdraftError) as err:
        check_params(SamplingParams(**fields))
    msg = str(err.value)
    assert word in msg and "\n" not in msg
    assert "use" in msg or "e.g." in msg  # says how to fix it


@pytest.mark.parametrize("fields", [
    dict(), dict(temperature=0.7, top_k=40, top_p=0.95), dict(top_p=1.0, top_k=0, max_new_tokens=1),
    dict(temperature=1e-4, top_p=1e-3),
])
def test_check_params_accepts(fields):
    check_params(SamplingParams(**fields))


def test_greedy_first_index_on_ties_and_dtypes():
    assert greedy(torch.tensor([0.0, 3.0, 3.0, 1.0])) == 1
    x = torch.randn(3000, generator=torch.Generator().manual_seed(3))
    want = int(torch.argmax(x))
    assert greedy(x) == greedy(x.double()) == want
    assert greedy(x.bfloat16()) == int(torch.argmax(x.bfloat16()))
    assert greedy(x[::2]) == int(torch.argmax(x[::2]))  # non-contiguous


@pytest.mark.parametrize("sampler", [sample, sample_reference], ids=["fast", "reference"])
def test_sample_distribution_and_support(sampler):
    # Mass in a few tokens spread over blocks, including the first, the last and block edges;
    # V is not a multiple of the block size. Unnormalised on purpose.
    V = 3000
    support = [0, 1023, 1024, 2047, 2999]
    weights = [1.0, 2.0, 3.0, 4.0, 5.0]
    prob = torch.zeros(V)
    prob[support] = torch.tensor(weights)
    g = torch.Generator().manual_seed(4)
    n = 6000 if sampler is sample else 1500
    draws = [sampler(prob, g) for _ in range(n)]
    assert set(draws) <= set(support)
    counts = [draws.count(t) for t in support]
    assert chi2_pvalue(counts, [w / 15 for w in weights]) > 1e-4


def test_sample_is_reproducible_and_point_mass():
    prob = torch.softmax(torch.randn(200, generator=torch.Generator().manual_seed(5)), -1)
    a = [sample(prob, torch.Generator().manual_seed(9)) for _ in range(3)]
    g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    assert [sample(prob, g1) for _ in range(20)] == [sample(prob, g2) for _ in range(20)]
    assert len(set(a)) == 1
    one = torch.zeros(5000)
    one[4999] = 1.0
    assert all(sample(one, g1) == 4999 for _ in range(20))
    one = torch.zeros(5000)
    one[0] = 1e-30  # tiny but positive mass is still the only choice
    assert all(sample(one, g1) == 0 for _ in range(20))


def test_chi2_helper_can_fail():
    assert chi2_pvalue([500, 500], [0.5, 0.5]) > 0.5
    assert chi2_pvalue([600, 400], [0.5, 0.5]) < 1e-4
    assert chi2_pvalue([10, 5, 5], [0.5, 0.0, 0.5]) == 0.0  # an impossible draw


def test_tiny_temperature_does_not_overflow():
    logits = torch.tensor([[1.0, 3.0, 2.0, -1.0]])
    for t in (1e-40, 1e-20, 1e-8):
        p = probs(logits, SamplingParams(temperature=t))
        assert torch.isfinite(p).all() and p[0].tolist() == [0.0, 1.0, 0.0, 0.0]
