"""verify.py: the greedy walk and the three lossless sampling rules (point mass, SpecInfer, RSD).

The statistical tests are the losslessness guarantee: a tiny vocabulary (V = 6), a fixed target
distribution p(.|context) that depends on the whole context, drafts drawn the way each rule assumes,
and a decoding process that keeps stepping until two tokens are committed. The empirical
distribution of the first token and of the first two tokens must match the exact target
(p(a|root) and p(a|root) p(b|root a)) under a chi-square test, and deliberately wrong setups must fail
the same test, which shows the test has the power to fail.
"""

from __future__ import annotations

import bisect
import itertools
import math
import random
from dataclasses import dataclass
from typing import Callable

import pytest
import torch

from quickdraft.sampling import GumbelNoise, probs, probs_reference
from quickdraft.types import Draft, SamplingParams, Verdict
from quickdraft.verify import Verifier, verify_reference

from stats_helpers import chi2_pvalue, chi2_two_sample_pvalue

VERIFIER = Verifier()
GREEDY = SamplingParams(temperature=0.0)
PASS = 1e-4  # a correct rule must give p-value > PASS; a wrong one must give < PASS


# --- a toy language model: V tokens, contexts up to MAXLEN tokens -------------------------------

V = 6
MAXLEN = 4  # second-step root (1 token) + tree depth (<= 3)
CTX = {c: i for i, c in enumerate(c for L in range(MAXLEN + 1) for c in itertools.product(range(V), repeat=L))}
_gen = torch.Generator().manual_seed(20240601)
TARGET_LOGITS = torch.randn(len(CTX), V, generator=_gen) * 1.3  # [C, V], p depends on the whole context
DRAFT_LOGITS = 0.5 * TARGET_LOGITS + torch.randn(len(CTX), V, generator=_gen)  # [C, V], q != p


def exact_first_two(params: SamplingParams) -> tuple[list[float], list[float]]:
    """Exact target distribution of the first token and of the first two tokens (a*V + b)."""
    first = probs_reference(TARGET_LOGITS[CTX[()]], params).tolist()
    second = probs_reference(TARGET_LOGITS[[CTX[(a,)] for a in range(V)]], params).tolist()  # [V][V]
    return first, [first[a] * second[a][b] for a in range(V) for b in range(V)]


def draw_iid(q: list[float], k: int, rnd: random.Random) -> list[int]:
    cdf = list(itertools.accumulate(q))
    return [min(bisect.bisect_right(cdf, rnd.random() * cdf[-1]), V - 1) for _ in range(k)]


def draw_without_replacement(q: list[float], k: int, rnd: random.Random) -> list[int]:
    """Gumbel-top-k: the top k of log q + Gumbel noise, in order = sequential sampling without
    replacement (only tokens with q > 0 can be drawn)."""
    keys = [(math.log(w) - math.log(-math.log(1.0 - rnd.random())), t) for t, w in enumerate(q) if w > 0]
    keys.sort(reverse=True)
    return [t for _, t in keys[:k]]


@dataclass
class Drafter:
    """Builds each step's draft and the target logits rows it needs.

    mode: "fixed" (a fixed tree, q None), "iid" or "without" (sampled, branching per depth).
    sample_params: processing of the q the drafter samples from; report_params: of the q it hands to
    the verifier (equal unless a test breaks them on purpose). tell_q False drops q (point-mass rule).
    """

    mode: str
    params: SamplingParams
    branching: tuple[int, ...] = ()
    fixed: tuple[tuple[int, ...], tuple[int, ...]] = ((), ())
    replacement_flag: bool | None = None  # what the draft claims; None = the truth
    tell_q: bool = True
    report_params: SamplingParams | None = None

    def __post_init__(self):
        self.q_sampled = probs(DRAFT_LOGITS, self.params).double().tolist()  # [C][V]
        self.q_reported = probs(DRAFT_LOGITS, self.report_params or self.params)  # [C, V]

    def __call__(self, ctx: tuple[int, ...], rnd: random.Random) -> tuple[Draft, list[int]]:
        tokens: list[int] = []
        parents: list[int] = []
        q_rows: list[int] = []
        node_ctx: list[tuple[int, ...]] = []
        if self.mode == "fixed":
            for t, par in zip(*self.fixed):
                tokens.append(t)
                parents.append(par)
                node_ctx.append((ctx if par < 0 else node_ctx[par]) + (t,))
        else:
            draw = draw_iid if self.mode == "iid" else draw_without_replacement
            frontier = [(-1, ctx)]
            for b in self.branching:
                nxt = []
                for node, c in frontier:
                    for t in draw(self.q_sampled[CTX[c]], b, rnd):
                        tokens.append(t)
                        parents.append(node)
                        q_rows.append(CTX[c])
                        node_ctx.append(c + (t,))
                        nxt.append((len(tokens) - 1, c + (t,)))
                frontier = nxt
        q = self.q_reported[q_rows] if (self.mode != "fixed" and self.tell_q) else None
        replacement = self.mode == "iid" if self.replacement_flag is None else self.replacement_flag
        draft = Draft(torch.tensor(tokens, dtype=torch.long), torch.tensor(parents, dtype=torch.long),
                      q, replacement)
        return draft, [CTX[ctx]] + [CTX[c] for c in node_ctx]


def check_verdict(draft: Draft, v: Verdict) -> None:
    tokens, parents = draft.tokens.tolist(), draft.parents.tolist()
    assert len(v.tokens) == len(v.path) + 1
    assert v.tokens[:-1] == [tokens[i] for i in v.path]
    assert all(parents[node] == (v.path[k - 1] if k else -1) for k, node in enumerate(v.path))
    assert 0 <= v.tokens[-1] < V


def run_process(drafter: Drafter, verify: Callable, trials: int, seed: int) -> tuple[list[int], list[int]]:
    """Decode until >= 2 tokens are committed, `trials` times. Counts of the first token and of
    the first two tokens (a*V + b)."""
    rng = torch.Generator().manual_seed(seed)  # the verifier's randomness
    rnd = random.Random(seed)  # the drafter's, independent of it
    first, pair = [0] * V, [0] * (V * V)
    for _ in range(trials):
        seq: list[int] = []
        while len(seq) < 2:
            draft, rows = drafter(tuple(seq), rnd)
            v = verify(draft, TARGET_LOGITS[rows], drafter.params, rng)
            check_verdict(draft, v)
            seq += v.tokens
        first[seq[0]] += 1
        pair[seq[0] * V + seq[1]] += 1
    return first, pair


def fidelity(drafter: Drafter, verify: Callable, trials: int, seed: int = 0) -> tuple[float, float]:
    """p-values of the first token and of the first two tokens against the exact target."""
    first, pair = run_process(drafter, verify, trials, seed)
    exact1, exact2 = exact_first_two(drafter.params)
    return chi2_pvalue(first, exact1), chi2_pvalue(pair, exact2)


# A fixed tree for the point-mass rule: duplicate siblings at the root (nodes 0 and 2 carry 2) and
# under node 0 (nodes 3 and 5 carry 1), a subtree under the duplicate (node 6), depth 3 (node 8).
FIXED_TREE = ((2, 0, 2, 1, 4, 1, 3, 5, 0), (-1, -1, -1, 0, 0, 0, 2, 1, 3))

RULES = {
    "point mass, fixed tree with duplicates": Drafter("fixed", SamplingParams(temperature=1.0), fixed=FIXED_TREE),
    "SpecInfer, iid siblings, top-k/top-p": Drafter(
        "iid", SamplingParams(temperature=0.9, top_k=4, top_p=0.9), branching=(3, 2)),
    "RSD, siblings without replacement": Drafter("without", SamplingParams(temperature=1.0), branching=(3, 2)),
    "RSD with top-p, wide first level": Drafter(
        "without", SamplingParams(temperature=0.8, top_p=0.95), branching=(4, 1)),
    "chain, Leviathan/Chen": Drafter("iid", SamplingParams(temperature=0.7), branching=(1, 1, 1)),
    # Not a mistake: a tree drawn independently of the verifier's randomness is a mixture of fixed
    # trees, so the point-mass rule stays lossless on sampled proposals (it just accepts less).
    "point mass on sampled proposals": Drafter(
        "iid", SamplingParams(temperature=1.0), branching=(3, 2), tell_q=False),
}


@pytest.mark.parametrize("name", list(RULES))
def test_sampling_is_lossless(name):
    p_first, p_pair = fidelity(RULES[name], VERIFIER.verify, trials=12000, seed=1)
    assert p_first > PASS and p_pair > PASS, (p_first, p_pair)


@pytest.mark.parametrize("name", list(RULES))
def test_reference_is_lossless(name):
    p_first, p_pair = fidelity(RULES[name], verify_reference, trials=3000, seed=2)
    assert p_first > PASS and p_pair > PASS, (p_first, p_pair)


WRONG = {
    # RSD draws (no duplicates, later siblings are not q) verified with the SpecInfer rule.
    "SpecInfer rule on draws without replacement": Drafter(
        "without", SamplingParams(temperature=1.0), branching=(5, 1), replacement_flag=True),
    # The drafter sampled from q at temperature 1 but reports q at temperature 0.5 (A.0 violated).
    "q processed differently from what was sampled": Drafter(
        "iid", SamplingParams(temperature=1.0), branching=(2, 2), report_params=SamplingParams(temperature=0.5)),
}


@pytest.mark.parametrize("name", list(WRONG))
def test_wrong_rules_fail_the_same_test(name):
    p_first, p_pair = fidelity(WRONG[name], VERIFIER.verify, trials=6000, seed=3)
    assert min(p_first, p_pair) < PASS, (p_first, p_pair)


def test_wrong_acceptance_probability_fails():
    """The textbook mistake: accept c with probability q(c) instead of min(1, p(c)/q(c))."""

    def wrong(draft, logits, params, rng):
        tokens, parents = draft.tokens.tolist(), draft.parents.tolist()
        path, node = [], -1
        while True:
            p = probs(logits[node + 1], params)
            nxt = None
            for c in (i for i in range(len(tokens)) if parents[i] == node):
                q = draft.q[c]
                if float(torch.rand((), generator=rng)) < float(q[tokens[c]]):
                    nxt = c
                    break
                p = (p - q).clamp(min=0)
                p = p / p.sum()
            if nxt is None:
                return Verdict(path, [tokens[i] for i in path] + [int(torch.multinomial(p, 1, generator=rng))])
            path.append(nxt)
            node = nxt

    drafter = Drafter("iid", SamplingParams(temperature=1.0), branching=(1, 1))
    p_first, p_pair = fidelity(drafter, wrong, trials=4000, seed=4)
    assert min(p_first, p_pair) < PASS, (p_first, p_pair)


def _verdict_counts(verify, draft, logits, params, trials, seed):
    rng = torch.Generator().manual_seed(seed)
    counts: dict = {}
    for _ in range(trials):
        v = verify(draft, logits, params, rng)
        key = (tuple(v.path), v.tokens[-1])
        counts[key] = counts.get(key, 0) + 1
    return counts


@pytest.mark.parametrize("name", ["point mass, fixed tree with duplicates", "SpecInfer, iid siblings, top-k/top-p",
                                  "RSD, siblings without replacement"])
def test_fast_and_reference_verdicts_agree_in_distribution(name):
    """On one fixed draft, the whole verdict (which node path, which final token) has the same
    distribution under the fast verifier and the reference."""
    drafter = RULES[name]
    draft, rows = drafter((), random.Random(5))
    logits = TARGET_LOGITS[rows]
    fast = _verdict_counts(VERIFIER.verify, draft, logits, drafter.params, 3000, 6)
    ref = _verdict_counts(verify_reference, draft, logits, drafter.params, 3000, 7)
    assert chi2_two_sample_pvalue(fast, ref) > PASS


def test_same_seed_same_verdicts():
    for drafter in RULES.values():
        runs = []
        for _ in range(2):
            rng, rnd = torch.Generator().manual_seed(11), random.Random(11)
            out = []
            for _ in range(30):
                draft, rows = drafter((), rnd)
                v = VERIFIER.verify(draft, TARGET_LOGITS[rows], drafter.params, rng)
                out.append((v.path, v.tokens))
            runs.append(out)
        assert runs[0] == runs[1]


def test_uses_only_the_generator_passed_in():
    drafter = RULES["SpecInfer, iid siblings, top-k/top-p"]
    draft, rows = drafter((), random.Random(12))
    state = torch.get_rng_state()
    a = [VERIFIER.verify(draft, TARGET_LOGITS[rows], drafter.params, torch.Generator().manual_seed(1)).tokens
         for _ in range(3)]
    assert torch.equal(state, torch.get_rng_state())
    assert a[0] == a[1] == a[2]


# --- edge cases of the sampling rules ----------------------------------------------------------

def _d(tokens, parents, q=None, replacement=True):
    return Draft(torch.tensor(tokens, dtype=torch.long), torch.tensor(parents, dtype=torch.long), q, replacement)


def test_empty_draft_samples_the_root():
    logits = torch.tensor([[0.0, 2.0, -1.0, 1.0]])
    params = SamplingParams(temperature=1.0)
    rng = torch.Generator().manual_seed(0)
    counts = [0] * 4
    for _ in range(4000):
        v = VERIFIER.verify(Draft.empty(), logits, params, rng)
        assert v.path == [] and len(v.tokens) == 1
        counts[v.tokens[0]] += 1
    assert chi2_pvalue(counts, probs(logits[0], params).tolist()) > PASS
    assert VERIFIER.verify(Draft.empty(), logits, GREEDY, None).tokens == [1]


def test_q_equal_p_accepts_everything():
    logits = torch.randn(4, 5, generator=torch.Generator().manual_seed(0))
    params = SamplingParams(temperature=1.0, top_k=3)
    p = probs(logits, params)
    rng = torch.Generator().manual_seed(1)
    for _ in range(200):
        toks = [int(torch.multinomial(p[i], 1, generator=rng)) for i in range(3)]  # a chain from q = p
        v = VERIFIER.verify(_d(toks, [-1, 0, 1], p[:3]), logits, params, rng)
        assert v.path == [0, 1, 2]


def test_point_mass_on_a_certain_token_is_accepted():
    logits = torch.tensor([[-1e4, 0.0, -1e4], [0.0, 0.0, 0.0]])  # p = one-hot(1) at the root
    rng = torch.Generator().manual_seed(0)
    params = SamplingParams(temperature=1.0)
    for _ in range(100):
        assert VERIFIER.verify(_d([1], [-1]), logits, params, rng).path == [0]
        v = VERIFIER.verify(_d([0, 2], [-1, -1]), torch.stack([logits[0], logits[0], logits[0]]), params, rng)
        assert v.path == [] and v.tokens == [1]  # both rejected, the residual is still one-hot(1)


def test_residual_all_zero_falls_back_to_p():
    """A (buggy) q with q >= p everywhere empties max(0, p - q); the verdict must still be a token
    the target allows, drawn from p."""
    logits = torch.tensor([[0.0, 1.0, -1e4, 0.5]] * 2)  # token 2 is impossible at every node
    params = SamplingParams(temperature=1.0)
    p = probs(logits[0], params)
    q = (p * 1.5 + 0.01).unsqueeze(0)  # [1, V], sums to > 1: every ratio p/q < 1
    rng = torch.Generator().manual_seed(0)
    seen = set()
    for _ in range(300):
        for fn in (VERIFIER.verify, verify_reference):
            v = fn(_d([1], [-1], q), logits, params, rng)
            seen.add(v.tokens[-1])
    assert seen == {0, 1, 3}


def test_child_outside_q_is_never_accepted():
    logits = torch.zeros(3, 4)  # p uniform
    q = torch.tensor([[0.0, 0.5, 0.5, 0.0], [0.0, 0.5, 0.5, 0.0]])
    rng = torch.Generator().manual_seed(0)
    for replacement in (True, False):
        for _ in range(100):
            v = VERIFIER.verify(_d([0, 1], [-1, -1], q, replacement), logits, SamplingParams(temperature=1.0), rng)
            assert v.path in ([], [1])


def test_bad_inputs():
    logits = torch.zeros(2, 4)
    with pytest.raises(ValueError, match="Generator"):
        VERIFIER.verify(_d([1], [-1]), logits, SamplingParams(temperature=1.0), None)
    with pytest.raises(ValueError, match=r"\[n\+1, V\]"):
        VERIFIER.verify(_d([1, 2], [-1, 0]), logits, GREEDY, None)
    with pytest.raises(ValueError, match="parents"):
        VERIFIER.verify(_d([1], [0]), logits, GREEDY, None)
    with pytest.raises(ValueError, match="draft.q"):
        VERIFIER.verify(_d([1], [-1], torch.ones(1, 3)), logits, SamplingParams(temperature=1.0),
                        torch.Generator())


# --- greedy ------------------------------------------------------------------------------------

def _rows(best: list[int], vocab: int = 5) -> torch.Tensor:
    logits = torch.zeros(len(best), vocab)  # [n+1, V]
    logits[torch.arange(len(best)), torch.tensor(best, dtype=torch.long)] = 1.0
    return logits


# (name, tokens, parents, argmax of each row (root, node 0, ...), expected path, expected tokens)
GREEDY_CASES = [
    ("empty draft", [], [], [3], [], [3]),
    ("chain all accepted, bonus", [1, 2, 3], [-1, 0, 1], [1, 2, 3, 4], [0, 1, 2], [1, 2, 3, 4]),
    ("chain rejected at the second", [1, 2, 3], [-1, 0, 1], [1, 4, 3, 0], [0], [1, 4]),
    ("chain rejected at the first", [1, 2, 3], [-1, 0, 1], [0, 2, 3, 4], [], [0]),
    ("tree: second root child, then its child", [1, 2, 3, 4], [-1, -1, 0, 1], [2, 0, 4, 0, 0], [1, 3], [2, 4, 0]),
    ("duplicate siblings: the first wins", [2, 2, 3, 4], [-1, -1, 0, 1], [2, 0, 4, 0, 0], [0], [2, 0]),
    ("a sibling is not a child", [1, 2, 3], [-1, 0, -1], [1, 3, 0, 0], [0], [1, 3]),
    ("a grandchild is not a child", [1, 2], [-1, 0], [2, 2, 0], [], [2]),
    ("deep tree, accepted down to a leaf", [0, 1, 2, 3, 4, 0], [-1, -1, 1, 1, 3, 4],
     [1, 0, 3, 0, 4, 0, 2], [1, 3, 4, 5], [1, 3, 4, 0, 2]),
]


@pytest.mark.parametrize("name,tokens,parents,best,path,out", GREEDY_CASES, ids=[c[0] for c in GREEDY_CASES])
def test_greedy_walk_table(name, tokens, parents, best, path, out):
    draft, logits = _d(tokens, parents), _rows(best)
    for fn in (VERIFIER.verify, verify_reference):
        v = fn(draft, logits, GREEDY, None)
        assert (v.path, v.tokens) == (path, out)
        assert v.accepted == len(path)
    # top-k/top-p do not change greedy decisions
    v = VERIFIER.verify(draft, logits, SamplingParams(temperature=0.0, top_k=2, top_p=0.5), None)
    assert (v.path, v.tokens) == (path, out)


def test_greedy_first_index_on_ties():
    logits = torch.tensor([[0.0, 5.0, 5.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    for fn in (VERIFIER.verify, verify_reference):
        assert fn(_d([2], [-1]), logits, GREEDY, None).tokens == [1]
        assert fn(_d([1], [-1]), logits, GREEDY, None).tokens == [1, 0]


def test_greedy_matches_reference_on_random_trees():
    g = torch.Generator().manual_seed(0)
    for trial in range(400):
        vocab = 3 if trial % 2 else 6  # small vocabularies so drafts often match
        n = int(torch.randint(0, 25, (), generator=g))
        parents = [int(torch.randint(-1, i, (), generator=g)) if i else -1 for i in range(n)]
        tokens = torch.randint(0, vocab, (n,), generator=g)
        logits = torch.randn(n + 1, vocab, generator=g)
        if trial % 3 == 0:
            logits = logits.bfloat16()
        draft = Draft(tokens, torch.tensor(parents, dtype=torch.long))
        a = VERIFIER.verify(draft, logits, GREEDY, None)
        b = verify_reference(draft, logits, GREEDY, None)
        assert (a.path, a.tokens) == (b.path, b.tokens)
        eager = Verifier._greedy(tokens.tolist(), parents, logits, lazy=False)  # the accelerator path
        assert (eager.path, eager.tokens) == (b.path, b.tokens)
        check_verdict(draft, a)


def test_greedy_equals_plain_greedy_decoding():
    """With logits from a context-dependent toy model, every step commits exactly the tokens plain
    argmax decoding produces, whatever the tree."""
    rnd = random.Random(0)
    drafter = Drafter("iid", SamplingParams(temperature=1.0), branching=(3, 2, 1))
    plain, ctx = [], ()
    for _ in range(MAXLEN):
        t = int(TARGET_LOGITS[CTX[ctx]].argmax())
        plain.append(t)
        ctx += (t,)
    for _ in range(200):
        draft, rows = drafter((), rnd)
        v = VERIFIER.verify(draft, TARGET_LOGITS[rows], GREEDY, None)
        assert v.tokens == plain[: len(v.tokens)]


# --- the coupled rule (per-position Gumbel noise), which the decoder uses for deterministic drafts --

def run_coupled(drafter: Drafter, trials: int, seed: int) -> tuple[list[int], list[int], list[tuple]]:
    """Like run_process, with a fresh GumbelNoise per trial (one request = one noise stream)."""
    rng = torch.Generator().manual_seed(seed)
    rnd = random.Random(seed)
    first, pair, seqs = [0] * V, [0] * (V * V), []
    for trial in range(trials):
        noise = GumbelNoise(torch.Generator().manual_seed(seed * 1_000_003 + trial))  # one request's stream
        seq: list[int] = []
        while len(seq) < 2:
            draft, rows = drafter(tuple(seq), rnd)
            v = VERIFIER.verify(draft, TARGET_LOGITS[rows], drafter.params, rng, noise, pos=len(seq))
            check_verdict(draft, v)
            seq += v.tokens
        first[seq[0]] += 1
        pair[seq[0] * V + seq[1]] += 1
        seqs.append(tuple(seq[:2]))
    return first, pair, seqs


@pytest.mark.parametrize("params", [SamplingParams(temperature=1.0), SamplingParams(temperature=0.8, top_k=4, top_p=0.9)])
def test_coupled_rule_is_lossless(params):
    drafter = Drafter("fixed", params, fixed=FIXED_TREE)
    first, pair, _ = run_coupled(drafter, trials=12000, seed=5)
    exact1, exact2 = exact_first_two(params)
    assert chi2_pvalue(first, exact1) > PASS and chi2_pvalue(pair, exact2) > PASS


def test_coupled_rule_commits_the_same_tokens_whatever_the_draft():
    params = SamplingParams(temperature=1.0)
    _, _, with_tree = run_coupled(Drafter("fixed", params, fixed=FIXED_TREE), trials=400, seed=9)
    _, _, plain = run_coupled(Drafter("fixed", params, fixed=((), ())), trials=400, seed=9)
    assert with_tree == plain
    assert len(set(plain)) > 5


def test_coupled_rule_wrong_noise_reuse_fails():
    """Negative control: reusing one position's noise for the next position breaks losslessness."""
    params = SamplingParams(temperature=1.0)
    rng = torch.Generator().manual_seed(3)
    plain = Drafter("fixed", params, fixed=((), ()))
    pair = [0] * (V * V)
    for _ in range(6000):
        noise = GumbelNoise(rng)
        seq: list[int] = []
        while len(seq) < 2:
            draft, rows = plain(tuple(seq), random.Random(0))
            seq += VERIFIER.verify(draft, TARGET_LOGITS[rows], params, rng, noise, pos=0).tokens  # wrong: pos fixed
        pair[seq[0] * V + seq[1]] += 1
    assert chi2_pvalue(pair, exact_first_two(params)[1]) < PASS
