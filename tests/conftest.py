"""Shared fixtures: tiny seeded models built in-process (fp32, no download)."""

from __future__ import annotations

import pytest
import torch
from transformers import (Gemma3ForCausalLM, Gemma3TextConfig, LlamaConfig, LlamaForCausalLM, MistralConfig,
                          MistralForCausalLM, Qwen2Config, Qwen2ForCausalLM)

VOCAB = 96


def tiny_model(kind: str, seed: int = 0, sliding_window: int = 6):
    """A tiny random causal LM in fp32. init std 0.3 gives peaked, repetitive predictions, so
    drafters get accepted often and the tree/commit paths are really exercised."""
    common = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                  initializer_range=0.3, bos_token_id=0, eos_token_id=1, pad_token_id=None)
    torch.manual_seed(seed)
    if kind == "llama":
        model = LlamaForCausalLM(LlamaConfig(**common))
    elif kind == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(**common))
    elif kind == "gemma3":
        cfg = Gemma3TextConfig(**common, head_dim=16, sliding_window=sliding_window,
                               layer_types=["sliding_attention", "sliding_attention", "full_attention"])
        model = Gemma3ForCausalLM(cfg)
    elif kind == "mistral":  # one sliding window on every layer, no layer_types
        model = MistralForCausalLM(MistralConfig(**common, sliding_window=sliding_window))
    else:
        raise ValueError(kind)
    model.config._attn_implementation = "sdpa"
    return model.eval().to(torch.float32)


@pytest.fixture(scope="session", params=["llama", "qwen2", "gemma3"])
def any_model(request):
    return tiny_model(request.param)


@pytest.fixture(scope="session")
def llama():
    return tiny_model("llama")


def make_tokenizer():
    """A word-level tokenizer over VOCAB tokens: 'w0' .. 'wN', with <s>/</s> and a chat template."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<s>": 0, "</s>": 1, "<unk>": 2}
    for i in range(3, VOCAB):
        vocab[f"w{i}"] = i
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    from tokenizers import decoders

    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    fast.chat_template = "{% for m in messages %}w3 {{ m['content'] }} w4 {% endfor %}{% if add_generation_prompt %}w5{% endif %}"
    return fast


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory):
    """A local Hugging Face model folder (tiny Llama + tokenizer), as a user could pass to --model."""
    path = tmp_path_factory.mktemp("tiny-llama")
    model = tiny_model("llama", seed=1)
    model.config.max_position_embeddings = 64
    model.save_pretrained(path)
    make_tokenizer().save_pretrained(path)
    return path
