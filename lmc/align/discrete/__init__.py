"""Discrete matching: permutations found by weight matching (one coordinate descent
for plain, stacked and nested specs), activation matching, STE and merge-many.
"""
