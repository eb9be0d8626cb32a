"""Call primitives: the one place that knows how a jaxpr equation calls a sub-program.

Every jaxpr walker of `lmc.align` (the axis graph's rules, activation matching's
probing interpreter, the residual-stream analysis of `orthogonal`) looks inside the
same primitives through `called`, so a new JAX call primitive or parameter name is
taught to all of them at once.
"""

from __future__ import annotations

from typing import Any

# Primitives that call a sub-jaxpr with the same inputs and outputs.
CALL_PRIMITIVES = (
    "jit",
    "pjit",
    "closed_call",
    "core_call",
    "remat2",
    "checkpoint",
    "custom_jvp_call",
    "custom_vjp_call",
    "custom_vjp_call_jaxpr",
    "remat",
)
# Where each of them keeps the called program (custom rules: the primal one).
_PARAMS = ("jaxpr", "call_jaxpr", "fun_jaxpr")


def called_closed(eqn):
    """The called program as the equation stores it (a ClosedJaxpr or a Jaxpr), or None
    if `eqn` is not a call (or hides its program)."""
    if eqn.primitive.name not in CALL_PRIMITIVES:
        return None
    return next((eqn.params[k] for k in _PARAMS if eqn.params.get(k) is not None), None)


def called(eqn) -> tuple[Any, tuple] | None:
    """(jaxpr, consts) of the program a call equation runs, or None."""
    inner = called_closed(eqn)
    if inner is None:
        return None
    return getattr(inner, "jaxpr", inner), tuple(getattr(inner, "consts", ()))
