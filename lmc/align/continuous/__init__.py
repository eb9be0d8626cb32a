"""Continuous maps: the orthogonal residual-stream symmetry, general invertible and
rotary per-head maps, learned matching on the path loss and its low-rank control, and
the circuit form (heads interpolated as their QK and OV products: a path whose
midpoint is larger than the endpoints, not a map between them).
"""
