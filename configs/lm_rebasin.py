"""Git Re-Basin for byte-level transformer LMs: two independent inits, naive vs aligned.

Two 2-layer, width-128 transformers from different init seeds (and data orders) are
trained on the Python standard library's sources (`text:code`); the loss barrier on
the straight line between them is measured naively and after weight matching over
the transformer's permutation symmetries (residual stream, MLP units, heads, within-
head query/key and value/output dimensions), derived from the traced program.
Any of `naive`, `weight_matching`, `activation_matching`, `ste` (with `+repair`) runs:

    lmc run --config=configs/lm_rebasin.py \\
        --config.eval.methods="('naive','weight_matching','activation_matching','ste')"

Launch (2.2 minutes wall on 2 shared CPU cores):

    lmc run --config=configs/lm_rebasin.py --workdir=runs/lm_rebasin

Measured (400 steps, one pair): both endpoints reach 2.04-2.05 nats/byte on held-out
stdlib files; the test-loss barrier is 1.43 nats naively and 1.08 after weight
matching (test-error barrier 27 -> 20 points): alignment helps, far from removing it.

Literature: Ainsworth et al. (2022) and Verma & Elbayad (2024, "Merging text
transformer models from different initializations") find that permutation alignment
lowers, but does not remove, the barrier between independently trained transformers.
"""

from lmc.config_base import lm_config


def get_config(arg: str | None = None):
    del arg
    c = lm_config()
    c.experiment = "pair"
    c.data.name = "text:code"
    c.num_steps = 1600
    c.eval_every_steps = 200  # held-out loss in metrics.jsonl: the loss curves
    c.spawn.mode = "independent"
    c.spawn.child_seeds = (1, 2)
    c.eval.methods = ("naive", "weight_matching")
    return c
