"""Device meshes and logical-axis rules: how the model's named axes land on devices.

The model names every parameter and activation axis (``batch``, ``embed``, ``heads``, ``mlp``...). A list
of rules maps each logical name to a mesh axis (or a tuple of them, or None for replicated). The mesh has
three axes, MaxText-style: ``data`` (pure data parallel), ``fsdp`` (data parallel whose parameters and
optimizer state are also sharded, ZeRO-3 style) and ``tensor`` (Megatron-style splitting of heads and
feed-forward units). One code path runs from one CPU to a pod: a 1x1x1 mesh is just a degenerate case.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any, Optional, Sequence

import jax
import numpy as np
import flax.linen as nn
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")

LogicalRules = Sequence[tuple[str, Any]]

# Batch splits over data and fsdp; parameters shard their `embed` axis over fsdp (so each fsdp rank holds
# a slice of every weight, gathered just in time), and heads / mlp / vocab over tensor.
DEFAULT_RULES: tuple[tuple[str, Any], ...] = (
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("kv", None),
    ("mlp", "tensor"),
    ("vocab", "tensor"),
    ("layers", None),
    ("abspos", None),
    ("token_type", None),
)


def parse_mesh_spec(spec: str, num_devices: Optional[int] = None) -> dict[str, int]:
    """'data=2,fsdp=2,tensor=2' -> {'data': 2, 'fsdp': 2, 'tensor': 2}. Missing axes are 1; one axis may be
    -1, meaning all the devices the others leave. The product must equal the number of devices."""
    num_devices = jax.device_count() if num_devices is None else num_devices
    sizes = {axis: 1 for axis in MESH_AXES}
    spec = (spec or "").strip()
    for part in filter(None, (p.strip() for p in spec.split(","))):
        if "=" not in part:
            raise ValueError(f"Bad mesh spec {spec!r}: {part!r} is not AXIS=SIZE (e.g. 'data=2,fsdp=-1')")
        axis, _, size = part.partition("=")
        axis = axis.strip()
        if axis not in MESH_AXES:
            raise ValueError(f"Bad mesh spec {spec!r}: unknown axis {axis!r}; axes are {MESH_AXES}")
        try:
            sizes[axis] = int(size)
        except ValueError:
            raise ValueError(f"Bad mesh spec {spec!r}: size {size!r} of {axis} is not an integer") from None
    wildcards = [a for a, s in sizes.items() if s == -1]
    if len(wildcards) > 1:
        raise ValueError(f"Bad mesh spec {spec!r}: only one axis may be -1")
    if any(s == 0 or s < -1 for s in sizes.values()):
        raise ValueError(f"Bad mesh spec {spec!r}: sizes must be positive (or -1 for the rest)")
    known = math.prod(s for s in sizes.values() if s != -1)
    if wildcards:
        if num_devices % known:
            raise ValueError(f"Mesh {spec!r} does not divide the {num_devices} devices: the fixed axes "
                             f"need a multiple of {known}. Change the sizes or the device count.")
        sizes[wildcards[0]] = num_devices // known
    if math.prod(sizes.values()) != num_devices:
        raise ValueError(
            f"Mesh {spec!r} has {math.prod(sizes.values())} devices but {num_devices} are available; "
            f"make the sizes multiply to {num_devices} (use -1 on one axis for 'the rest').")
    return sizes


def make_mesh(spec: str = "data=-1", devices: Optional[Sequence[jax.Device]] = None) -> Mesh:
    """A Mesh with axes (data, fsdp, tensor) over ``devices`` (default: all, across every process)."""
    devices = list(jax.devices() if devices is None else devices)
    sizes = parse_mesh_spec(spec, len(devices))
    shape = tuple(sizes[a] for a in MESH_AXES)
    try:
        # Topology-aware placement (keeps tensor-parallel groups on fast links) where JAX knows the topology.
        from jax.experimental import mesh_utils
        device_array = mesh_utils.create_device_mesh(shape, devices=devices, allow_split_physical_axes=True)
    except Exception:  # CPU and unknown topologies: plain row-major order is what we want there.
        device_array = np.asarray(devices).reshape(shape)
    return Mesh(device_array, MESH_AXES)


def logical_to_mesh_sharding(logical_specs: Any, mesh: Mesh, rules: LogicalRules = DEFAULT_RULES) -> Any:
    """A pytree of logical PartitionSpecs -> the same tree of NamedShardings on ``mesh``."""
    return jax.tree_util.tree_map(
        lambda spec: NamedSharding(mesh, nn.logical_to_mesh_axes(spec, rules)),
        logical_specs, is_leaf=lambda x: isinstance(x, PartitionSpec))


def params_logical_specs(model: nn.Module, *init_args, **init_kwargs) -> Any:
    """Logical PartitionSpecs of ``model``'s parameters, from abstract shapes (nothing is allocated)."""
    abstract = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), *init_args, **init_kwargs))
    return nn.get_partition_spec(abstract)["params"]


def data_sharding(mesh: Mesh, rules: LogicalRules = DEFAULT_RULES) -> NamedSharding:
    """Sharding of a [batch, length] input array: batch over the data-parallel axes."""
    return NamedSharding(mesh, nn.logical_to_mesh_axes(("batch", "length"), rules))


def rules_from_pairs(pairs: Sequence[Sequence[Any]]) -> tuple[tuple[str, Any], ...]:
    """Validates rules given as data (gin, JSON): each (logical_name, mesh_axis | [mesh_axes] | None)."""
    rules = []
    for pair in pairs:
        if len(pair) != 2:
            raise ValueError(f"Bad logical-axis rule {pair!r}: expected (logical_name, mesh_axes)")
        name, target = pair
        targets = () if target is None else ((target,) if isinstance(target, str) else tuple(target))
        unknown = [t for t in targets if t not in MESH_AXES]
        if unknown:
            raise ValueError(f"Logical-axis rule {pair!r} names unknown mesh axes {unknown}; "
                             f"mesh axes are {MESH_AXES}")
        rules.append((name, None if target is None else (target if isinstance(target, str) else tuple(target))))
    return tuple(rules)


@contextlib.contextmanager
def activation_sharding(mesh: Mesh, rules: LogicalRules = DEFAULT_RULES):
    """Within a traced (jitted) function: makes the model's logical activation constraints
    (``nn.with_logical_constraint``) take effect on ``mesh`` under ``rules``. Without it they are no-ops."""
    with jax.sharding.use_abstract_mesh(mesh.abstract_mesh), nn.logical_axis_rules(tuple(rules)):
        yield
