"""Device mesh, the one logical-axis rules table, and sharded construction of train state and batches."""

import math
from typing import Any, Callable

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from r1jax.config import MeshConfig, ModelConfig
from r1jax.errors import ConfigError

MESH_AXES = ("data", "fsdp", "expert", "tensor")
BATCH_AXES = ("data", "fsdp", "expert")  # the batch is split over every axis but tensor

# Logical axis name -> mesh axes. Layers speak only these logical names; mesh axis names live only here.
RULES = (
  # parameters
  ("vocab", "tensor"),
  ("embed", "fsdp"),
  ("heads", "tensor"),
  ("kv", None),
  ("mlp", "tensor"),
  ("expert", "expert"),
  ("norm", None),
  # activations
  ("act_batch", BATCH_AXES),
  ("act_expert_batch", ("data", "fsdp")),  # MoE expert buffers: the batch leaves the expert axis to the experts
  ("act_expert", "expert"),
  ("act_length", None),
  ("act_embed", None),
  ("act_heads", "tensor"),
  ("act_kv", None),
  ("act_mlp", "tensor"),
  ("act_vocab", "tensor"),
)


def mesh_shape(cfg: MeshConfig, num_devices: int) -> tuple[int, ...]:
  """Resolves -1 and checks the product against the device count (ConfigError naming the fix)."""
  sizes = [getattr(cfg, a) for a in MESH_AXES]
  fixed = math.prod(s for s in sizes if s != -1)
  if -1 in sizes:
    if num_devices % fixed:
      raise ConfigError(
        f"mesh: fixed axes {dict(zip(MESH_AXES, sizes))} (product {fixed}) do not divide the "
        f"{num_devices} devices. Fix: choose sizes whose product divides {num_devices}."
      )
    sizes[sizes.index(-1)] = num_devices // fixed
  if math.prod(sizes) != num_devices:
    raise ConfigError(
      f"mesh: {dict(zip(MESH_AXES, sizes))} has {math.prod(sizes)} devices but "
      f"{num_devices} are available. Fix: make the product equal {num_devices}, or set one axis "
      "to -1 (e.g. --config.mesh.data=-1)."
    )
  return tuple(sizes)


def platform() -> str:
  """The platform a program is traced for: the devices of the mesh set by `jax.set_mesh` (a GPU target's compile-only
  devices when compiling for a GPU without one, r1jax/lab/aot.py), else the default backend. The automatic kernel
  choices (cuDNN attention, MoE's grouped matmul) key on this, not on the process's backend."""
  mesh = jax.sharding.get_abstract_mesh()  # inside jit too (get_mesh is not)
  device = None if mesh.empty else getattr(mesh, "abstract_device", None)
  return device.platform if device is not None else jax.default_backend()


def make_mesh(cfg: MeshConfig, devices=None) -> Mesh:
  """A mesh with Auto axes (Linen's logical constraints need Auto; jax.make_mesh defaults to Explicit)."""
  if devices is None:
    devices = jax.devices()
    if cfg.devices:
      if cfg.devices > len(devices) or jax.process_count() > 1:
        raise ConfigError(
          f"mesh.devices={cfg.devices}: only {len(devices)} devices in {jax.process_count()} "
          "process(es). Fix: use 0 (all devices), or a smaller count in single-process runs."
        )
      devices = devices[: cfg.devices]
  shape = mesh_shape(cfg, len(devices))
  return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES), devices=devices)


def check_divisibility(model: ModelConfig, batch_size: int, eval_batch_size: int, mesh: Mesh) -> None:
  """Sharded dimensions must divide evenly; raises ConfigError before compilation otherwise."""
  n_batch = math.prod(mesh.shape[a] for a in BATCH_AXES)
  checks = [
    ("data.batch_size", batch_size, n_batch, "data*fsdp*expert mesh axes"),
    ("data.eval_batch_size", eval_batch_size, n_batch, "data*fsdp*expert mesh axes"),
    ("model.num_heads", model.num_heads, mesh.shape["tensor"], "mesh.tensor"),
    ("model.num_kv_heads", model.num_kv_heads or model.num_heads, mesh.shape["tensor"], "mesh.tensor"),
    ("model.d_ff", model.hidden_ff, mesh.shape["tensor"], "mesh.tensor"),
    ("model.d_model", model.d_model, mesh.shape["fsdp"], "mesh.fsdp"),
    ("model.pad_vocab_to", model.padded_vocab, mesh.shape["tensor"], "mesh.tensor"),
  ]
  for kind in ("mixer", "ffn"):  # option sets that shard their own dimensions (e.g. MoE experts) say which
    for name in sorted(set(model.layer_names(kind))):
      opts = model.options(kind, name)
      for field, value, axis in getattr(opts, "sharded_dims", lambda m: [])(model):
        checks.append((f"model.{kind}_options.{name}.{field}", value, mesh.shape[axis], f"mesh.{axis}"))
  for field, value, parts, axis in checks:
    if value % parts:
      raise ConfigError(f"{field}={value} is not divisible by {axis}={parts}. Fix: change {field} or the mesh.")


def logical_shardings(abstract_boxed: Any, mesh: Mesh) -> Any:
  """NamedShardings for a tree of (possibly LogicallyPartitioned) abstract values; unboxed structure."""
  specs = nn.get_partition_spec(abstract_boxed)
  return nn.logical_to_mesh_sharding(specs, mesh, RULES)


def init_sharded(init_fn: Callable[[jax.Array], Any], rng: jax.Array, mesh: Mesh) -> tuple[Any, Any]:
  """Runs `init_fn(rng)` (returning boxed params inside any pytree) directly into its shardings.

  Shapes come from `jax.eval_shape`, specs from the logical names, and the init is jitted with those
  out_shardings, so no full copy of the parameters ever lives on one device.

  Returns:
    (unboxed tree of global arrays, matching tree of NamedShardings).
  """
  with jax.set_mesh(mesh), nn.logical_axis_rules(RULES):
    abstract = jax.eval_shape(init_fn, rng)
    shardings = logical_shardings(abstract, mesh)
    tree = jax.jit(lambda r: nn.unbox(init_fn(r)), out_shardings=shardings)(rng)
  return tree, shardings


def batch_sharding(mesh: Mesh, ndim: int) -> NamedSharding:
  return NamedSharding(mesh, P(BATCH_AXES, *([None] * (ndim - 1))))


def put_batch(
  batch: dict[str, np.ndarray], mesh: Mesh, rows: np.ndarray | None = None, total: int = 0
) -> dict[str, jax.Array]:
  """Numpy batch -> global arrays sharded over the batch axes (each process fills its own shards). `batch` is the
  global batch, or, with `rows`, only those rows (sorted global indices, at least this process's) of a global batch
  of `total` rows."""
  if rows is not None:
    where = np.zeros(total, np.int64)
    where[rows] = np.arange(len(rows))  # global row -> its row in `batch`

  def put(x: np.ndarray) -> jax.Array:
    if rows is None:
      return jax.make_array_from_callback(x.shape, batch_sharding(mesh, x.ndim), lambda idx: x[idx])
    return jax.make_array_from_callback(
      (total,) + x.shape[1:],
      batch_sharding(mesh, x.ndim),
      lambda idx: x[(where[np.arange(total)[idx[0]]],) + tuple(idx[1:])],
    )

  return {k: put(v) for k, v in batch.items()}


def local_rows(mesh: Mesh, rows: int) -> np.ndarray:
  """The rows of a global batch of `rows` rows that this process's devices hold (all of them in one process)."""
  held = batch_sharding(mesh, 1).addressable_devices_indices_map((rows,)).values()
  return np.unique(np.concatenate([np.arange(rows)[idx[0]] for idx in held]))


def put_train_batch(data, step: int, mesh: Mesh) -> dict[str, jax.Array]:
  """Step `step`'s training batch as global arrays. A dataset with `reads_rows` reads only this process's rows
  (`data.train_batch(step, rows)`: each host reads its part of the global batch); others build the global batch."""
  if not getattr(data, "reads_rows", False):
    return put_batch(data.train_batch(step), mesh)
  rows = local_rows(mesh, data.cfg.batch_size)
  return put_batch(data.train_batch(step, rows), mesh, rows, data.cfg.batch_size)


def split_axes(logical: str) -> tuple[str, ...]:
  """The mesh axes of the current mesh (jax.set_mesh) that split the logical axis `logical` (size > 1), in order."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty:
    return ()
  axes = nn.logical_to_mesh_axes((logical,))[0]
  axes = (axes,) if isinstance(axes, str) else tuple(axes or ())
  return tuple(a for a in axes if a in mesh.axis_names and mesh.shape[a] > 1)


def vary_together(*arrays: jax.Array) -> list[jax.Array]:
  """The arrays cast to vary over the same shard_map axes, the union of theirs (a Pallas call's operands and outputs
  must agree; the cast's transpose sums a gradient over the devices that shared an operand). Outside shard_map: as
  they are."""
  vary = [jax.typeof(a).manual_axis_type.varying for a in arrays]
  every = frozenset().union(*vary)
  return [jax.lax.pcast(a, tuple(sorted(every - v)), to="varying") if every - v else a for a, v in zip(arrays, vary)]


def shaped_like(x: jax.Array, shape, dtype) -> jax.ShapeDtypeStruct:
  """An output shape varying over the same shard_map axes as `x` (a Pallas call's out_shape inside shard_map)."""
  return jax.ShapeDtypeStruct(shape, dtype, manual_axis_type=jax.typeof(x).manual_axis_type)
