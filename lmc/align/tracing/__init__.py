"""Tracing: permutation specs derived from the jaxpr of a model or function
(the walker, the per-primitive rules, call inlining, coverage and the numeric check).
"""
