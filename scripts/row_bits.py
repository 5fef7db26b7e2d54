"""Where a tree pass's rows first stop being bit for bit the plain steps' (why bf16 outputs can differ).

Run: python scripts/row_bits.py MODEL [NODES] [QUESTIONS]
For the first turn of QUESTIONS Spec-Bench questions (default 3, one per category in order), bf16:
plain steps make NODES + 1 greedy tokens, one row per pass; then, from the same prompt, one pass
scores the same tokens as a chain (root + NODES nodes), and one as a tree (the chain with a decoy
sibling beside every chain node, so the pass needs a tree mask). For every chain row it compares the
output of every module (and the input of each attention output projection, i.e. the attention
kernel's result) with the plain step that computed the same position, and prints how many rows give
the plain step's logits exactly and, for the others, the first module whose output differs.
Nothing here is timed.
"""

import collections
import re
import sys

import torch

from quickdraft.bench.data import load_questions, select
from quickdraft.bench.run import Conversation
from quickdraft.engine import Engine
from quickdraft.types import Draft

if len(sys.argv) < 2:
    sys.exit(__doc__)
model = sys.argv[1]
nodes = int(sys.argv[2]) if len(sys.argv) > 2 else 12
count = int(sys.argv[3]) if len(sys.argv) > 3 else 3
engine = Engine.load(model, torch.bfloat16)
be = engine.backend
empty = Draft(torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long))
names = {mod: name for name, mod in engine.model.named_modules() if name and not list(mod.children())}
captured: dict[str, list[torch.Tensor]] = collections.defaultdict(list)


def hook(mod, args, out):
    name = names[mod]
    if name.endswith("o_proj") and args:
        captured[name + " (input: the attention kernel's output)"].append(args[0].detach().reshape(-1, args[0].shape[-1]).clone())
    out = out[0] if isinstance(out, tuple) else out
    if isinstance(out, torch.Tensor) and out.dim() >= 2:
        captured[name].append(out.detach().reshape(-1, out.shape[-1]).clone())  # [rows, features]


for mod in names:
    mod.register_forward_hook(hook)


def kind(name: str) -> str:
    return re.sub(r"layers\.\d+\.", "layers.*.", name)


questions = [q for q in select(load_questions(), per_category=1)][:count]
summary = collections.Counter()
for q in questions:
    prompt = Conversation(engine).prompt(q.turns[0])
    # plain steps: the root, then NODES more tokens, one row per pass
    logits, _ = be.first_pass(prompt[:-1], prompt[-1], empty)
    be.commit([])
    toks, plain_logits, plain_out = [int(logits[0].argmax())], [], []
    for _ in range(nodes + 1):
        captured.clear()
        lg = be.score(toks[-1], empty)
        be.commit([])
        plain_logits.append(lg[0])
        plain_out.append({k: v[-1][-1] for k, v in captured.items()})
        toks.append(int(lg[0].argmax()))
    chain = torch.tensor(toks[1:nodes + 1])  # [nodes]
    decoy = (chain + 1) % be.vocab_size  # [nodes] tokens that are not the chain's
    tree_tokens = torch.stack([chain, decoy], dim=1).reshape(-1)  # [2 nodes]: chain i at 2i, its decoy at 2i+1
    tree_parents = torch.tensor([2 * (i // 2) - 2 if i >= 2 else -1 for i in range(2 * nodes)])  # siblings share a parent
    for label, draft, rows in (("chain", Draft(chain, torch.arange(-1, nodes - 1)), list(range(nodes + 1))),
                               ("tree", Draft(tree_tokens, tree_parents), [0] + [1 + 2 * i for i in range(nodes)])):
        be.first_pass(prompt[:-1], prompt[-1], empty)
        be.commit([])
        captured.clear()
        lg = be.score(toks[0], draft)  # [1 + draft nodes, V]
        passed = {k: v[-1] for k, v in captured.items()}  # [rows of the pass, features]
        be.commit([])
        exact, firsts = 0, collections.Counter()
        for step, row in enumerate(rows):
            if torch.equal(lg[row], plain_logits[step]):
                exact += 1
                continue
            first = next((k for k in passed if k in plain_out[step] and passed[k].shape[0] == lg.shape[0]
                          and not torch.equal(passed[k][row], plain_out[step][k])), "the logits only")
            firsts[kind(first)] += 1
            summary[(label, kind(first))] += 1
        print(f"q{q.question_id} ({q.category}) {label}: {exact}/{len(rows)} rows give the plain step's logits bit for bit;"
              f" first differing module of the others: {dict(firsts) or '-'}")
print("all questions:", {f"{a}: {b}": n for (a, b), n in summary.items()} or "every row exact")
