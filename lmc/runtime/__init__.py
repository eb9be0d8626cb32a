"""Plumbing the research code runs on, apart from it: files and object stores (`io`,
with the one-run-per-workdir lock), checkpoints, preemption, multi-host start-up
(`distributed`), device meshes (`sharding`), the compilation cache, provenance,
progress lines and trackers (TensorBoard, W&B).

None of it knows about models, alignment or barriers; `lmc.training` and
`lmc.experiments` call it.
"""
