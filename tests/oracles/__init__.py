"""Hand-written permutation specs, used only to check the traced ones.

Production code always derives specs from the traced program (`lmc.align.tracing.trace`);
these follow the models' code by hand, the way Git Re-Basin's specs do, so a tracer
bug shows up as a difference.
"""

from tests.oracles.specs import cnn_spec, mlp_spec, oracle_spec, resnet20_spec, vgg_spec
from tests.oracles.transformer import transformer_spec

__all__ = ["cnn_spec", "mlp_spec", "oracle_spec", "resnet20_spec", "transformer_spec", "vgg_spec"]
