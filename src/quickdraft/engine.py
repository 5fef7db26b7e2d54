"""The engine: one loaded model, its tokenizer, and one drafter instance per method.

This is the edge where text lives: chat templates, detokenization, stop strings and streaming.
The decoder underneath works on token ids only. Drafters are created once per engine and method,
so state such as Token Recycling's adjacency matrix carries across requests of one engine. A
drafter that harvests the prompt's logits (`prefill_logits` rows) gets them cut, at creation, to
the rows whose LM head and top-k cost at most its `prefill_cost` plain steps on this machine (a
row's cost and the plain step measured at start, cached): the rows cost ~0.7 ms each with AMX
and 1.4 ms without it on Qwen-0.5B (docs/tuning.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from . import drafters
from .backend import HFBackend
from .backend.matmul import batch_linears, fused_layers, kernel_of, split_layers
from .decoder import Decoder, Generation
from .errors import QuickdraftError
from .tuning import BudgetTuner, CostCurve, PassClock, engine_curve, engine_harvest_row_s, harvest_rows
from .types import SamplingParams


@dataclass
class Reply:
    text: str
    generation: Generation


class TextStream:
    """Incremental detokenizer: feed token ids, get the new text (never a split UTF-8 char)."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        self.tokens: list[int] = []
        self.emitted = 0  # characters of the decoded text already handed out

    def text(self) -> str:
        return self.tokenizer.decode(self.tokens, skip_special_tokens=True)

    def push(self, tokens: list[int]) -> str:
        self.tokens.extend(tokens)
        text = self.text()
        if text.endswith("\ufffd"):  # incomplete multi-byte character: wait for more tokens
            return ""
        new = text[self.emitted:]
        self.emitted = len(text)
        return new


class Engine:
    def __init__(self, model, tokenizer, name: str = "model", matmul: str = "auto", tree_attention: bool = True) -> None:
        """matmul: "auto" swaps bf16 linear layers for oneDNN prepacked products on CPUs with a
        native bf16 GEMM and for row-batched FBGEMM products on the others (backend/matmul.py);
        "onednn" / "fbgemm" force one, "torch" keeps the stock modules. tree_attention: tree passes
        of grouped-query models fold heads into rows (backend/attention.py); False keeps the model's
        attention untouched (the bench's stock baseline copy). Modifies `model`."""
        self.model = model
        self.tokenizer = tokenizer
        self.name = name
        self.batched_linears = batch_linears(model, matmul)  # layers swapped (0: stock model)
        self.matmul_kernel = kernel_of(model)  # "onednn" | "fbgemm" | "torch"
        self.split_linears = split_layers(model)  # FBGEMM layers run as several blocks on the pool
        self.fused_linears = fused_layers(model)  # oneDNN layers run as parts of one product (q/k/v, gate/up)
        self.backend = HFBackend(model, tree_attention)
        self._drafters: dict[tuple[str, tuple[str, ...]], object] = {}
        self._tuners: dict[tuple[str, tuple[str, ...]], BudgetTuner] = {}
        self._curve: CostCurve | None = None
        self._harvest_row_s: float | None = None
        self._clock: PassClock | None = None  # pass times, learnt from every request once a tuner exists
        eos = getattr(model.generation_config, "eos_token_id", None)
        if eos is None:
            eos = tokenizer.eos_token_id
        self.eos_ids = [eos] if isinstance(eos, int) else list(eos or [])

    @classmethod
    def load(cls, model: str, dtype: torch.dtype, matmul: str = "auto", tree_attention: bool = True) -> "Engine":
        from .models import load

        m, tok, name = load(model, dtype)
        return cls(m, tok, name, matmul, tree_attention)

    # --- prompts ---------------------------------------------------------------------------
    @property
    def has_chat_template(self) -> bool:
        return bool(getattr(self.tokenizer, "chat_template", None))

    def encode(self, prompt: str, chat: bool = True) -> list[int]:
        """Token ids of the prompt; with chat, as one user turn plus the assistant header."""
        if not prompt.strip():
            raise QuickdraftError("the prompt is empty; give some text (or '-' to read stdin)")
        if chat and self.has_chat_template:
            return self.encode_turns([{"role": "user", "content": prompt}])
        return list(self.tokenizer(prompt)["input_ids"])

    def encode_turns(self, messages: list[dict]) -> list[int]:
        """Token ids of a conversation through the chat template, ending with the assistant header."""
        try:
            ids = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        except Exception as e:  # jinja errors, templates that raise on unexpected roles, ...
            raise QuickdraftError(f"the chat template of {self.name} failed ({e}); pass --raw to skip it") from None
        if isinstance(ids, dict) or hasattr(ids, "input_ids"):
            ids = ids["input_ids"]
        return list(ids)

    # --- generation ------------------------------------------------------------------------
    def drafter(self, method: str, settings: list[str] | None = None):
        """The drafter for method and settings; every distinct settings list gets its own instance
        (budget= included), so two configurations never share what they learn."""
        key = (method, tuple(settings or ()))
        if key not in self._drafters:
            d = drafters.create(method, drafters.split_budget(settings)[1],
                                vocab_size=self.backend.vocab_size, tokenizer=self.tokenizer)
            if d.prefill_logits > 0 and d.prefill_cost != float("inf"):  # the harvest that fits this machine
                d.prefill_logits = harvest_rows(d.prefill_logits, d.prefill_cost, self.harvest_row_s(),
                                                self.cost_curve().t1_s)
            self._drafters[key] = d
        return self._drafters[key]

    def _variant(self) -> str:
        fused = f"/fused={self.fused_linears}" if self.fused_linears else ""  # older caches: no such part
        return (f"{self.matmul_kernel}={self.batched_linears}/split={self.split_linears}{fused}"
                f"/tree-attn={self.backend.tree_attention}")

    def cost_curve(self) -> CostCurve:
        """How a pass's cost grows with draft nodes on this machine (measured once, cached on disk)."""
        if self._curve is None:
            self._curve = engine_curve(self.backend, self.name, variant=self._variant())
        return self._curve

    def harvest_row_s(self) -> float:
        """Seconds one more prompt row adds to a drafter's prompt harvest here (measured once, cached)."""
        if self._harvest_row_s is None:
            self._harvest_row_s = engine_harvest_row_s(self.backend, self.name, variant=self._variant())
        return self._harvest_row_s

    def tuner(self, method: str, settings: list[str] | None = None) -> BudgetTuner | None:
        """The self-tuner of this drafter (None for a drafter that never drafts)."""
        key = (method, tuple(settings or ()))
        if key not in self._tuners:
            d = self.drafter(method, settings)
            cap = d.default_budget()
            if self._clock is None and cap > 0:  # one clock for all tuners: a pass costs the same whoever drafted it
                self._clock = PassClock(self.cost_curve())
            self._tuners[key] = (BudgetTuner(self.cost_curve(), cap, start=d.start_budget(), clock=self._clock,
                                             prefix_consistent=d.prefix_consistent) if cap > 0 else None)
        return self._tuners[key]

    def pass_costs(self, sizes=(0, 1, 2, 3, 4, 5, 6, 8, 12, 16, 24, 32, 48, 64)) -> dict | None:
        """The start-up cost curve against what the tuners' clock learnt from real passes, at `sizes`
        (None before any tuner ran): {"start": [...], "learnt": [...], "timed": [...], t1 ms each}."""
        clock = self._clock
        if clock is None:
            return None
        learnt = clock.costs(max(sizes)).tolist()
        return {"sizes": list(sizes), "start": [round(clock.curve.cost(n), 3) for n in sizes],
                "learnt": [round(learnt[n], 3) for n in sizes],
                "timed": [round(clock.sums.get(n, (0.0, 0.0))[1], 1) for n in sizes],
                "start_t1_ms": round(clock.curve.t1_s * 1e3, 1), "learnt_t1_ms": round(clock.t1() * 1e3, 1)}

    def reset_drafters(self) -> None:
        """Forget every drafter and tuner (and what they learned across requests); rebuilt on next use."""
        self._drafters.clear()
        self._tuners.clear()
        self._clock = None

    def generate_ids(self, prompt_ids: list[int], method: str = "ar", params: SamplingParams = SamplingParams(),
                     settings: list[str] | None = None, budget: int | None = None,
                     on_text: Callable[[str], None] | None = None) -> Reply:
        """Generate after prompt_ids; stream text pieces to on_text; honour stop strings.

        budget: a fixed tree budget per step; None takes `--set budget=N` from settings, else the
        self-tuner chooses each step's budget.
        """
        drafter = self.drafter(method, settings)
        if budget is None:
            budget = drafters.split_budget(settings)[0]
        tuner = self.tuner(method, settings) if budget is None else None
        decoder = Decoder(self.backend, drafter, eos_ids=self.eos_ids)
        stream = TextStream(self.tokenizer)
        held = ""  # text withheld because it might be the start of a stop string
        stopped = False

        def on_tokens(new: list[int]) -> bool:
            nonlocal held, stopped
            piece = stream.push(new)
            if params.stop:
                text = held + piece
                for s in params.stop:
                    i = text.find(s)
                    if i >= 0:
                        if on_text and i:
                            on_text(text[:i])
                        stopped = True
                        return True
                keep = max((len(s) - 1 for s in params.stop), default=0)
                cut = max(0, len(text) - keep)
                piece, held = text[:cut], text[cut:]
            if on_text and piece:
                on_text(piece)
            return False

        watch = on_text is not None or bool(params.stop)  # else nobody reads text until the end
        gen = decoder.generate(prompt_ids, params, budget or 0, on_tokens if watch else None, tuner=tuner,
                               clock=self._clock)
        text = self.tokenizer.decode(gen.tokens, skip_special_tokens=True)  # = the stream's text when watched
        if stopped:
            i = min(text.find(s) for s in params.stop if s in text)
            text = text[:i]
            # keep the generated ids up to the one that completes the stop string (as HF does)
            k = next(k for k in range(1, len(gen.tokens) + 1)
                     if any(s in self.tokenizer.decode(gen.tokens[:k], skip_special_tokens=True) for s in params.stop))
            gen.tokens = gen.tokens[:k]
            gen.stats.new_tokens = k
        elif on_text:  # what is left: withheld text, or a trailing partial character
            rest = held + text[stream.emitted:]
            if rest:
                on_text(rest)
        return Reply(text, gen)

    def generate(self, prompt: str, method: str = "ar", params: SamplingParams = SamplingParams(),
                 chat: bool = True, **kwargs) -> Reply:
        return self.generate_ids(self.encode(prompt, chat), method, params, **kwargs)
