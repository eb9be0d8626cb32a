"""Instability analysis (Frankle et al. 2020) of a byte-level transformer LM.

A 2-layer, width-128 transformer is trained on the Python standard library's sources
(`text:code`); at each spawn step k (0, 50, 100, 200 of 400) three pairs of children
continue from its checkpoint with different data orders; the loss/error barrier
between them is plotted versus k with its spread over pairs (barrier_vs_k.png), and the
onset k* (mean test-error barrier at or below 2 points from there on) is reported
(results.json `onset`, `lmc report`), the same form as every `instability` run.

Launch (a 200-step parent and 24 children, 7,700 steps in all; the children of each k
train as one vmapped population):

    lmc run --config=configs/instability_lm.py --workdir=runs/instability_lm
    lmc sweep --config=configs/instability_lm.py --workdir=runs/instability_lm_sweep

Measured earlier with one pair per k (the previous version of this config): test-loss
barrier 0.047 nats at k=0, 0.021 at k=50 and 0.000 at k=200 (test-error barrier 2.4,
1.4, 0.0 points), so k* = 50 by the 2-point criterion: children that share the init
only are already nearly linearly connected on one corpus.

Measured with 3 pairs per k (2 shared CPU cores, load ~9): test-error barrier 2.0 ±
0.4 points at k=0, 0.9 ± 0.4 at k=50, 0.4 ± 0.1 at k=100, 0.0 at k=200 (test loss
0.052, 0.022, 0.000, 0.000 nats), so k* = 50 (12.5% of training).

The generic `instability` experiment: the same code path as the image configs (the
evaluator counts (N, T) labels per token).

Literature: Frankle et al. (2020) find image networks become stable (barrier ~0)
early in training; for LMs, fine-tuned children of one pretrained model are linearly
connected (Neyshabur et al. 2020; Wortsman et al. 2022).
"""

from lmc.config_base import lm_config

SPAWN_STEPS = (0, 50, 100, 200)
NUM_PAIRS = 3


def get_config(arg: str | None = None):
    del arg
    c = lm_config()
    c.experiment = "instability"
    c.data.name = "text:code"
    c.num_steps = 400
    c.spawn.mode = "spawn"
    c.spawn.child_seeds = tuple(range(1, 2 * NUM_PAIRS + 1))
    c.spawn.population = True  # the 6 children of a k train as one vmapped step
    c.instability.spawn_steps = SPAWN_STEPS
    c.instability.num_pairs = NUM_PAIRS
    c.eval.methods = ("naive",)
    return c


def sweep():
    """One `lmc run` per (spawn step, pair): `lmc sweep` trains the parent once, runs
    these points and pools their pairs into one barrier_vs_k.png and k*."""
    for k in SPAWN_STEPS:
        for pair in range(NUM_PAIRS):
            yield {
                "instability.spawn_steps": (k,),
                "instability.num_pairs": 1,
                "spawn.child_seeds": (2 * pair + 1, 2 * pair + 2),
            }
