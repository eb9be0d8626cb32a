"""Code vs prose: can a code-specialist and a prose-specialist byte LM be averaged?

A 2-layer, width-128 byte-level transformer is trained on a 50/50 mixture of the
Python standard library's sources (code) and the Python documentation's
reStructuredText (prose). At each fork step k it is split into a code-only and a
prose-only child, both trained to the same total step count; the children, their
average, task arithmetic, the full interpolation path and a mixture model trained
for the same number of steps are evaluated on held-out code and held-out prose files.
k = 0 shares the init only; `lm.independent` adds a pair from different inits,
averaged after each method of `config.eval.methods` (naive, weight matching, ...).
Fork steps are `config.instability.spawn_steps`.

Launch (7 training runs of <= 400 steps and five alignment methods; a few minutes
on 2 CPU cores, timings in docs/results/lm_merging.md):

    lmc run --config=configs/lm_code_vs_prose.py --workdir=runs/lm_code_vs_prose

Writes results.json (per-domain loss / perplexity / bits per byte / error of every
model) and code_vs_prose.png (per-domain loss along each path); `lmc report DIR`
prints the table.

Measured (one seed, mean held-out loss over both domains, nats/byte): mixture model
2.20; fork at k=200 (half the steps shared): specialists 2.32 / 2.25, their average
2.22; k=80: 2.41 / 2.34 -> 2.36; k=0 (shared init only): 2.45 / 2.37 -> 2.57;
independent inits: 2.45 / 2.36 -> 3.34 naive, 3.28 after weight matching, 3.03 after
activation matching, 3.04 after weight matching + orthogonal residual, and 2.21 after
learned matching (code 2.13 / prose 2.28: better than either specialist, 0.007 nats
from the mixture model; with 400 instead of 1000 learning steps 2.26). With the
same models (docs/results/lm_merging.md, rerun): learned matching with general
invertible per-head maps 2.154 (below the mixture model), the low-rank capacity
control with as many free parameters 2.351. Task
arithmetic with s=1 is worse than the average at every k.

Literature: model soups / BTM / task arithmetic (Wortsman et al. 2022, Li et al. 2022,
Ilharco et al. 2023) average LMs that share a pretrained trunk; independently
initialized transformers need alignment first (Verma & Elbayad 2024; Ainsworth et al.
2022 report large barriers for unaligned nets).
"""

from lmc.config_base import lm_config


def get_config(arg: str | None = None):
    del arg
    c = lm_config()
    c.experiment = "code_vs_prose"
    c.data.name = "text:mixed"
    c.num_steps = 400
    c.instability.spawn_steps = (0, 80, 200)
    c.lm.scales = (0.5, 1.0)  # s = 0.5 is exactly the average (a built-in check)
    c.lm.independent = True
    c.spawn.child_seeds = (1, 2)  # code child's data seed; prose child's data (and init) seed
    # the independent pair is averaged after each of these
    c.eval.methods = ("naive", "weight_matching", "activation_matching",
                      "weight_matching_orthogonal", "learned_matching")  # fmt: skip
    return c
