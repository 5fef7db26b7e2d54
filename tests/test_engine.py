"""The engine at the text edge: seeds, sampling through every drafter, streaming, stop strings."""

from __future__ import annotations

import pytest
import torch

from quickdraft import drafters
from quickdraft.engine import Engine
from quickdraft.models import load
from quickdraft.types import SamplingParams


@pytest.fixture(scope="module")
def engine(tiny_folder):
    model, tok, name = load(str(tiny_folder), torch.float32)
    return Engine(model, tok, name)


@pytest.mark.parametrize("method", drafters.names())
def test_same_seed_same_output(engine, method):
    params = SamplingParams(temperature=1.0, top_p=0.9, max_new_tokens=20, seed=11)
    a = engine.generate("w7 w8 w9 w7 w8", method, params).generation.tokens
    b = engine.generate("w7 w8 w9 w7 w8", method, params).generation.tokens
    assert a == b
    others = {tuple(engine.generate("w7 w8 w9 w7 w8", method,
                                    SamplingParams(temperature=1.0, max_new_tokens=20, seed=s)).generation.tokens)
              for s in range(4)}
    assert len(others) > 1, "different seeds should give different samples"


def test_streamed_pieces_make_the_text(engine):
    pieces = []
    reply = engine.generate("w7 w8 w9", "recycling", SamplingParams(max_new_tokens=15), on_text=pieces.append)
    assert "".join(pieces) == reply.text and reply.text


def test_stop_string_cuts_text_and_generation(engine):
    full = engine.generate("w7 w8 w9", "ar", SamplingParams(max_new_tokens=20)).text
    words = full.split()
    assert len(words) > 4
    stop = words[3]
    first = full.index(stop)
    pieces = []
    reply = engine.generate("w7 w8 w9", "pld", SamplingParams(max_new_tokens=20, stop=(stop,)), on_text=pieces.append)
    assert reply.text == full[:first]
    assert "".join(pieces) == reply.text
    assert reply.generation.finish_reason == "stop"
    ids = reply.generation.tokens  # ids end with the token that completes the stop string
    assert stop in engine.tokenizer.decode(ids) and stop not in engine.tokenizer.decode(ids[:-1])


@pytest.mark.parametrize("params", [SamplingParams(temperature=1.0, max_new_tokens=25, seed=3),
                                    SamplingParams(temperature=0.7, top_k=20, top_p=0.9, max_new_tokens=25, seed=4)])
def test_sampled_output_is_the_same_for_every_drafter(engine, params):
    """Per-position Gumbel noise: with the same seed, drafts cannot change the sampled tokens."""
    for prompt in ("w7 w8 w9 w7 w8 w9 w7", "w20 w21"):
        ar = engine.generate(prompt, "ar", params).generation.tokens
        for method in drafters.names():
            for _ in range(2):  # recycling's state differs on the second request
                assert engine.generate(prompt, method, params).generation.tokens == ar
