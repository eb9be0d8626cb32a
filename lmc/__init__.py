"""lmc: linear mode connectivity in JAX.

Trainers produce sibling networks, `lmc.align` reconciles their neuron order and
`lmc.evaluate` measures the loss/error barrier on the line between them.

The research core: `models`, `data`, `training`, `align`, `evaluate`, `experiments`.
Plumbing (files, checkpoints, preemption, devices, provenance) is `lmc.runtime`; the
command line is `lmc.cli`.
"""

__version__ = "0.1.0"
