"""Training loop: AdamW + warm-up/cosine, a pure jitted train step with NamedShardings, eval, logs, checkpoints."""

import dataclasses
import itertools
import math
import os
import re
import time
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec as P
from tqdm import tqdm  # a text bar everywhere (tqdm.auto warns in notebooks without ipywidgets)

from r1jax import reporting, sharding
from r1jax.checkpoint import Checkpointer, latest_step
from r1jax.config import Config, DistConfig, ModelConfig, OptimConfig, to_dict
from r1jax.data import make_dataset
from r1jax.model import Transformer
from r1jax.video import make_model
from r1jax.registry import DIAGNOSTICS, ConfigError, NonFiniteError
from r1jax.writers import MetricWriter


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # int32 scalar: optimizer steps taken
  params: Any
  opt_state: Any
  model_state: Any  # non-parameter variable collections updated by the forward pass (e.g. routing biases)


def make_optimizer(cfg: OptimConfig, steps: int,
                   phases: tuple[int, ...] = (0,)) -> tuple[optax.Schedule, optax.GradientTransformation]:
  """AdamW with linear warm-up and cosine decay to lr*min_lr_ratio (restarted at each data phase start in `phases`
  with `cfg.restart_per_phase`); weight decay on matrices only."""
  starts = sorted({0, *(p for p in phases if 0 < p < steps)}) if cfg.restart_per_phase else [0]
  ends = starts[1:] + [steps]
  schedule = optax.join_schedules([optax.warmup_cosine_decay_schedule(
      0.0, cfg.lr, cfg.warmup_steps, max(end - start, cfg.warmup_steps + 1), cfg.lr * cfg.min_lr_ratio)
      for start, end in zip(starts, ends)], starts[1:])
  decay_mask = lambda params: jax.tree.map(lambda p: p.ndim >= 2, params)
  adamw = optax.adamw(schedule, cfg.b1, cfg.b2, cfg.eps, weight_decay=cfg.weight_decay, mask=decay_mask)
  return schedule, optax.chain(optax.clip_by_global_norm(cfg.grad_clip), adamw) if cfg.grad_clip else adamw


def resolve_model_config(cfg: ModelConfig, data_vocab: int) -> ModelConfig:
  """Fills vocab_size from the dataset (0) or checks that the configured one covers it."""
  if cfg.vocab_size == 0:
    return dataclasses.replace(cfg, vocab_size=data_vocab)
  if cfg.vocab_size < data_vocab:
    raise ConfigError(f"model.vocab_size={cfg.vocab_size} is smaller than the dataset's {data_vocab} tokens. "
                      "Fix: set --config.model.vocab_size=0 to take it from the data.")
  return cfg


def forward(model: Transformer, params: Any, model_state: Any, batch: dict, rng: jax.Array | None,
            deterministic: bool, diagnostics: bool = False) -> tuple[jax.Array, dict, dict, Any]:
  """Loss and metric sums on a batch; with `diagnostics`, also the mixers' costly diagnostics (registry.DIAGNOSTICS:
  e.g. a sparse mixer's recall of the dense top-k), for an untimed pass only.

  Returns:
    (objective = mean CE + aux losses, metrics (means), sums {loss_sum, correct_sum, count, and group_correct,
    group_count [G] where the batch has groups}, new model_state).
  """
  mutable = list(model_state) if not deterministic else []
  mutable += [DIAGNOSTICS] if diagnostics else []
  out = model.apply({"params": params, **model_state}, batch["inputs"], deterministic=deterministic,
                    target_pos_BxN=batch.get("target_pos"), rngs={"dropout": rng} if rng is not None else None,
                    mutable=mutable or False)
  (logits_BxNxV, aux), new_state = out if mutable else (out, model_state)
  new_state = model_state if deterministic else {k: v for k, v in new_state.items() if k != DIAGNOSTICS}
  targets_BxN, w_BxN = batch["targets"], batch["weights"]
  ce_BxN = optax.softmax_cross_entropy_with_integer_labels(logits_BxNxV, targets_BxN)
  correct_BxN = (jnp.argmax(logits_BxNxV, axis=-1) == targets_BxN).astype(jnp.float32)
  count = jnp.sum(w_BxN)
  sums = {"loss_sum": jnp.sum(ce_BxN * w_BxN), "correct_sum": jnp.sum(correct_BxN * w_BxN), "count": count}
  if "groups" in batch:  # per-group sums (passkey: length x depth), from the rows' one-hot groups [B, G]
    sums["group_correct"] = jnp.einsum("BN,BG->G", correct_BxN * w_BxN, batch["groups"])
    sums["group_count"] = jnp.einsum("BN,BG->G", w_BxN, batch["groups"])
  loss = sums["loss_sum"] / jnp.maximum(count, 1.0)
  metrics = {"loss": loss, "accuracy": sums["correct_sum"] / jnp.maximum(count, 1.0), **aux}
  return loss + aux["aux_loss"], metrics, sums, new_state


def make_eval_step(model: Transformer, diagnostics: bool = False):
  """The pure eval step `eval_step(state, batch) -> (sums, mixer/ffn metrics)`; `diagnostics` adds the costly
  diagnostics (registry.DIAGNOSTICS), for an untimed pass only."""

  def eval_step(state: "TrainState", batch: dict) -> tuple[dict, dict]:
    _, metrics, sums, _ = forward(model, state.params, state.model_state, batch, None, True, diagnostics)
    return sums, {k: v for k, v in metrics.items() if k.startswith(("mixer/", "ffn/"))}

  return eval_step


def param_name(path) -> str:
  """A parameter's name from its pytree path, as optim.trainable and train.init_from see it: 'layer0/mixer/wq'."""
  return "/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path)


def trainable_mask(params: Any, pattern: str) -> Any:
  """A pytree of Python bools like `params`: True where `pattern` (optim.trainable) is found in the name; all True
  for an empty pattern."""
  rx = re.compile(pattern) if pattern else None
  return jax.tree_util.tree_map_with_path(lambda path, _: rx is None or bool(rx.search(param_name(path))), params)


def make_train_step(model: Transformer, tx: optax.GradientTransformation, schedule: optax.Schedule,
                    trainable: str = ""):
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
    params = jax.tree.map(lambda m, new, old: new if m else old, mask, optax.apply_updates(state.params, updates),
                          state.params)
    metrics = {f"train/{k}": v for k, v in metrics.items()}
    metrics.update({"train/grad_norm": optax.tree.norm(grads), "train/lr": schedule(state.step)})
    return TrainState(state.step + 1, params, opt_state, model_state), metrics

  return train_step


def init_train_state(model: Transformer, tx: optax.GradientTransformation, batch: dict[str, np.ndarray], seed: int,
                     mesh) -> tuple[TrainState, Any]:
  """Sharded TrainState for batches shaped like `batch` (see sharding.init_sharded), and its shardings."""

  def init_fn(rng):
    inputs = jnp.zeros(batch["inputs"].shape, batch["inputs"].dtype)  # token ids, or video patches
    pos = jnp.zeros(batch["target_pos"].shape, jnp.int32) if "target_pos" in batch else None
    variables = model.init({"params": rng, "dropout": rng}, inputs, target_pos_BxN=pos)
    params = variables.pop("params")
    return TrainState(jnp.zeros((), jnp.int32), params, tx.init(params), dict(variables))

  return sharding.init_sharded(init_fn, jax.random.key(seed), mesh)


def compile_train_step(model: Transformer, tx: optax.GradientTransformation, schedule: optax.Schedule,
                       state: TrainState, state_sh: Any, batch: dict[str, jax.Array], rng: jax.Array, mesh,
                       trainable: str = ""):
  """The train step jitted with the state's shardings in and out (state donated), compiled for `batch`'s shapes
  and shardings (as placed by sharding.put_batch)."""
  replicated = NamedSharding(mesh, P())
  with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.RULES):
    step = jax.jit(make_train_step(model, tx, schedule, trainable), donate_argnums=0,
                   in_shardings=(state_sh, None, replicated), out_shardings=(state_sh, replicated))
    return step.lower(state, batch, rng).compile()


def init_distributed(cfg: DistConfig) -> None:
  """jax.distributed.initialize() for multi-process runs (once per process)."""
  if (cfg.auto or cfg.num_processes > 1) and not jax.distributed.is_initialized():
    if cfg.auto:
      jax.distributed.initialize()
    else:
      jax.distributed.initialize(cfg.coordinator_address, cfg.num_processes,
                                 cfg.process_id if cfg.process_id >= 0 else None)


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
        raise ConfigError(f"train.init_from: {collection} '{name}' has shape {value.shape} in {workdir!r} but "
                          f"{current.shape} in this model. Fix: start from a run of the same sizes, or leave "
                          "train.init_from empty.")
      info["restored"] += 1
      value = value.astype(current.dtype)
      return jax.make_array_from_callback(current.shape, current.sharding, lambda idx: value[idx])

    return jax.tree_util.tree_map_with_path(one, getattr(state, collection))

  params, model_state = take("params"), take("model_state")
  return state.replace(params=params, model_state=model_state), info


class Run:
  """One training run, built and validated up front (bad configs and data fail before anything compiles)."""

  def __init__(self, cfg: Config):
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
    self.eval_timing = {"tokens": 0, "sec": 0.0, "warm": False}
    if cfg.train.init_from and latest_step(cfg.train.init_from) is None:
      raise ConfigError(f"train.init_from={cfg.train.init_from!r} holds no checkpoint. Fix: pass the workdir of a "
                        "run that has saved one (its <workdir>/checkpoints), or train that run first.")

  def init_state(self) -> tuple[TrainState, Any]:
    """Sharded TrainState from abstract shapes (see sharding.init_sharded) and its shardings."""
    return init_train_state(self.model, self.tx, self.data.train_batch(0), self.cfg.seed, self.mesh)

  def evaluate(self, eval_fns, state: TrainState) -> dict[str, float]:
    """Loss and accuracy over the eval set, timed (forward tokens/s), and the mixer/ffn diagnostics averaged over
    batches; the costly ones (e.g. a sparse mixer's recall of the dense top-k) from a second, untimed pass over the
    first train.diag_batches batches.
    eval_fns = (timed eval step, diagnostics eval step or None), as make_eval_step builds them."""
    eval_fn, diag_fn = eval_fns
    totals = {"loss_sum": 0.0, "correct_sum": 0.0, "count": 0.0, "group_correct": 0.0, "group_count": 0.0}
    diags, batches = {}, 0
    for batch in self.data.eval_batches():
      t0 = time.perf_counter()
      sums, diag = jax.device_get(eval_fn(state, sharding.put_batch(batch, self.mesh)))
      if self.eval_timing["warm"]:  # forward-only throughput; the very first call compiles
        self.eval_timing["tokens"] += batch["inputs"].shape[0] * self.data.tokens_per_example
        self.eval_timing["sec"] += time.perf_counter() - t0
      self.eval_timing["warm"] = True
      totals = {k: totals[k] + np.asarray(sums.get(k, 0.0), np.float64) for k in totals}
      diags = {k: diags.get(k, 0.0) + float(v) for k, v in diag.items()}
      batches += 1
    if diag_fn is not None:  # outside the timed loop: its dense passes never count as evaluation time
      diags, batches = {}, 0
      for batch in itertools.islice(self.data.eval_batches(), self.cfg.train.diag_batches or None):
        _, diag = jax.device_get(diag_fn(state, sharding.put_batch(batch, self.mesh)))
        diags = {k: diags.get(k, 0.0) + float(v) for k, v in diag.items()}
        batches += 1
    n = max(float(totals["count"]), 1.0)
    groups = {f"eval/accuracy/{name}": float(c / max(m, 1.0)) for name, c, m in zip(
        self.data.group_names, np.atleast_1d(totals["group_correct"]), np.atleast_1d(totals["group_count"]))}
    loss = float(totals["loss_sum"]) / n
    # bits per character (datasets of text: characters per token of their validation split), across tokenizers
    bpc = {"eval/bpc": loss / math.log(2) / self.data.chars_per_token} if hasattr(self.data, "chars_per_token") else {}
    return {"eval/loss": loss, "eval/accuracy": float(totals["correct_sum"]) / n, **groups, **bpc,
            **{f"eval/{k}": v / max(batches, 1) for k, v in diags.items()}}

  def train(self) -> dict:
    """Trains (resuming from the workdir's latest checkpoint), evaluates, and returns the run's result."""
    cfg, tc = self.cfg, self.cfg.train
    t_start = time.perf_counter()
    cfg_dict = to_dict(cfg)
    state, state_sh = self.init_state()
    num_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state.params))
    if not any(jax.tree.leaves(trainable_mask(state.params, cfg.optim.trainable))):
      names = [param_name(p) for p, _ in jax.tree_util.tree_flatten_with_path(state.params)[0]]
      raise ConfigError(f"optim.trainable={cfg.optim.trainable!r} matches no parameter. Fix: use a regex found in "
                        f"names such as {names[:4]} (or '' to train all).")
    resume = bool(cfg.workdir) and latest_step(cfg.workdir) is not None
    started_from = None
    if tc.init_from and not resume:  # before this run writes anything: a mismatch leaves its workdir untouched
      state, started_from = start_from_run(state, tc.init_from)
    ckpt = Checkpointer(cfg.workdir, tc.keep_checkpoints) if cfg.workdir else None
    start = 0
    if resume:
      state, meta = ckpt.restore(state, state_sh, cfg_dict)
      start = int(meta["step"])
    writer = MetricWriter(cfg.workdir, start, enabled=self.is_main)
    tokens_per_step = cfg.data.batch_size * self.data.tokens_per_example  # video: frames * patches per clip
    base_rng = jax.random.key(cfg.seed + 1)
    t0 = time.perf_counter()
    # One executable per batch shape: one per phase of the data still ahead (the MQAR curriculum's shorter rows),
    # the last phase's (the run's own shape) compiled last.
    phases = self.data.phases
    shaped = {}
    for first in [max(p for p in phases if p <= start)] + [p for p in phases if p > start]:
      batch = sharding.put_train_batch(self.data, first, self.mesh)
      shaped[batch["inputs"].shape] = compile_train_step(self.model, self.tx, self.schedule, state, state_sh, batch,
                                                         base_rng, self.mesh, cfg.optim.trainable)
    compiled = shaped[batch["inputs"].shape]  # the run's own shape: FLOPs and memory are reported for it
    compile_sec = time.perf_counter() - t0

    with jax.set_mesh(self.mesh), nn.logical_axis_rules(sharding.RULES):
      eval_fn = jax.jit(make_eval_step(self.model), out_shardings=self.replicated)
      # The costly diagnostics (registry.DIAGNOSTICS) get their own untimed pass, compiled only if a layer has any.
      diag_step = make_eval_step(self.model, diagnostics=True)
      first = sharding.put_batch(next(iter(self.data.eval_batches())), self.mesh)
      costly = set(jax.eval_shape(diag_step, state, first)[1]) - set(jax.eval_shape(eval_fn, state, first)[1])
      eval_fns = (eval_fn, jax.jit(diag_step, out_shardings=self.replicated) if costly else None)
      flops_per_token = compiled_flops(compiled) * self.mesh.size / tokens_per_step

      timed = {"tokens": 0, "sec": 0.0}
      window = {"t": time.perf_counter(), "steps": 0, "first": True, "metrics": None, "checks": []}
      pbar = tqdm(total=tc.steps, initial=start, disable=not (self.is_main and tc.progress), unit="step",
                  dynamic_ncols=True, mininterval=1.0)

      def close_window(step: int) -> None:
        """Syncs, then accounts the steps since the last sync (the first window holds warm-up and is excluded)."""
        if not window["steps"]:
          return
        # Every step's loss and gradient norm, fetched at this sync (no extra sync per step): the first non-finite
        # one stops the run before anything after it (log, eval, checkpoint) is written.
        checks = jax.device_get(window["checks"])
        bad = next(((s, l, g) for s, l, g in checks if not (np.isfinite(l) and np.isfinite(g))), None)
        if bad is not None:  # the loop's `finally` closes the checkpointer: a good save in flight completes
          last = ckpt.latest_step() if ckpt is not None else None
          where = (f"the last good checkpoint is step {last} in {ckpt.dir}; rerunning resumes from it" if last
                   else "no checkpoint was written (workdir unset or none saved yet)")
          raise NonFiniteError(f"train step {bad[0]}: loss={float(bad[1])}, grad_norm={float(bad[2])} is not "
                               f"finite; the run stopped and nothing from this step was saved; {where}. Fix: lower "
                               "optim.lr or raise optim.warmup_steps (or use model.dtype=float32), in a new workdir.")
        window["checks"] = []
        metrics = jax.device_get(window["metrics"])
        sec = time.perf_counter() - window["t"]
        tps = window["steps"] * tokens_per_step / sec  # the MQAR curriculum keeps tokens per step
        if not window["first"]:
          timed["tokens"] += window["steps"] * tokens_per_step
          timed["sec"] += sec
        scalars = {k: float(v) for k, v in metrics.items()}
        writer.write(step, {**scalars, "perf/tokens_per_sec": tps})
        pbar.update(window["steps"])
        pbar.set_postfix(loss=f"{scalars['train/loss']:.4f}", tok_s=f"{tps:,.0f}", refresh=False)
        window.update(steps=0, first=False, t=time.perf_counter())

      last_eval = None
      try:
        for step in range(start, tc.steps):
          batch = sharding.put_train_batch(self.data, step, self.mesh)
          state, window["metrics"] = shaped[batch["inputs"].shape](state, batch, base_rng)
          window["steps"] += 1
          done = step + 1
          window["checks"].append((done, window["metrics"]["train/loss"], window["metrics"]["train/grad_norm"]))
          eval_now = done == tc.steps or (tc.eval_every and done % tc.eval_every == 0)
          ckpt_now = ckpt is not None and (done == tc.steps or
                                           (tc.checkpoint_every and done % tc.checkpoint_every == 0))
          if done % tc.log_every == 0 or eval_now or ckpt_now:
            close_window(done)
          if eval_now:
            last_eval = self.evaluate(eval_fns, state)
            writer.write(done, last_eval)
            shown = {k: v for k, v in last_eval.items() if "/layer" not in k}  # per-layer values go to the logs
            pbar.write(f"step {done}: " + "  ".join(f"{k}={v:.4f}" for k, v in shown.items()))
          if ckpt_now:
            meta = {"step": done, "config": cfg_dict,
                    "data": {"kind": cfg.data.kind, "seed": cfg.seed, "next_batch": done,
                             "sequences_seen": done * cfg.data.batch_size}}
            ckpt.save(done, state, meta)
          if eval_now or ckpt_now:
            window["t"] = time.perf_counter()  # eval and checkpoint time is not training time
        if last_eval is None:  # resumed at the end: evaluate the restored final state
          last_eval = self.evaluate(eval_fns, state)
      finally:  # also when a step is not finite: logs closed, checkpoints in flight completed
        pbar.close()
        if ckpt is not None:
          ckpt.close()
        writer.close()
    tokens_per_sec = timed["tokens"] / timed["sec"] if timed["sec"] else float("nan")
    et = self.eval_timing
    eval_tokens_per_sec = et["tokens"] / et["sec"] if et["sec"] else float("nan")
    result = {
        "config": cfg_dict,
        "num_params": num_params,
        **({"init_from": started_from} if started_from else {}),
        "final": last_eval,
        "history": writer.records,
        "perf": {"tokens_per_sec": tokens_per_sec, "eval_tokens_per_sec": eval_tokens_per_sec,
                 "flops_per_token": flops_per_token,
                 "flops_per_sec": flops_per_token * tokens_per_sec, "memory_bytes": peak_memory_bytes(compiled),
                 "compile_sec": compile_sec, "wall_sec": time.perf_counter() - t_start,
                 "resumed_from": start, "devices": self.mesh.size, "processes": jax.process_count(),
                 "backend": jax.default_backend()},
    }
    if self.is_main:
      reporting.save_result(result)  # <workdir>/result.json, atomically, once the run is finished
    return result


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
