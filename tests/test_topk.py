"""drafters/topk.py: the fast top-k of each row against torch.topk."""

from __future__ import annotations

import pytest
import torch

from quickdraft.drafters.topk import GROUP, topk_reference, topk_rows


def check(logits: torch.Tensor, k: int) -> None:
    values, indices = topk_rows(logits, k)
    ref_values, _ = topk_reference(logits, k)
    assert values.dtype == logits.dtype and indices.dtype == torch.long
    assert torch.equal(values, ref_values)  # exactly torch.topk's values, sorted
    assert torch.equal(logits.gather(1, indices), values)  # the indices hold them
    for row in indices.tolist():
        assert len(set(row)) == k  # distinct columns


@pytest.mark.parametrize("vocab", [96, 151936, 49152 + 7, GROUP * 8])
@pytest.mark.parametrize("rows", [1, 6, 13])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_same_values_as_torch_topk(vocab, rows, dtype):
    g = torch.Generator().manual_seed(vocab + rows)
    logits = (torch.randn(rows, vocab, generator=g) * 4).to(dtype)  # bf16: many exact ties
    for k in (1, 8):
        check(logits, k)


def test_the_top_entries_all_in_one_group_and_in_the_leftover_columns():
    vocab = GROUP * 50 + 5
    c = vocab // GROUP
    logits = torch.zeros(3, vocab)
    logits[0, [2 + i * c for i in range(8)]] = torch.arange(1.0, 9.0)  # row 0: all in group 2
    logits[1, -5:] = 7.0  # row 1: the best five in the columns past the last full group, tied
    logits[1, 4] = 6.0
    logits[2] = -float("inf")  # row 2: nothing but -inf, and one finite entry
    logits[2, 77] = 0.0
    check(logits, 8)
    assert topk_rows(logits, 8)[1][0].tolist() == [2 + i * c for i in range(7, -1, -1)]


def test_falls_back_where_the_groups_cannot_hold_k():
    logits = torch.randn(2, 40)  # one group of 32 columns and 8 left over: k = 8 > 1 group
    check(logits, 8)
    check(torch.randn(GROUP * 16, 4).t(), 5)  # a row's columns not contiguous (stride 4)
