"""Continuous maps: the orthogonal residual-stream symmetry, general invertible and
rotary per-head maps, learned matching on the path loss and its low-rank control.
"""
