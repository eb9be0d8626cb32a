"""lmc: linear mode connectivity in JAX.

Trainers produce sibling networks, `lmc.align` reconciles their neuron order and
`lmc.evaluate` measures the loss/error barrier on the line between them.
"""

__version__ = "0.1.0"
