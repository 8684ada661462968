"""Device meshes and logical-axis rules: how the model's named axes land on devices.

The model names every parameter and activation axis (``batch``, ``embed``, ``heads``, ``mlp``...). A list
of rules maps each logical name to a mesh axis (or a tuple of them, or None for replicated). The mesh has
three axes, MaxText-style: ``data`` (pure data parallel), ``fsdp`` (data parallel whose parameters and
optimizer state are also sharded, ZeRO-3 style) and ``tensor`` (Megatron-style splitting of heads and
feed-forward units). One code path runs from one CPU to a pod: a 1x1x1 mesh is just a degenerate case.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
from typing import Any, Callable, Optional, Sequence

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
    if spec is not None and not isinstance(spec, str):
        raise ValueError(f"Bad mesh spec {spec!r}: give a string of AXIS=SIZE pairs, e.g. 'data=2,fsdp=-1'")
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


def rules_to_json(rules: LogicalRules) -> list:
    """Rules as JSON data (tuples of mesh axes become lists); ``rules_from_pairs`` reads them back."""
    return [[name, list(target) if isinstance(target, tuple) else target] for name, target in rules]


class Partitioner:
    """A mesh and its logical-axis rules, built once, and everything derived from the pair.

    Every entry point (training, evaluation, decoding, scoring, ``plan``, ``alexatm_jax.load``) places arrays
    and compiles through one of these, so the same rules lay out parameters, optimizer state, batches and
    activations everywhere. ``partition(fn, in_shardings, out_shardings)`` is ``jax.jit`` with explicit
    shardings whose body traces with the model's logical activation constraints active.

    Args:
      mesh: a ``jax.sharding.Mesh`` with axes (data, fsdp, tensor), or a spec string such as
        ``'data=2,fsdp=-1'`` (see ``parse_mesh_spec``) laid over ``devices`` (default: all devices).
      rules: (logical axis name, mesh axes) pairs; default ``DEFAULT_RULES``.
    """

    def __init__(self, mesh: Mesh | str = "data=-1", rules: Optional[LogicalRules] = None,
                 devices: Optional[Sequence[jax.Device]] = None):
        if not isinstance(mesh, (str, Mesh)):
            raise ValueError(f"mesh {mesh!r} is neither a mesh spec such as 'data=2,fsdp=-1' nor a jax Mesh")
        self.mesh = make_mesh(mesh, devices) if isinstance(mesh, str) else mesh
        missing = [axis for axis in MESH_AXES if axis not in self.mesh.shape]
        if missing:
            raise ValueError(f"the mesh lacks the axes {missing}; build it with alexatm_jax.partitioning.make_mesh")
        self.rules = rules_from_pairs(DEFAULT_RULES if rules is None else rules)

    def __repr__(self):
        sizes = ",".join(f"{axis}={size}" for axis, size in self.mesh.shape.items())
        return f"Partitioner(mesh='{sizes}', rules={len(self.rules)} rules)"

    # ---- Shardings. ----
    def sharding(self, logical_spec: Sequence[Optional[str]] | PartitionSpec) -> NamedSharding:
        """One logical spec, e.g. ('batch', 'length', 'vocab') -> its NamedSharding on the mesh."""
        return NamedSharding(self.mesh, nn.logical_to_mesh_axes(tuple(logical_spec), self.rules))

    def shardings(self, logical_specs: Any) -> Any:
        """A pytree of logical PartitionSpecs (e.g. a model's parameter specs) -> NamedShardings."""
        return logical_to_mesh_sharding(logical_specs, self.mesh, self.rules)

    @property
    def replicated(self) -> NamedSharding:
        return NamedSharding(self.mesh, PartitionSpec())

    @property
    def data_sharding(self) -> NamedSharding:
        """A [batch, length] feature: batch over the data-parallel mesh axes."""
        return self.sharding(("batch", "length"))

    @property
    def data_parallel_size(self) -> int:
        """How many ways the batch axis is split: a global batch must be a multiple of it."""
        spec = self.data_sharding.spec
        axes = spec[0] if spec else None
        axes = () if axes is None else ((axes,) if isinstance(axes, str) else tuple(axes))
        return math.prod(self.mesh.shape[axis] for axis in axes)

    def divisibility_problems(self, abstract_tree: Any, logical_specs: Any) -> list[str]:
        """Each array axis that the rules split over mesh axes whose product does not divide it, named (XLA
        would otherwise fail with a sharding error deep in compilation)."""
        problems = []
        leaves = jax.tree_util.tree_flatten_with_path(abstract_tree)[0]
        specs = jax.tree_util.tree_leaves(logical_specs, is_leaf=lambda x: isinstance(x, PartitionSpec))
        for (path, leaf), spec in zip(leaves, specs):
            mesh_spec = nn.logical_to_mesh_axes(tuple(spec), self.rules)
            for dim, (size, axes) in enumerate(zip(leaf.shape, mesh_spec)):
                axes = () if axes is None else ((axes,) if isinstance(axes, str) else tuple(axes))
                ways = math.prod(self.mesh.shape[a] for a in axes)
                if ways > 1 and size % ways:
                    name = "/".join(str(getattr(k, "key", k)) for k in path)
                    problems.append(f"{name} axis {dim} ({spec[dim]}, size {size}) is not divisible by "
                                    f"{'x'.join(axes)} = {ways} of the mesh")
        return problems

    def batch_shardings(self, names: Sequence[str]) -> dict:
        return {name: self.data_sharding for name in names}

    def pad_batch(self, arrays: Sequence[np.ndarray], pad_values: Sequence[Any]) -> tuple[list, int]:
        """Pads the leading (batch) axis of each array to a multiple of ``data_parallel_size`` with its pad
        value; returns the padded arrays and the original batch size (drop the extra rows from results)."""
        batch = arrays[0].shape[0]
        extra = -batch % self.data_parallel_size
        if not extra:
            return list(arrays), batch
        return [np.concatenate([a, np.full((extra,) + a.shape[1:], value, a.dtype)])
                for a, value in zip(arrays, pad_values)], batch

    # ---- Compilation. ----
    @contextlib.contextmanager
    def activation_context(self):
        """Within a traced function: the model's logical activation constraints take effect."""
        with activation_sharding(self.mesh, self.rules):
            yield

    def partition(self, fn: Callable, in_shardings: Any, out_shardings: Any, donate_argnums=(),
                  static_argnums=()) -> Callable:
        """``jax.jit(fn)`` with explicit input/output shardings; ``fn`` traces under the activation rules."""
        @functools.wraps(fn)
        def constrained(*args, **kwargs):
            with self.activation_context():
                return fn(*args, **kwargs)

        return jax.jit(constrained, in_shardings=in_shardings, out_shardings=out_shardings,
                       donate_argnums=donate_argnums, static_argnums=static_argnums)

    # ---- Persistence: a run's rules travel with its checkpoints. ----
    def to_json(self) -> dict:
        return {"mesh": {axis: int(size) for axis, size in self.mesh.shape.items()},
                "rules": rules_to_json(self.rules)}

    @staticmethod
    def rules_from_json(data: Any, where: str = "partitioning.json") -> tuple:
        try:
            return rules_from_pairs(data["rules"])
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"{where} does not hold valid logical-axis rules ({error}); delete it to use the "
                             f"default rules") from None


PARTITIONING_FILE = "partitioning.json"


def save_rules(directory, partitioner: Partitioner) -> None:
    """Writes the run's mesh and rules as ``DIRECTORY/partitioning.json`` (so load/eval/resume reuse them)."""
    from alexatm_jax import storage
    storage.write_text(storage.resolve(directory) / PARTITIONING_FILE,
                       json.dumps(partitioner.to_json(), indent=2) + "\n")


def load_rules(directory) -> Optional[tuple]:
    """The rules saved in ``DIRECTORY/partitioning.json``, or None if the directory has none."""
    from alexatm_jax import storage
    path = storage.resolve(directory) / PARTITIONING_FILE
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path} is not valid JSON ({error}); delete it to use the default rules") from None
    return Partitioner.rules_from_json(data, str(path))
