"""The two forms of pure model functions lmc takes, told apart at each public API.

- the evaluator form (lmc.evaluate, and what `Model.apply` is):
  `apply_fn(params, model_state, x, train) -> (logits, model_state)`
- the plain form (lmc.align's function entry points):
  `apply_fn(params, *args) -> outputs`, usually `apply_fn(params, x) -> logits`

lmc.evaluate accepts both (a plain function has no model state) and logs which it
got; lmc.align calls `apply_fn(params, *example_args)` and refuses a function that
cannot take them, naming the signature it expected, instead of failing inside the
trace. lmc.training takes models only (it needs `init`).
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
from collections.abc import Callable

from lmc.errors import UserError

EVALUATOR_FORM = "apply_fn(params, model_state, x, train) -> (logits, model_state)"
PLAIN_FORM = "apply_fn(params, x) -> logits"

log = logging.getLogger("lmc.models")


def takes(fn: Callable, n: int) -> bool:
    """Whether `fn` can be called with `n` positional arguments (True when Python
    cannot tell, e.g. a C function without a signature)."""
    try:
        inspect.signature(fn).bind(*([None] * n))
    except TypeError:
        return False
    except ValueError:
        return True
    return True


def _describe(fn) -> str:
    name = getattr(fn, "__qualname__", None) or type(fn).__name__
    try:
        return f"{name}{inspect.signature(fn)}"
    except (TypeError, ValueError):
        return name


@dataclasses.dataclass(frozen=True)
class PlainApply:
    """A plain `apply_fn(params, x)` in the evaluator form (no model state). Frozen and
    equal for the same function, so jitted evaluators are reused across calls."""

    fn: Callable

    def __call__(self, params, model_state, x, train):
        del train  # the plain form has no train mode
        return self.fn(params, x), model_state


def evaluator_fn(model, api: str) -> Callable:
    """The evaluator form of `model`: an lmc/linen/NNX model, a function in the
    evaluator form, or a plain `apply_fn(params, x)` (logged as such)."""
    from lmc.models import as_model, is_model

    if is_model(model):
        return as_model(model).apply
    if not callable(model):
        raise UserError(f"{api}: expected a model or {EVALUATOR_FORM}, got {type(model).__name__}")
    try:
        hash(model)
    except TypeError:
        raise UserError(
            f"{api}: apply_fn must be hashable (a function, or a method of a frozen object "
            "such as lmc.models.Model): it is a static argument of the jitted evaluator"
        ) from None
    if takes(model, 4):
        return model
    if takes(model, 2):
        log.info(
            "%s: %s is in the plain form %s (no model state)", api, _describe(model), PLAIN_FORM
        )
        return PlainApply(model)
    raise UserError(f"{api}: {_describe(model)} takes neither {EVALUATOR_FORM} nor {PLAIN_FORM}")


def plain_fn(fn, num_args: int, api: str) -> Callable:
    """`fn` (checked as `check_plain_fn` does), or for a model (lmc, linen, NNX) its
    eval-mode function of the combined tree, `fn(tree, x) -> logits` with `tree =
    {"params", "model_state"}`: the tree a `spec_from_model` spec refers to."""
    from lmc.models import as_model, is_model

    if not is_model(fn):
        check_plain_fn(fn, num_args, api)
        return fn
    model = as_model(fn)
    return lambda tree, *args: model.apply(tree["params"], tree["model_state"], *args, False)[0]


def check_plain_fn(fn, num_args: int, api: str) -> None:
    """Refuse, before tracing, a function that `api` cannot call as
    `fn(params, *args)` with `num_args` arguments in all (lmc.align entry points)."""
    from lmc.models import is_model

    if is_model(fn):
        raise UserError(
            f"{api} takes a function apply_fn(params, *args), got the model "
            f"{type(fn).__name__}; for a model use align.spec_from_model(model, x)"
        )
    if not callable(fn):
        raise UserError(f"{api}: expected a function {PLAIN_FORM}, got {type(fn).__name__}")
    if takes(fn, num_args):
        return
    hint = ""
    if takes(fn, 4) and num_args == 2:
        hint = (
            f"; it looks like the evaluator form {EVALUATOR_FORM}: pass "
            "`lambda tree, x: apply_fn(tree['params'], tree['model_state'], x, False)[0]` "
            "or use the model itself"
        )
    raise UserError(
        f"{api} calls apply_fn(params, *example_args) with {num_args} arguments, but "
        f"{_describe(fn)} cannot take them (expected {PLAIN_FORM}){hint}"
    )
