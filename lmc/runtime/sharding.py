"""Device mesh, shardings and batch placement for data-parallel (optionally FSDP) runs.

The mesh has two axes, `data` and `fsdp`; a batch is split along both (every device
sees different examples), parameters are replicated unless `fsdp` > 1, in which case
each large array is split along one dimension over the `fsdp` axis (ZeRO-3 style; XLA
inserts the all-gathers and reduce-scatters). Configured by `config.mesh`:

    config.mesh.data = -1          # devices on the data axis; -1: all the rest
    config.mesh.fsdp = 1           # devices each parameter is split over
    config.mesh.fsdp_min_size = 2**16   # arrays with fewer elements stay replicated

A missing `config.mesh` (or None) means all devices on `data`. Within one process the
mesh may use fewer devices than there are (the first data*fsdp); across processes it
must use all of them, since every process feeds its devices' share of each batch.

Batches are placed with `jax.make_array_from_process_local_data`: each process loads
only the rows its own devices hold (`process_slot`), from the same pure
(data_seed, step) order, so the global batch equals the single-process one whatever
the process count. For data every process holds in full (evaluation sets) use
`shard_host_batch`, which takes the process's rows and places them the same way:

    mesh = sharding.mesh_from_config(config)
    params = sharding.replicate(params, mesh)
    for xb, yb, mask in padded_batches(x, y, sharding.round_batch(batch_size, mesh)):
        xb, yb, mask = sharding.shard_host_batch((xb, yb, mask), mesh)
        sums += jitted_eval(params, xb, yb, mask)   # runs data-parallel on the mesh
"""

from __future__ import annotations

import logging
import math

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from lmc.errors import UserError

log = logging.getLogger(__name__)

DATA, FSDP = "data", "fsdp"
AXES = (DATA, FSDP)
BATCH_AXES = (DATA, FSDP)  # the batch dimension is split over both mesh axes
MESH_KEYS = ("data", "fsdp", "fsdp_min_size")
DEFAULT_FSDP_MIN_SIZE = 2**16


def _mesh_spec(config) -> dict:
    spec = config.get("mesh", None) if config is not None else None
    if spec is None:
        return {}
    if not hasattr(spec, "items"):
        raise UserError(f"config.mesh must be a dict like {{'data': -1, 'fsdp': 1}}, got {spec!r}")
    spec = dict(spec.items())
    unknown = sorted(set(spec) - set(MESH_KEYS))
    if unknown:
        raise UserError(f"unknown config.mesh keys {unknown}; valid: {', '.join(MESH_KEYS)}")
    return spec


def fsdp_min_size(config) -> int:
    return int(_mesh_spec(config).get("fsdp_min_size", DEFAULT_FSDP_MIN_SIZE))


def mesh_from_config(config) -> Mesh:
    """The mesh `config.mesh` asks for (default: every device on the data axis)."""
    spec = _mesh_spec(config)
    return make_mesh(int(spec.get("data", -1)), int(spec.get("fsdp", 1)))


def make_mesh(data: int = -1, fsdp: int = 1, devices=None) -> Mesh:
    """A (data, fsdp) mesh; `data=-1` takes all devices not used by `fsdp`."""
    devices = list(jax.devices() if devices is None else devices)
    total = len(devices)
    if fsdp < 1 or total % fsdp:
        raise UserError(
            f"config.mesh.fsdp={fsdp} must be a positive divisor of the {total} devices"
        )
    if data == -1:
        data = total // fsdp
    if data < 1 or data * fsdp > total:
        raise UserError(
            f"config.mesh asks for data={data} x fsdp={fsdp} = {data * fsdp} devices, but "
            f"{total} are available; use data=-1 for all of them"
        )
    if data * fsdp < total:
        if jax.process_count() > 1:
            raise UserError(
                f"config.mesh uses {data * fsdp} of {total} devices, but a multi-process run "
                "must use all of them (each process feeds its own devices); set "
                "config.mesh.data=-1"
            )
        log.info("mesh uses %d of %d devices", data * fsdp, total)
        devices = devices[: data * fsdp]
    mesh = jax.make_mesh((data, fsdp), AXES, axis_types=(AxisType.Auto,) * 2, devices=devices)
    if not _process_contiguous(mesh):
        # The topology-aware order interleaves processes along the batch axis; order by
        # process instead, so each process's rows of a batch are one contiguous block.
        ordered = sorted(devices, key=lambda d: (d.process_index, d.id))
        mesh = Mesh(
            np.asarray(ordered, dtype=object).reshape(data, fsdp),
            AXES,
            axis_types=(AxisType.Auto,) * 2,
        )
    return mesh


def _process_contiguous(mesh: Mesh) -> bool:
    owners = [d.process_index for d in mesh.devices.reshape(-1)]
    runs = [p for i, p in enumerate(owners) if i == 0 or owners[i - 1] != p]
    return len(runs) == len(set(runs))


def batch_devices(mesh: Mesh) -> int:
    """How many ways a batch is split (devices along the batch axes)."""
    return math.prod(mesh.shape[a] for a in BATCH_AXES)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) dimension split over the data and fsdp axes, the rest replicated."""
    return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def check_batch_size(batch_size: int, mesh: Mesh, what: str = "config.batch_size") -> None:
    n = batch_devices(mesh)
    if batch_size % n:
        lower = batch_size // n * n
        raise UserError(
            f"{what}={batch_size} is not divisible by the {n} devices the batch is split "
            f"over (mesh {dict(mesh.shape)}); use a multiple of {n} (e.g. "
            f"{lower or n} or {lower + n}), or fewer devices with config.mesh.data"
        )


def round_batch(batch_size: int, mesh: Mesh) -> int:
    """`batch_size` rounded up to a multiple of the batch-axis device count."""
    n = batch_devices(mesh)
    return -(-batch_size // n) * n


def state_shardings(tree, mesh: Mesh, min_size: int = DEFAULT_FSDP_MIN_SIZE):
    """A NamedSharding per leaf: replicated, or (fsdp > 1) split along the largest
    dimension divisible by the fsdp size for arrays of at least `min_size` elements.

    The rule depends only on shapes, so optimizer moments get their parameter's layout.
    """
    n = mesh.shape[FSDP]

    def rule(leaf):
        shape = tuple(getattr(leaf, "shape", ()))
        if n > 1 and shape and math.prod(shape) >= min_size:
            for dim in sorted(range(len(shape)), key=lambda d: -shape[d]):
                if shape[dim] % n == 0:
                    spec = [None] * len(shape)
                    spec[dim] = FSDP
                    return NamedSharding(mesh, P(*spec))
        return NamedSharding(mesh, P())

    return jax.tree.map(rule, tree)


def place(tree, shardings):
    """Put every leaf of `tree` (host or device arrays, the same on every process) onto
    its sharding (a tree of shardings, or one for all leaves)."""
    if jax.process_count() == 1:
        return jax.device_put(tree, shardings)
    if isinstance(shardings, jax.sharding.Sharding):
        shardings = jax.tree.map(lambda _: shardings, tree)

    # Across processes, build each global array from the host copy every process has:
    # device_put's result does not survive Orbax's serialization in jax 0.10.
    def put(x, s):
        host = np.asarray(x)
        return jax.make_array_from_callback(host.shape, s, lambda idx: host[idx])

    return jax.tree.map(put, tree, shardings)


def replicate(tree, mesh: Mesh | None = None):
    """`tree` replicated on every device of `mesh` (default: all devices on `data`)."""
    mesh = make_mesh() if mesh is None else mesh
    return place(tree, replicated(mesh))


def process_slot(mesh: Mesh, global_batch: int) -> tuple[int, int]:
    """(slot, num_slots): this process feeds rows [slot*share, (slot+1)*share) of every
    global batch, share = global_batch // num_slots; read off the batch sharding so it
    holds whatever the mesh's device order."""
    n = jax.process_count()
    if n == 1:
        return 0, 1
    index_map = batch_sharding(mesh).addressable_devices_indices_map((global_batch,))
    starts = sorted({idx[0].start or 0 for idx in index_map.values()})
    stops = sorted({idx[0].stop or global_batch for idx in index_map.values()})
    share = global_batch // n
    start, stop = starts[0], stops[-1]
    if stop - start != share or start % share:
        raise UserError(
            f"process {jax.process_index()}'s devices hold rows [{start}, {stop}) of a batch of "
            f"{global_batch}, not one contiguous 1/{n} share; give every process the same "
            "number of devices"
        )
    return start // share, n


def shard_batch(local, mesh: Mesh, global_batch: int):
    """Global arrays, split over the batch axes, from this process's rows of a batch
    (`local`: a tree of arrays with `global_batch // num_slots` rows each)."""
    sharding = batch_sharding(mesh)

    def put(x):
        x = np.asarray(x)
        return jax.make_array_from_process_local_data(sharding, x, (global_batch, *x.shape[1:]))

    return jax.tree.map(put, local)


def shard_host_batch(batch, mesh: Mesh):
    """Like `shard_batch`, for a batch that every process holds in full (eval sets)."""
    leaves = jax.tree.leaves(batch)
    global_batch = int(np.shape(leaves[0])[0])
    check_batch_size(global_batch, mesh, what="evaluation batch size")
    slot, num_slots = process_slot(mesh, global_batch)
    share = global_batch // num_slots
    local = jax.tree.map(lambda x: np.asarray(x)[slot * share : (slot + 1) * share], batch)
    return shard_batch(local, mesh, global_batch)


def to_local(tree):
    """Every leaf as a single-device array on this process's first local device (what
    unsharded code expects), gathering sharded leaves across processes if needed."""
    device = jax.local_devices()[0]

    def get(x):
        if not isinstance(x, jax.Array):
            return x
        if x.is_fully_addressable:
            return jax.device_put(x, device)
        if x.is_fully_replicated:
            return jax.device_put(x.addressable_data(0), device)
        from jax.experimental import multihost_utils

        return jax.device_put(multihost_utils.process_allgather(x, tiled=True), device)

    return jax.tree.map(get, tree)


def describe(mesh: Mesh) -> str:
    return (
        f"mesh {dict(mesh.shape)} over {mesh.devices.size} {jax.default_backend()} device(s), "
        f"{jax.process_count()} process(es)"
    )
