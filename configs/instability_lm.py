"""Instability analysis (Frankle et al. 2020) of a byte-level transformer LM.

A 2-layer, width-128 transformer is trained on the Python standard library's sources
(`text:code`); at each spawn step k two children continue from its checkpoint with
different data orders; the loss/error barrier between them is plotted versus k
(barrier_vs_k.png, results.json `points`, the same form as `instability`).

Launch (5 training runs, 2100 steps in all; 10.5 minutes wall on 2 heavily shared
CPU cores, 3.2 minutes of user CPU time):

    lmc run --config=configs/instability_lm.py --workdir=runs/instability_lm

Measured (one pair per k): test-loss barrier 0.047 nats at k=0, 0.021 at k=50 and
0.000 at k=200 (test-error barrier 2.4, 1.4, 0.0 points): children that share the
init only are already nearly linearly connected on one corpus, and sharing half the
trajectory makes the path convex.

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
