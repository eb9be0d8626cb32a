"""Mutation check: break the research core on purpose and see whether the tests notice.

    python benchmarks/mutation.py                 # every mutation, with a baseline run
    python benchmarks/mutation.py --only NAME,..  # a subset
    python benchmarks/mutation.py --list          # names, files and tests, nothing run
    python benchmarks/mutation.py --only STE --tests tests/align/test_align_methods.py
                                                  # would these other tests catch it?

Each entry of `MUTATIONS` is one semantic breakage: the file, an exact snippet of it,
the snippet that replaces it, and the tests expected to catch it (pytest paths or node
ids). The repository's files (`git ls-files`, plus untracked files git does not
ignore) are copied once to a temporary directory; each mutation is applied there on
its own, the listed tests run with `PYTHONPATH=<copy> python -m pytest -x -q`, and the
file is restored. A baseline run of all listed tests on the unpatched copy comes
first: a mutation only counts as caught if its tests passed without it.

Outcomes: `caught` (pytest exit 1: a test failed), `MISSED` (the tests passed),
`not-applicable` (the snippet is not in the file, or not exactly once: the code moved;
update the entry), `error` (pytest could not run the tests, e.g. exit 2, 4 or 5).
Exit status: 0 when every applicable mutation is caught, 1 otherwise.

Not part of the normal suite: it runs the listed tests once per mutation (about 5-10
minutes on 2 CPU cores for the full list). Adding a mutation is a one-entry edit of
`MUTATIONS`.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclasses.dataclass(frozen=True)
class Mutation:
    name: str
    file: str  # relative to the repository root
    old: str  # must occur exactly once in `file`
    new: str
    tests: tuple[str, ...]  # pytest paths or node ids, relative to the root


DATA_ORDER = "tests/data/test_data_order_science.py"
INPUTS_TRAINING = "tests/training/test_engine_inputs_training.py"
INPUTS_EVAL = "tests/evaluate/test_engine_inputs_eval.py"
INPUTS_TEXT = "tests/data/test_engine_inputs_text.py"
CIRCUIT = "tests/align/test_circuit.py"

MUTATIONS = [
    Mutation(
        "data order: every epoch reuses epoch 0's permutation",
        "lmc/data/order.py",
        "perm = epoch_permutation(data_seed, epoch, num_examples)",
        "perm = epoch_permutation(data_seed, 0, num_examples)",
        (
            f"{DATA_ORDER}::test_batches_after_an_epoch_boundary_follow_the_next_epochs_permutation",
            f"{DATA_ORDER}::test_each_epoch_visits_every_kept_example_exactly_once",
        ),
    ),
    Mutation(
        "data order: the step within an epoch is ignored",
        "lmc/data/order.py",
        "return perm[within * batch_size : (within + 1) * batch_size]",
        "return perm[:batch_size]",
        ("tests/data/test_data.py", DATA_ORDER),
    ),
    Mutation(
        "augmentation: key not folded with the step",
        "lmc/training/step.py",
        "x = crop_and_flip(jax.random.fold_in(aug_key, step), x)",
        "x = crop_and_flip(aug_key, x)",
        (f"{DATA_ORDER}::test_augmentation_changes_with_step_and_seed_inside_training",),
    ),
    Mutation(
        "augmentation: the aug seed is ignored",
        "lmc/training/loop.py",
        "jax.random.key_data(jax.random.key(seeds[0].aug))",
        "jax.random.key_data(jax.random.key(0))",
        (f"{DATA_ORDER}::test_augmentation_changes_with_step_and_seed_inside_training",),
    ),
    Mutation(
        "augmentation: the flip is never applied",
        "lmc/data/augment.py",
        "return jnp.where(flip, cropped[:, :, ::-1, :], cropped)",
        "return cropped",
        (f"{DATA_ORDER}::test_crop_and_flip_is_a_padded_crop_or_its_mirror",),
    ),
    Mutation(
        "BN reset: norm='reset' keeps the interpolated (stale) statistics",
        "lmc/evaluate/normalization.py",
        'if norm == "none":\n        return lerp_stacked(',
        'if norm in ("none", "reset"):\n        return lerp_stacked(',
        (
            "tests/evaluate/test_evaluate_normalization.py::test_reset_lowers_a_batchnorm_pairs_interpolated_loss",
            "tests/evaluate/test_evaluate_normalization.py",
        ),
    ),
    Mutation(
        "REPAIR: the correction does not rescale (scale 1)",
        "lmc/evaluate/normalization.py",
        'scale = targets[key]["std"] / np.sqrt(measured[key]["var"] + EPS)',
        'scale = np.ones_like(measured[key]["var"])',
        (
            "tests/evaluate/test_evaluate_normalization.py::test_repair_brings_channel_statistics_to_the_interpolated_endpoint_statistics",
        ),
    ),
    Mutation(
        "STE: the update step is a no-op",
        "lmc/align/discrete/ste.py",
        "return optax.apply_updates(proxy, updates), opt_state, loss",
        "return proxy, opt_state, loss",
        ("tests/align/test_ste.py::test_ste_lowers_the_midpoint_loss_that_weight_matching_leaves",),
    ),
    Mutation(
        "learned matching: the orthogonal maps never move",
        "lmc/align/continuous/learned.py",
        "return optax.apply_updates(theta, updates), opt_state, loss",
        "return theta, opt_state, loss",
        (
            "tests/align/test_align_transformer.py::"
            "test_learned_matching_recovers_planted_orthogonal_maps_and_keeps_bs_function",
        ),
    ),
    Mutation(
        "learned matching: the invertible per-head maps are the identity",
        "lmc/align/continuous/invertible.py",
        "return {n: (expm(x), expm(-jnp.swapaxes(x, -1, -2))) for n, x in generators.items()}",
        "return {n: (expm(0 * x), expm(0 * x)) for n, x in generators.items()}",
        (
            "tests/align/test_align_invertible.py::test_learned_matching_recovers_planted_invertible_maps",
        ),
    ),
    Mutation(
        "circuit merge: the key factors lose their square root",
        "lmc/align/continuous/circuit.py",
        '"key": qkv("key", root_a, root_b),',
        '"key": qkv("key", 1 - alpha, alpha),',
        (CIRCUIT + "::test_circuit_midpoint_is_the_interpolated_circuits",),
    ),
    Mutation(
        "circuit merge: no softmax-scale correction for the doubled head dim",
        "lmc/align/continuous/circuit.py",
        "SCALE = math.sqrt(2.0)",
        "SCALE = 1.0",
        (CIRCUIT + "::test_circuit_path_ends_are_the_endpoints",),
    ),
    Mutation(
        "invertible classes: the contravariant side gets M instead of M^-T",
        "lmc/align/continuous/invertible.py",
        "use = m_inv_t if ref.path in c.contra else m",
        "use = m",
        (
            "tests/align/test_align_invertible.py::test_invertible_classes_are_the_two_sides_of_each_head",
        ),
    ),
    Mutation(
        "barrier: measured against the endpoints' mean instead of the line",
        "lmc/evaluate/barriers.py",
        "gaps = [v - ((1 - a) * f0 + a * f1) for a, v in zip(alphas, values, strict=True)]",
        "gaps = [v - (f0 + f1) / 2 for a, v in zip(alphas, values, strict=True)]",
        ("tests/evaluate/test_evaluate_barriers.py",),
    ),
    Mutation(
        "weight matching: stops after one sweep",
        "lmc/align/discrete/weight_matching.py",
        "        if not progress:\n            break\n    return perms, objectives, sweeps",
        "        break\n    return perms, objectives, sweeps",
        ("tests/align/test_align_weight_matching.py",),
    ),
    Mutation(
        "weight matching: a large cost's kept sum corrected for one moved group only",
        "lmc/align/discrete/weight_matching.py",
        "                    if g in moved:\n                        group = block.groups[g]",
        "                    if g == min(moved):\n                        group = block.groups[g]",
        ("tests/align/test_align_weight_matching.py",),
    ),
    Mutation(
        "axis kernels: nested permutations' row maps applied before their unit's",
        "lmc/align/axes.py",
        "sorted(others, key=lambda o: o[3] is not None)",
        "sorted(others, key=lambda o: o[3] is None)",
        ("tests/align/test_align_axes.py",),
    ),
    Mutation(
        "weight matching: a head family's nested costs read with B's heads unpermuted",
        "lmc/align/discrete/nested.py",
        "total[i, g] += c[i, g][rows, cols].sum(dtype=np.float64)",
        "total[i, g] += c[i, i][rows, cols].sum(dtype=np.float64)",
        ("tests/align/test_align_transformer.py",),
    ),
    Mutation(
        "orthogonal: a norm bias kept on the stream is not rescaled by A's gain on unfold",
        "lmc/align/continuous/orthogonal.py",
        "yield n.kept_bias, (kept * s).astype(np.float32)",
        "yield n.kept_bias, kept.astype(np.float32)",
        (
            "tests/models/test_hub.py::"
            "test_orthogonal_recipe_undoes_a_planted_rotation_of_gpt_neox_and_refuses_tied_gpt2",
        ),
    ),
    Mutation(
        "weight matching: a fixed permutation is solved anyway",
        "lmc/align/discrete/weight_matching.py",
        "free = [n for n in self.names if n not in fixed]",
        "free = list(self.names)",
        (
            "tests/align/test_align_weight_matching.py::"
            "test_fixed_permutations_stay_and_the_others_are_matched_given_them",
        ),
    ),
    Mutation(
        "orthogonal: the symmetry check's subspace rotation moves nothing",
        "lmc/align/continuous/orthogonal.py",
        "yield path, x + map_axis(map_axis(x, u, axis), w, axis)",
        "yield path, x",
        (
            "tests/align/test_align_transformer.py::"
            "test_subspace_rotation_is_the_dense_one_and_the_check_refuses_a_broken_stream",
        ),
    ),
    Mutation(
        "spec rule: transpose ignores its permutation",
        "lmc/align/tracing/rules.py",
        'return [tuple(ins[0][p] for p in eqn.params["permutation"])]',
        "return [tuple(ins[0])]",
        ("tests/align/test_align_trace.py",),
    ),
    Mutation(
        "spec rule: a flatten's factors in the wrong order",
        "lmc/align/tracing/rules.py",
        "g.composite(gj[0], tuple(gi))",
        "g.composite(gj[0], tuple(reversed(gi)))",
        ("tests/align/test_align_trace.py",),
    ),
    Mutation(
        "pair: the curve is measured on the unaligned B (alignment wiring)",
        "lmc/experiments/common/compare.py",
        "apply_fn, ea, aligned, dataset,",
        "apply_fn, ea, eb, dataset,",
        (
            "tests/experiments/test_experiments.py::test_pair_with_every_alignment_method",
            "tests/experiments/test_experiments.py::test_batchnorm_suffixes_reach_the_evaluator_and_alignment_helps",
        ),
    ),
    Mutation(
        "resume: the step counter restarts at 0 after a checkpoint",
        "lmc/training/loop.py",
        "state = template if restored is None else restored",
        "state = template if restored is None else {**restored, 'step': template['step']}",
        ("tests/training/test_train.py::test_resume_after_checkpoint_is_bitwise_identical",),
    ),
    Mutation(
        "spawn: a child does not continue the parent's step (schedule restarts)",
        "lmc/training/state.py",
        'for key in ("params", "model_state", "opt_state", "step"):',
        'for key in ("params", "model_state", "opt_state"):',
        (
            "tests/training/test_train.py::test_spawn_from_parent_equals_uninterrupted_training_with_same_seeds",
        ),
    ),
    Mutation(
        "population: every child gets the first child's batches",
        "lmc/training/loop.py",
        "rows = [m.dataset.train_batch(m.seeds.data, step, self.batch_size)",
        "rows = [m.dataset.train_batch(self.members[0].seeds.data, step, self.batch_size)",
        (
            "tests/training/test_train.py::test_population_training_is_bitwise_identical_to_sequential_children",
        ),
    ),
    Mutation(
        "sweep: the shared parent is trained with another seed than the points expect",
        "lmc/cli/sweep.py",
        'overrides = {"experiment": "parent", "instability.spawn_steps": tuple(sorted(steps))}',
        'overrides = {"experiment": "parent", "instability.spawn_steps": tuple(sorted(steps)), "seed": 99}',
        (
            "tests/cli/test_sweep.py::test_instability_sweep_trains_one_parent_and_ends_in_the_single_run_figure",
        ),
    ),
    # Inputs the engine chooses for correct kernels (issue 26): which checkpoint, rows,
    # corpus, seeds and children reach them.
    Mutation(
        "spawn: children start from the parent's last kept checkpoint instead of step k",
        "lmc/training/siblings.py",
        "return ckpt.restore(step, template)",
        "return ckpt.restore(max(ckpt.steps()), template)",
        (
            f"{INPUTS_TRAINING}::test_instability_children_start_at_their_own_spawn_step_with_their_own_seeds",
        ),
    ),
    Mutation(
        "RESET: statistics recomputed on the test split",
        "lmc/evaluate/curves.py",
        'full_train = data.train_x if hasattr(data, "train_x") else splits["train"][0]',
        'full_train = data.test_x if hasattr(data, "test_x") else splits["test"][0]',
        (
            f"{INPUTS_EVAL}::test_reset_statistics_come_from_bn_reset_batches_of_the_whole_training_split",
        ),
    ),
    Mutation(
        "RESET: one statistics batch instead of config.eval.bn_reset_batches",
        "lmc/experiments/common/compare.py",
        "stats_batches=int(config.eval.bn_reset_batches),",
        "stats_batches=1,",
        (
            f"{INPUTS_EVAL}::test_reset_statistics_come_from_bn_reset_batches_of_the_whole_training_split",
        ),
    ),
    Mutation(
        "code_vs_prose: the prose child trains on the code+prose mixture",
        "lmc/experiments/code_vs_prose.py",
        'training.Child(i, workdir / f"k{k}" / d, k, domain_data[d],',
        'training.Child(i, workdir / f"k{k}" / d, k, domain_data[d] if d == "code" else mixed,',
        (INPUTS_TEXT,),
    ),
    Mutation(
        "RESET/REPAIR: statistics from the eval.train_subset rows, not the whole training split",
        "lmc/evaluate/curves.py",
        'full_train = data.train_x if hasattr(data, "train_x") else splits["train"][0]',
        'full_train = splits["train"][0]',
        (
            f"{INPUTS_EVAL}::test_reset_statistics_come_from_bn_reset_batches_of_the_whole_training_split",
        ),
    ),
    Mutation(
        "REPAIR: the endpoints' target statistics from the first statistics batch only",
        "lmc/evaluate/normalization.py",
        "            _mean_over(\n                batches,\n                lambda x, e=e:",
        "            _mean_over(\n                batches[:1],\n                lambda x, e=e:",
        (f"{INPUTS_EVAL}::test_repair_targets_and_measurements_use_the_reset_batches",),
    ),
    Mutation(
        "spawn (population): a population starts from the parent's last kept checkpoint",
        "lmc/training/siblings.py",
        "start = load_parent(config, workdir, model, dataset, spawn_step, shared)",
        "start = load_parent(config, workdir, model, dataset, "
        'max(committed_steps(parent_dir(workdir, shared) / "checkpoints")), shared)',
        (
            f"{INPUTS_TRAINING}::test_instability_children_start_at_their_own_spawn_step_with_their_own_seeds",
        ),
    ),
    Mutation(
        "independent mode: children share config.seed's init (only data order differs)",
        "lmc/training/siblings.py",
        'if config.spawn.mode == "independent":\n        return Seeds(init=s, data=s, aug=s)',
        'if config.spawn.mode == "independent":\n        return Seeds(init=int(config.seed), data=s, aug=s)',
        (f"{INPUTS_TRAINING}::test_independent_children_take_every_seed_from_child_seeds",),
    ),
    Mutation(
        "sweeps: pair j is children (j, j+1) instead of (2j, 2j+1)",
        "lmc/experiments/common/sweep.py",
        "*ends[2 * j : 2 * j + 2]",
        "*ends[j : j + 2]",
        (
            f"{INPUTS_TRAINING}::test_instability_children_start_at_their_own_spawn_step_with_their_own_seeds",
        ),
    ),
    Mutation(
        "instability: every pair of a spawn step reuses the first pair's seeds",
        "lmc/experiments/instability.py",
        'training.Child(i, workdir / f"k{k}" / f"child_{i}", k)',
        'training.Child(i % 2, workdir / f"k{k}" / f"child_{i}", k)',
        (
            f"{INPUTS_TRAINING}::test_instability_children_start_at_their_own_spawn_step_with_their_own_seeds",
        ),
    ),
    Mutation(
        "population: every member reads the first member's dataset",
        "lmc/training/loop.py",
        "rows = [m.dataset.train_batch(m.seeds.data, step, self.batch_size)",
        "rows = [self.members[0].dataset.train_batch(m.seeds.data, step, self.batch_size)",
        (f"{INPUTS_TRAINING}::test_a_population_member_reads_its_own_dataset",),
    ),
    Mutation(
        "code_vs_prose: networks scored on held-in (training) windows",
        "lmc/experiments/code_vs_prose.py",
        'mixed.eval_splits("test")',
        'mixed.eval_splits("train")',
        (INPUTS_TEXT,),
    ),
    Mutation(
        "code_vs_prose: parent_at_k is the fully trained parent, not its step-k checkpoint",
        "lmc/experiments/code_vs_prose.py",
        "theta_k = training.endpoint(training.load_parent(config, workdir, model, mixed, k))",
        "theta_k = training.endpoint(parent)",
        (INPUTS_TEXT,),
    ),
    Mutation(
        "code_vs_prose: the independent prose child starts from the code child's init",
        "lmc/experiments/code_vs_prose.py",
        "training.Seeds(s, s, s))]",
        "training.Seeds(init, s, s))]",
        (INPUTS_TEXT,),
    ),
    Mutation(
        "merge_many: averaged BatchNorm networks reset on one batch, not eval.bn_reset_batches",
        "lmc/experiments/merge_many.py",
        "stats_batches=int(config.eval.bn_reset_batches), **kwargs,",
        "stats_batches=1, **kwargs,",
        (f"{INPUTS_EVAL}::test_merge_many_resets_its_averages_on_the_reset_batches",),
    ),
    Mutation(
        "pair curves: the train split is every training row, not eval.train_subset",
        "lmc/experiments/common/compare.py",
        '"train_subset": int(config.eval.train_subset) or None,',
        '"train_subset": None,',
        (
            f"{INPUTS_EVAL}::test_reset_statistics_come_from_bn_reset_batches_of_the_whole_training_split",
        ),
    ),
    Mutation(
        "spawn: children start from the parent's initial checkpoint, not step k",
        "lmc/training/siblings.py",
        "return ckpt.restore(step, template)",
        "return ckpt.restore(min(ckpt.steps()), template)",
        (
            "tests/experiments/test_instability_onset.py::"
            "test_outcome_cnn_on_digits_is_unstable_at_init_and_stable_from_midway",
        ),
    ),
    Mutation(
        "lock loss ignored: a run whose workdir lock was taken over keeps writing",
        "lmc/runtime/io/lock.py",
        "        if self.lost:\n            raise LockLost(_lost_message(self, path))",
        "        if False:\n            raise LockLost(_lost_message(self, path))",
        (
            "tests/runtime/test_io_lock.py::test_writes_in_the_workdir_stop_once_the_lock_is_lost",
            "tests/runtime/test_io_lock.py::"
            "test_a_write_renews_a_stale_lease_itself_and_a_checkpoint_save_is_refused",
            "tests/runtime/test_io_lock.py::"
            "test_a_suspended_run_whose_lock_is_taken_over_exits_4_without_writing",
        ),
    ),
    Mutation(
        "lock lease: a write after a suspension does not renew (and so check) the lock",
        "lmc/runtime/io/lock.py",
        "            try:\n                heartbeat(self)",
        "            try:\n                pass",
        (
            "tests/runtime/test_io_lock.py::"
            "test_a_write_renews_a_stale_lease_itself_and_a_checkpoint_save_is_refused",
            "tests/runtime/test_io_lock.py::"
            "test_a_suspended_run_whose_lock_is_taken_over_exits_4_without_writing",
        ),
    ),
    Mutation(
        "GCS lock: writes without the generation precondition (racing runs both win)",
        "lmc/runtime/io/lock.py",
        "        ifGenerationMatch=if_generation,\n",
        "",
        (
            "tests/runtime/test_io_lock.py::test_racing_gcs_acquirers_one_wins_by_generation_precondition",
            "tests/runtime/test_io_lock.py::"
            "test_gcs_heartbeat_and_release_after_a_takeover_are_refused_by_generation",
        ),
    ),
]


def repo_files(root: Path) -> list[str]:
    """Tracked files plus untracked ones git does not ignore (the working tree)."""
    out = subprocess.run(
        ["git", "-C", str(root), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        capture_output=True,
        check=True,
    ).stdout.decode()
    return sorted({f for f in out.split("\0") if f and (root / f).is_file()})


def copy_repo(root: Path, dest: Path) -> None:
    for rel in repo_files(root):
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / rel, target)


def run_tests(copy: Path, tests, timeout: int) -> tuple[int, str, float]:
    env = {**os.environ, "PYTHONPATH": str(copy), "PYTHONDONTWRITEBYTECODE": "1"}
    env.setdefault("JAX_PLATFORMS", "cpu")
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(
            cmd, cwd=copy, env=env, capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        return -1, "timed out", time.perf_counter() - t0
    return proc.returncode, proc.stdout + proc.stderr, time.perf_counter() - t0


def first_failure(output: str) -> str:
    m = re.search(r"^(?:FAILED|ERROR) (\S+)", output, re.M)
    return m.group(1) if m else ""


def check(copy: Path, m: Mutation, timeout: int) -> dict:
    path = copy / m.file
    if not path.is_file():
        return {"status": "not-applicable", "detail": f"{m.file} does not exist"}
    original = path.read_text()
    count = original.count(m.old)
    if count != 1:
        where = "not found" if count == 0 else f"found {count} times"
        return {"status": "not-applicable", "detail": f"snippet {where} in {m.file}"}
    path.write_text(original.replace(m.old, m.new))
    try:
        rc, output, secs = run_tests(copy, m.tests, timeout)
    finally:
        path.write_text(original)
    if rc == 1:
        return {"status": "caught", "detail": first_failure(output), "s": secs}
    if rc == 0:
        return {"status": "MISSED", "detail": "the listed tests passed", "s": secs}
    tail = output.strip().splitlines()[-1:] or [""]
    return {"status": "error", "detail": f"pytest exit {rc}: {tail[0][:200]}", "s": secs}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help="comma-separated substrings of names")
    parser.add_argument("--list", action="store_true", help="print the mutations and exit")
    parser.add_argument("--no-baseline", action="store_true", help="skip the unpatched run")
    parser.add_argument("--timeout", type=int, default=900, help="seconds per pytest run")
    parser.add_argument(
        "--tests",
        nargs="+",
        default=None,
        help="run these tests for every chosen mutation instead of each entry's own "
        "(e.g. to see whether other test files would catch it)",
    )
    args = parser.parse_args(argv)
    chosen = MUTATIONS
    if args.only:
        keys = [k.strip() for k in args.only.split(",") if k.strip()]
        chosen = [m for m in MUTATIONS if any(k in m.name for k in keys)]
    if args.tests:
        chosen = [dataclasses.replace(m, tests=tuple(args.tests)) for m in chosen]
    if args.list or not chosen:
        for m in chosen or MUTATIONS:
            print(f"- {m.name}\n    {m.file}\n    tests: {', '.join(m.tests)}")
        return 0 if chosen else 2

    with tempfile.TemporaryDirectory(prefix="lmc-mutation-") as tmp:
        copy = Path(tmp) / "repo"
        copy_repo(ROOT, copy)
        if not args.no_baseline:
            tests = list(dict.fromkeys(t for m in chosen for t in m.tests))
            rc, output, secs = run_tests(copy, tests, args.timeout)
            print(
                f"baseline (unpatched, {len(tests)} test targets): pytest exit {rc}, {secs:.0f} s"
            )
            if rc != 0:
                print(output[-3000:])
                print("the listed tests fail without any mutation; fix them first")
                return 1
        rows = []
        for m in chosen:
            r = check(copy, m, args.timeout)
            rows.append((m, r))
            secs = f"{r['s']:.0f} s" if "s" in r else "-"
            print(f"{r['status']:>14}  {m.name}  ({secs}) {r['detail']}", flush=True)

    print("\n| mutation | file | result | detail |\n|---|---|---|---|")
    for m, r in rows:
        print(f"| {m.name} | `{m.file}` | {r['status']} | {r['detail']} |")
    counts = {s: sum(r["status"] == s for _, r in rows) for s in ("caught", "MISSED")}
    other = len(rows) - sum(counts.values())
    print(
        f"\n{counts['caught']} caught, {counts['MISSED']} missed, {other} not applicable or error"
    )
    return 0 if counts["caught"] == len(rows) else 1


if __name__ == "__main__":
    sys.exit(main())
