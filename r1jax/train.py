"""Training: AdamW + warm-up/cosine, a pure jitted train step with NamedShardings, the loop (evaluation by the
run's evaluators, r1jax/evaluators.py), logs, checkpoints."""

import dataclasses
import os
import re
import time
from typing import Any, Callable

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from tqdm import tqdm  # a text bar everywhere (tqdm.auto warns in notebooks without ipywidgets)

from r1jax import atomic, evaluators, provenance, sharding
from r1jax.checkpoint import Checkpointer, latest_step
from r1jax.config import Config, DistConfig, ModelConfig, OptimConfig, to_dict
from r1jax.data.core import make_dataset
from r1jax.errors import ConfigError, NonFiniteError
from r1jax.model import Transformer, make_model
from r1jax.objective import forward
from r1jax.writers import MetricWriter


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # int32 scalar: optimizer steps taken
  params: Any
  opt_state: Any
  model_state: Any  # non-parameter variable collections updated by the forward pass (e.g. routing biases)


def make_optimizer(
  cfg: OptimConfig, steps: int, phases: tuple[int, ...] = (0,)
) -> tuple[optax.Schedule, optax.GradientTransformation]:
  """AdamW with linear warm-up and cosine decay to lr*min_lr_ratio (restarted at each data phase start in `phases`
  with `cfg.restart_per_phase`); weight decay on matrices only."""
  starts = sorted({0, *(p for p in phases if 0 < p < steps)}) if cfg.restart_per_phase else [0]
  ends = starts[1:] + [steps]
  schedule = optax.join_schedules(
    [
      optax.warmup_cosine_decay_schedule(
        0.0, cfg.lr, cfg.warmup_steps, max(end - start, cfg.warmup_steps + 1), cfg.lr * cfg.min_lr_ratio
      )
      for start, end in zip(starts, ends)
    ],
    starts[1:],
  )
  decay_mask = lambda params: jax.tree.map(lambda p: p.ndim >= 2, params)
  adamw = optax.adamw(schedule, cfg.b1, cfg.b2, cfg.eps, weight_decay=cfg.weight_decay, mask=decay_mask)
  return schedule, optax.chain(optax.clip_by_global_norm(cfg.grad_clip), adamw) if cfg.grad_clip else adamw


def resolve_model_config(cfg: ModelConfig, data_vocab: int) -> ModelConfig:
  """Fills vocab_size from the dataset (0) or checks that the configured one covers it."""
  if cfg.vocab_size == 0:
    return dataclasses.replace(cfg, vocab_size=data_vocab)
  if cfg.vocab_size < data_vocab:
    raise ConfigError(
      f"model.vocab_size={cfg.vocab_size} is smaller than the dataset's {data_vocab} tokens. "
      "Fix: set --config.model.vocab_size=0 to take it from the data."
    )
  return cfg


def param_name(path) -> str:
  """A parameter's name from its pytree path, as optim.trainable and train.init_from see it: 'layer0/mixer/wq'."""
  return "/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path)


def trainable_mask(params: Any, pattern: str) -> Any:
  """A pytree of Python bools like `params`: True where `pattern` (optim.trainable) is found in the name; all True
  for an empty pattern."""
  rx = re.compile(pattern) if pattern else None
  return jax.tree_util.tree_map_with_path(lambda path, _: rx is None or bool(rx.search(param_name(path))), params)


def make_train_step(
  model: Transformer, tx: optax.GradientTransformation, schedule: optax.Schedule, trainable: str = ""
):
  """The pure step `train_step(state, batch, rng) -> (state, metrics)`; the step is folded into the key. Parameters
  outside `trainable` (optim.trainable) get no gradient and come out as the very arrays that went in."""

  def train_step(state: TrainState, batch: dict, base_rng: jax.Array) -> tuple[TrainState, dict]:
    rng = jax.random.fold_in(base_rng, state.step)
    mask = trainable_mask(state.params, trainable)

    def objective(params):
      params = jax.tree.map(lambda m, p: p if m else jax.lax.stop_gradient(p), mask, params)
      total, metrics, _, new_state = forward(model, params, state.model_state, batch, rng, deterministic=False)
      return total, (metrics, new_state)

    (_, (metrics, model_state)), grads = jax.value_and_grad(objective, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = jax.tree.map(
      lambda m, new, old: new if m else old, mask, optax.apply_updates(state.params, updates), state.params
    )
    metrics = {f"train/{k}": v for k, v in metrics.items()}
    metrics.update({"train/grad_norm": optax.tree.norm(grads), "train/lr": schedule(state.step)})
    return TrainState(state.step + 1, params, opt_state, model_state), metrics

  return train_step


def initial_state(
  model: Transformer, tx: optax.GradientTransformation, batch: dict[str, np.ndarray], rng: jax.Array
) -> TrainState:
  """A fresh TrainState for batches shaped like `batch`, its parameters boxed with their logical axis names."""
  inputs = jnp.zeros(batch["inputs"].shape, batch["inputs"].dtype)  # token ids, or video patches
  pos = jnp.zeros(batch["target_pos"].shape, jnp.int32) if "target_pos" in batch else None
  variables = model.init({"params": rng, "dropout": rng}, inputs, target_pos_BxN=pos)
  params = variables.pop("params")
  return TrainState(jnp.zeros((), jnp.int32), params, tx.init(params), dict(variables))


def init_train_state(
  model: Transformer, tx: optax.GradientTransformation, batch: dict[str, np.ndarray], seed: int, mesh
) -> tuple[TrainState, Any]:
  """Sharded TrainState for batches shaped like `batch` (see sharding.init_sharded), and its shardings."""
  return sharding.init_sharded(lambda rng: initial_state(model, tx, batch, rng), jax.random.key(seed), mesh)


def compile_train_step(
  model: Transformer,
  tx: optax.GradientTransformation,
  schedule: optax.Schedule,
  state: TrainState,
  state_sh: Any,
  batch: dict[str, jax.Array],
  rng: jax.Array,
  mesh,
  trainable: str = "",
):
  """The train step jitted with the state's shardings in and out (state donated), compiled for `batch`'s shapes
  and shardings (as placed by sharding.put_batch)."""
  replicated = NamedSharding(mesh, P())
  with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.RULES):
    step = jax.jit(
      make_train_step(model, tx, schedule, trainable),
      donate_argnums=0,
      in_shardings=(state_sh, None, replicated),
      out_shardings=(state_sh, replicated),
    )
    return step.lower(state, batch, rng).compile()


def init_distributed(cfg: DistConfig) -> None:
  """jax.distributed.initialize() for multi-process runs (once per process)."""
  if (cfg.auto or cfg.num_processes > 1) and not jax.distributed.is_initialized():
    if cfg.auto:
      jax.distributed.initialize()
    else:
      jax.distributed.initialize(
        cfg.coordinator_address, cfg.num_processes, cfg.process_id if cfg.process_id >= 0 else None
      )


def static_memory_bytes(compiled) -> float:
  """XLA's estimate of a compiled executable's memory: arguments + outputs + temporaries - donated aliases."""
  m = compiled.memory_analysis()
  if m is None:
    return float("nan")
  return float(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes - m.alias_size_in_bytes)


def peak_memory_bytes(compiled) -> float:
  """Peak device memory: runtime peak where the backend reports it (GPU/TPU), else XLA's static estimate."""
  stats = jax.local_devices()[0].memory_stats() or {}
  if "peak_bytes_in_use" in stats:
    return float(stats["peak_bytes_in_use"])
  return static_memory_bytes(compiled)


def compiled_flops(compiled) -> float:
  """FLOPs of one call of a compiled executable (per device under SPMD), from XLA's cost analysis."""
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float((cost or {}).get("flops", float("nan")))


def start_from_run(state: TrainState, workdir: str) -> tuple[TrainState, dict]:
  """`state` with the parameters and model state of the run in `workdir` (its latest checkpoint) wherever their
  names match, placed in `state`'s shardings; the rest keep their init, the optimizer state and step stay fresh.
  Returns (state, {"workdir", "step", "restored": count, "new": names not in the source run})."""
  source_ckpt = Checkpointer(workdir, 1, create=False)
  try:
    saved, meta = source_ckpt.restore_raw()
  finally:
    source_ckpt.close()
  info = {"workdir": os.path.abspath(workdir), "step": int(meta["step"]), "restored": 0, "new": []}

  def take(collection: str):
    source = {param_name(p): v for p, v in jax.tree_util.tree_flatten_with_path(saved.get(collection, {}))[0]}

    def one(path, current):
      name = param_name(path)
      if name not in source:
        info["new"].append(f"{collection}/{name}")
        return current
      value = np.asarray(source[name])
      if value.shape != current.shape:
        raise ConfigError(
          f"train.init_from: {collection} '{name}' has shape {value.shape} in {workdir!r} but "
          f"{current.shape} in this model. Fix: start from a run of the same sizes, or leave "
          "train.init_from empty."
        )
      info["restored"] += 1
      value = value.astype(current.dtype)
      return jax.make_array_from_callback(current.shape, current.sharding, lambda idx: value[idx])

    return jax.tree_util.tree_map_with_path(one, getattr(state, collection))

  params, model_state = take("params"), take("model_state")
  return state.replace(params=params, model_state=model_state), info


class Run:
  """One training run, built and validated up front (bad configs and data fail before anything compiles)."""

  def __init__(self, cfg: Config, eval_steps: dict[str, Callable] | None = None):
    """`eval_steps`: evaluator name -> a step function to use instead of the compiled one (tests)."""
    init_distributed(cfg.dist)
    self.data = make_dataset(cfg.data, cfg.seed)
    self.cfg = cfg = dataclasses.replace(cfg, model=resolve_model_config(cfg.model, self.data.vocab_size))
    self.mesh = sharding.make_mesh(cfg.mesh)
    eval_rows = cfg.data.eval_batch_size or cfg.data.batch_size
    sharding.check_divisibility(cfg.model, cfg.data.batch_size, eval_rows, self.mesh)
    self.model = make_model(cfg.model)
    self.schedule, self.tx = make_optimizer(cfg.optim, cfg.train.steps, self.data.phases)
    self.is_main = jax.process_index() == 0
    self.replicated = NamedSharding(self.mesh, P())
    self.evaluation = evaluators.Evaluation(self, cfg.train.evaluators, eval_steps)
    if cfg.train.init_from and latest_step(cfg.train.init_from) is None:
      raise ConfigError(
        f"train.init_from={cfg.train.init_from!r} holds no checkpoint. Fix: pass the workdir of a "
        "run that has saved one (its <workdir>/checkpoints), or train that run first."
      )

  def init_state(self) -> tuple[TrainState, Any]:
    """Sharded TrainState from abstract shapes (see sharding.init_sharded) and its shardings."""
    return init_train_state(self.model, self.tx, self.data.train_batch(0), self.cfg.seed, self.mesh)

  def evaluate(self, state: TrainState) -> dict[str, float]:
    """Every evaluator of train.evaluators on `state` (r1jax/evaluators.py)."""
    return self.evaluation(state)

  def _start(self) -> tuple[TrainState, Any, int, dict | None]:
    """The state the loop starts from: this run's latest checkpoint, else train.init_from's parameters, else a fresh
    init. Returns (state, its shardings, the step, where init_from took its parameters or None)."""
    cfg, tc = self.cfg, self.cfg.train
    state, state_sh = self.init_state()
    if not any(jax.tree.leaves(trainable_mask(state.params, cfg.optim.trainable))):
      names = [param_name(p) for p, _ in jax.tree_util.tree_flatten_with_path(state.params)[0]]
      raise ConfigError(
        f"optim.trainable={cfg.optim.trainable!r} matches no parameter. Fix: use a regex found in "
        f"names such as {names[:4]} (or '' to train all)."
      )
    resume = bool(cfg.workdir) and latest_step(cfg.workdir) is not None
    started_from = None
    if tc.init_from and not resume:  # before this run writes anything: a mismatch leaves its workdir untouched
      state, started_from = start_from_run(state, tc.init_from)
    self.ckpt = Checkpointer(cfg.workdir, tc.keep_checkpoints) if cfg.workdir else None
    start = 0
    if resume:
      state, meta = self.ckpt.restore(state, state_sh, to_dict(cfg))
      start = int(meta["step"])
    return state, state_sh, start, started_from

  def _compile_steps(self, state: TrainState, state_sh: Any, start: int, rng: jax.Array) -> dict:
    """One executable per batch shape still ahead (the MQAR curriculum's shorter rows), the run's own shape last."""
    phases, shaped = self.data.phases, {}
    for first in [max(p for p in phases if p <= start)] + [p for p in phases if p > start]:
      batch = sharding.put_train_batch(self.data, first, self.mesh)
      shaped[batch["inputs"].shape] = compile_train_step(
        self.model, self.tx, self.schedule, state, state_sh, batch, rng, self.mesh, self.cfg.optim.trainable
      )
    self.compiled = shaped[batch["inputs"].shape]  # the run's own shape: FLOPs and memory are reported for it
    return shaped

  def train(self) -> dict:
    """Trains (resuming from the workdir's latest checkpoint), evaluates, and returns the run's result."""
    cfg, tc = self.cfg, self.cfg.train
    t_start = time.perf_counter()
    state, state_sh, start, started_from = self._start()
    num_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state.params))
    writer = MetricWriter(cfg.workdir, start, enabled=self.is_main)
    tokens_per_step = cfg.data.batch_size * self.data.tokens_per_example  # video: frames * patches per clip
    base_rng = jax.random.key(cfg.seed + 1)
    t0 = time.perf_counter()
    shaped = self._compile_steps(state, state_sh, start, base_rng)
    compile_sec = time.perf_counter() - t0
    flops_per_token = compiled_flops(self.compiled) * self.mesh.size / tokens_per_step
    pbar = tqdm(
      total=tc.steps,
      initial=start,
      disable=not (self.is_main and tc.progress),
      unit="step",
      dynamic_ncols=True,
      mininterval=1.0,
    )
    window = StepWindow(tokens_per_step, writer, pbar, self.ckpt)
    last_eval = None
    with jax.set_mesh(self.mesh), nn.logical_axis_rules(sharding.RULES):
      try:
        for step in range(start, tc.steps):
          batch = sharding.put_train_batch(self.data, step, self.mesh)
          state, metrics = shaped[batch["inputs"].shape](state, batch, base_rng)
          done = step + 1
          window.add(done, metrics)
          eval_now = done == tc.steps or (tc.eval_every and done % tc.eval_every == 0)
          ckpt_now = self.ckpt is not None and (
            done == tc.steps or (tc.checkpoint_every and done % tc.checkpoint_every == 0)
          )
          if done % tc.log_every == 0 or eval_now or ckpt_now:
            window.close(done)  # syncs; stops the run on a non-finite step
          if eval_now:
            last_eval = self.evaluate(state)
            writer.write(done, last_eval)
            shown = {k: v for k, v in last_eval.items() if "/layer" not in k}  # per-layer values go to the logs
            pbar.write(f"step {done}: " + "  ".join(f"{k}={v:.4f}" for k, v in shown.items()))
          if ckpt_now:
            self.ckpt.save(
              done,
              state,
              {
                "step": done,
                "config": to_dict(cfg),
                "data": {
                  "kind": cfg.data.kind,
                  "seed": cfg.seed,
                  "next_batch": done,
                  "sequences_seen": done * cfg.data.batch_size,
                },
              },
            )
          if eval_now or ckpt_now:
            window.restart()  # eval and checkpoint time is not training time
        if last_eval is None:  # resumed at the end: evaluate the restored final state
          last_eval = self.evaluate(state)
      finally:  # also when a step is not finite: logs closed, checkpoints in flight completed
        pbar.close()
        if self.ckpt is not None:
          self.ckpt.close()
        writer.close()
    result = {
      "config": to_dict(cfg),
      "num_params": num_params,
      **({"init_from": started_from} if started_from else {}),
      "final": last_eval,
      "history": writer.records,
      "perf": {
        "tokens_per_sec": window.tokens_per_sec,
        "eval_tokens_per_sec": self.evaluation.timed.tokens_per_sec,
        "flops_per_token": flops_per_token,
        "flops_per_sec": flops_per_token * window.tokens_per_sec,
        "memory_bytes": peak_memory_bytes(self.compiled),
        "compile_sec": compile_sec,
        "wall_sec": time.perf_counter() - t_start,
        "resumed_from": start,
        "devices": self.mesh.size,
        "processes": jax.process_count(),
        "backend": jax.default_backend(),
      },
      "provenance": provenance.provenance(),  # the code, versions and hardware behind these numbers
    }
    if self.is_main:
      atomic.save_result(result)  # <workdir>/result.json, atomically, once the run is finished
    return result


class StepWindow:
  """The steps since the last sync: their metrics are fetched, logged and timed together at `close` (no sync per
  step), and every step's loss and gradient norm is checked there; the first window holds compilation and warm-up
  and is not timed."""

  def __init__(self, tokens_per_step: int, writer: MetricWriter, pbar, ckpt: Checkpointer | None):
    self.tokens_per_step, self.writer, self.pbar, self.ckpt = tokens_per_step, writer, pbar, ckpt
    self.tokens, self.sec = 0, 0.0  # timed training
    self.first, self.steps, self.metrics, self.checks = True, 0, None, []
    self.t = time.perf_counter()

  @property
  def tokens_per_sec(self) -> float:
    return self.tokens / self.sec if self.sec else float("nan")

  def add(self, done: int, metrics: dict) -> None:
    self.steps += 1
    self.metrics = metrics
    self.checks.append((done, metrics["train/loss"], metrics["train/grad_norm"]))

  def restart(self) -> None:
    self.t = time.perf_counter()

  def close(self, step: int) -> None:
    """Syncs, then accounts the steps since the last sync; raises NonFiniteError at the first non-finite step,
    before anything after it (log, eval, checkpoint) is written."""
    if not self.steps:
      return
    checks = jax.device_get(self.checks)
    bad = next(((s, l, g) for s, l, g in checks if not (np.isfinite(l) and np.isfinite(g))), None)
    if bad is not None:  # the loop's `finally` closes the checkpointer: a good save in flight completes
      last = self.ckpt.latest_step() if self.ckpt is not None else None
      where = (
        f"the last good checkpoint is step {last} in {self.ckpt.dir}; rerunning resumes from it"
        if last
        else "no checkpoint was written (workdir unset or none saved yet)"
      )
      raise NonFiniteError(
        f"train step {bad[0]}: loss={float(bad[1])}, grad_norm={float(bad[2])} is not "
        f"finite; the run stopped and nothing from this step was saved; {where}. Fix: lower "
        "optim.lr or raise optim.warmup_steps (or use model.dtype=float32), in a new workdir."
      )
    self.checks = []
    metrics = jax.device_get(self.metrics)
    sec = time.perf_counter() - self.t
    tps = self.steps * self.tokens_per_step / sec  # the MQAR curriculum keeps tokens per step
    if not self.first:
      self.tokens += self.steps * self.tokens_per_step
      self.sec += sec
    scalars = {k: float(v) for k, v in metrics.items()}
    self.writer.write(step, {**scalars, "perf/tokens_per_sec": tps})
    self.pbar.update(self.steps)
    self.pbar.set_postfix(loss=f"{scalars['train/loss']:.4f}", tok_s=f"{tps:,.0f}", refresh=False)
    self.steps, self.first, self.t = 0, False, time.perf_counter()


def train(cfg: Config) -> dict:
  """Builds and runs one training run (see Run.train)."""
  return Run(cfg).train()


def load_trained(cfg: Config) -> tuple[Transformer, dict, Any]:
  """(model, variables, dataset) of the run in cfg.workdir at its latest checkpoint, e.g. to inspect in a notebook;
  variables = {"params": ..., **model state (e.g. MoE routing biases)}, ready for `model.apply`."""
  run = Run(cfg)
  ckpt = Checkpointer(cfg.workdir, cfg.train.keep_checkpoints, create=False) if cfg.workdir else None
  if ckpt is None or ckpt.latest_step() is None:
    raise ConfigError(f"workdir={cfg.workdir!r} holds no checkpoint. Fix: train with this config first.")
  state, state_sh = run.init_state()
  state, _ = ckpt.restore(state, state_sh, to_dict(run.cfg))  # the resolved config, as the run saved it
  ckpt.close()
  return run.model, {"params": state.params, **state.model_state}, run.data
