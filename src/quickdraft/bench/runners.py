"""The methods a benchmark runs: the engine's drafters and the baselines users would pick instead.

Every runner takes the same prompt token ids and returns a `Result` whose `tokens` are the new
token ids, cut after the first end-of-sequence token (kept, as the engine keeps it), so tokens are
counted the same way for every method. `wall_s` is the wall clock around the whole call (prefill
included) for every method alike. `steps` is the number of target forward passes where it is
known (the engine's own count; a forward hook on the target for transformers' `generate()`).

Baselines live in BASELINES, the one table of them: what each needs (a draft model, a GGUF file,
llama-cpp-python), how to build it, and the note it adds to the report. Drafters come from the
drafter registry. Callers ask the table; they never branch on a baseline's name.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from transformers import GenerationConfig

from ..errors import QuickdraftError
from ..types import SamplingParams

HF_PLD_TOKENS = 10  # the value transformers' documentation uses for prompt_lookup_num_tokens
LLAMACPP_LOOKUP_TOKENS = 10  # LlamaPromptLookupDecoding's num_pred_tokens default


@dataclass
class Result:
    tokens: list[int]
    wall_s: float
    steps: int | None = None
    accepted: list[int] | None = None  # tokens committed per step, where known
    budgets: list[int] | None = None  # the draft budget of each step (the engine's drafters)
    drafted: list[int] | None = None  # nodes scored each step (the draft after the per-step cut; a sure spine may pass the budget)


def cut_at_eos(tokens: list[int], eos_ids: set[int], max_new: int) -> list[int]:
    out = []
    for t in tokens[:max_new]:
        out.append(int(t))
        if t in eos_ids:
            break
    return out


class EngineRunner:
    """A registry drafter through Engine.generate_ids (greedy)."""

    same_weights = True  # runs the engine's own weights: differences from ar are numerics only

    def __init__(self, engine, method: str) -> None:
        """method: a drafter name, optionally with settings: name:key=value[:key=value...]."""
        self.engine = engine
        self.method, *self.settings = method.split(":")
        engine.drafter(self.method, self.settings)  # build it now: unknown names fail before the run starts

    def generate(self, ids: list[int], max_new: int) -> Result:
        params = SamplingParams(max_new_tokens=max_new)
        t = time.perf_counter()
        g = self.engine.generate_ids(ids, self.method, params, settings=self.settings).generation
        wall = time.perf_counter() - t
        return Result(cut_at_eos(g.tokens, set(self.engine.eos_ids), max_new), wall, g.stats.steps,
                      list(g.stats.accepted_lengths), list(g.stats.budgets), list(g.stats.drafted))


class HFRunner:
    """transformers generate() on the engine's own model object, greedy."""

    same_weights = True

    def __init__(self, engine, assistant=None, prompt_lookup: int | None = None) -> None:
        self.engine = engine
        self.kwargs: dict = {}
        if prompt_lookup:
            self.kwargs["prompt_lookup_num_tokens"] = prompt_lookup
        if assistant is not None:
            self.kwargs["assistant_model"] = assistant.model
            if assistant.tokenizer.get_vocab() != engine.tokenizer.get_vocab():
                self.kwargs.update(tokenizer=engine.tokenizer, assistant_tokenizer=assistant.tokenizer)
        self.passes = 0  # forward calls of the target, counted by a hook (every call, whoever makes it)
        engine.model.register_forward_pre_hook(self._count)

    def _count(self, module, args) -> None:
        self.passes += 1

    def generate(self, ids: list[int], max_new: int) -> Result:
        eng = self.engine
        inp = torch.tensor([ids])
        before = self.passes
        t = time.perf_counter()
        # a fresh config: plain greedy, whatever the model folder's generation_config asks for
        # (repetition penalties, minimum lengths, suppressed tokens would change what is measured)
        config = GenerationConfig(max_new_tokens=max_new, do_sample=False, eos_token_id=eng.eos_ids or None,
                                  pad_token_id=eng.eos_ids[0] if eng.eos_ids else None)
        with torch.inference_mode():
            out = eng.model.generate(inp, attention_mask=torch.ones_like(inp), generation_config=config,
                                     **self.kwargs)
        wall = time.perf_counter() - t
        return Result(cut_at_eos(out[0, len(ids):].tolist(), set(eng.eos_ids), max_new), wall,
                      self.passes - before)


class LlamaCppRunner:
    """llama-cpp-python on a GGUF file, greedy, fed the same token ids; KV cache reset per call."""

    same_weights = False  # its own quantized weights: its outputs differ from ar's by design

    def __init__(self, gguf: Path, eos_ids: list[int], lookup: bool, n_ctx: int) -> None:
        import llama_cpp

        kwargs = {}
        if lookup:
            from llama_cpp.llama_speculative import LlamaPromptLookupDecoding

            kwargs["draft_model"] = LlamaPromptLookupDecoding(num_pred_tokens=LLAMACPP_LOOKUP_TOKENS)
        # llama.cpp's AMX weight repacking (an "extra buffer type") segfaults in its first matmul on
        # these machines: the CPU reports AMX but the VM does not enable it. Load without extra
        # buffer types unless QUICKDRAFT_LLAMACPP_EXTRA_BUFTS=1.
        from llama_cpp import llama_cpp as capi

        default = capi.llama_model_default_params
        if os.environ.get("QUICKDRAFT_LLAMACPP_EXTRA_BUFTS") != "1":
            def params():
                p = default()
                p.use_extra_bufts = False
                return p
            capi.llama_model_default_params = params
        try:
            self.llm = llama_cpp.Llama(model_path=str(gguf), n_ctx=n_ctx, n_threads=torch.get_num_threads(),
                                       verbose=False, seed=0, **kwargs)
        finally:
            capi.llama_model_default_params = default
        self.eos = set(eos_ids) | {self.llm.token_eos()}
        self.weight_bytes = Path(gguf).stat().st_size

    def generate(self, ids: list[int], max_new: int) -> Result:
        self.llm.reset()  # no prefix reuse from the previous call: every method starts cold
        out: list[int] = []
        t = time.perf_counter()
        for tok in self.llm.generate(ids, temp=0.0, top_k=1, top_p=1.0, min_p=0.0, repeat_penalty=1.0, reset=True):
            out.append(int(tok))
            if tok in self.eos or len(out) >= max_new:
                break
        wall = time.perf_counter() - t
        return Result(cut_at_eos(out, self.eos, max_new), wall, None)


def llamacpp_missing() -> str | None:
    """Why llama-cpp-python cannot run here, or None."""
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        return ("llama-cpp-python is not installed; install it with `pip install 'quickdraft[llamacpp]'` "
                "(it builds from source, about 10 minutes on 2 cores)")
    return None


@dataclass(frozen=True)
class Baseline:
    """One baseline: how to build its runner and what it needs."""

    make: Callable[..., object]  # make(engine, assistant, gguf, n_ctx) -> runner
    needs_draft_model: bool = False
    needs_gguf: bool = False
    needs_llama_cpp: bool = False
    note: str | None = None  # added to the report's notes when the baseline runs


_LLAMACPP_NOTE = ("llamacpp* runs llama.cpp on the quantized GGUF file itself, with torch's thread count; the "
                  "engine and hf* run the dequantized weights, so llama.cpp reads fewer bytes per token (its "
                  "roofline uses the GGUF file size).")

BASELINES: dict[str, Baseline] = {
    "hf": Baseline(lambda engine, assistant, gguf, n_ctx: HFRunner(engine)),
    "hf-pld": Baseline(lambda engine, assistant, gguf, n_ctx: HFRunner(engine, prompt_lookup=HF_PLD_TOKENS),
                       note=f"hf-pld: generate(prompt_lookup_num_tokens={HF_PLD_TOKENS}), transformers' "
                       "documented example value."),
    "hf-assisted": Baseline(lambda engine, assistant, gguf, n_ctx: HFRunner(engine, assistant=assistant),
                            needs_draft_model=True),
    "llamacpp": Baseline(lambda engine, assistant, gguf, n_ctx: LlamaCppRunner(gguf, engine.eos_ids, False, n_ctx),
                         needs_gguf=True, needs_llama_cpp=True, note=_LLAMACPP_NOTE),
    "llamacpp-lookup": Baseline(lambda engine, assistant, gguf, n_ctx: LlamaCppRunner(gguf, engine.eos_ids, True, n_ctx),
                                needs_gguf=True, needs_llama_cpp=True, note=_LLAMACPP_NOTE),
}


def unavailable(method: str, gguf: Path | None) -> str | None:
    """Why `method` cannot run on this machine and model (to skip it with that message), or None."""
    b = BASELINES.get(method)
    if b is None:
        return None
    if b.needs_llama_cpp and (why := llamacpp_missing()):
        return why
    if b.needs_gguf and gguf is None:
        return "needs a GGUF file: pass a registry model or a .gguf path as --model"
    return None


def needs_draft_model(method: str) -> bool:
    return method in BASELINES and BASELINES[method].needs_draft_model


def make_runner(method: str, engine, *, stock=None, assistant=None, gguf: Path | None = None, n_ctx: int = 4096):
    """A runner for a drafter name or a baseline (callers check `unavailable` first).

    stock: the engine whose model baselines run (stock transformers kernels); default `engine`."""
    if method not in BASELINES:
        return EngineRunner(engine, method)
    if needs_draft_model(method) and assistant is None:
        raise QuickdraftError(f"{method} needs a draft model; pass --draft-model NAME")
    return BASELINES[method].make(stock or engine, assistant, gguf, n_ctx)
