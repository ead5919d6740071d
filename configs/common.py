"""Config fields shared by every method: runtime, training loop, optimiser, distribution."""

import ml_collections


def training_loop(batch_size: int, num_epochs: float) -> ml_collections.ConfigDict:
  """`config.train`: the generic loop's knobs (vtd/train.py)."""
  return ml_collections.ConfigDict(dict(
      # Global batch size (all devices and hosts); must be divisible by the device count.
      batch_size=batch_size,
      # Training length in epochs (passes over the training videos)...
      num_epochs=num_epochs,
      # ...or in steps; a positive value overrides num_epochs.
      num_steps=-1,
      # Console + metrics.jsonl + TensorBoard cadence (steps).
      log_every_steps=50,
      # Validation cadence (steps); each validation also saves a checkpoint ranked by it.
      eval_every_steps=200,
      # Extra checkpoint cadence (steps) between validations, for resuming.
      checkpoint_every_steps=100,
      # Most recent checkpoints kept (the best-on-validation one is kept as well).
      keep_last=2,
      # Validation metric that ranks checkpoints ('' = keep the last; needs a validation set).
      best_metric="",
      # Whether a higher ('max') or lower ('min') best_metric is better.
      best_mode="max",
      # Write checkpoints in a background thread.
      async_checkpointing=True,
      # Also write TensorBoard event files (tensorboardX) next to metrics.jsonl.
      tensorboard=True,
  ))


def optimizer(name: str, lr: float, weight_decay: float) -> ml_collections.ConfigDict:
  """`config.optim`: vtd/optim.py."""
  return ml_collections.ConfigDict(dict(
      # adam | radam | ranger (RAdam + Lookahead) | sgd.
      name=name,
      # Peak learning rate.
      lr=lr,
      # Decoupled weight decay (p <- p - lr * wd * p); 0 disables.
      weight_decay=weight_decay,
      # constant | step (lr * decay_rate every decay_every_epochs epochs).
      schedule="step",
      # Multiplicative decay per period for schedule=step (CE/TeachText: 0.95 per epoch).
      decay_rate=0.95,
      # Decay period in epochs for schedule=step.
      decay_every_epochs=1.0,
      # Adam/RAdam first and second moment decay and epsilon.
      b1=0.9,
      b2=0.999,
      eps=1e-8,
      # RAdam rectification threshold on the SMA length (PyTorch RAdam: 5).
      radam_threshold=5.0,
      # Ranger's Lookahead: sync period (steps) and slow-weights step size.
      lookahead_steps=6,
      lookahead_alpha=0.5,
      # SGD momentum (0 = none).
      momentum=0.0,
      # Clip gradients to this global norm; 0 disables (the official code does not clip).
      grad_clip_norm=0.0,
  ))


def distributed() -> ml_collections.ConfigDict:
  """`config.distributed`: vtd/distributed.py."""
  return ml_collections.ConfigDict(dict(
      # auto: initialise jax.distributed when SLURM / a TPU pod / JAX_COORDINATOR_ADDRESS or
      # coordinator_address below is present; on: always; off: never (single process).
      mode="auto",
      # host:port of process 0, for clusters jax cannot detect (e.g. 127.0.0.1:12345).
      coordinator_address="",
      # Number of processes and this process's id, with coordinator_address.
      num_processes=1,
      process_id=0,
      # Cross-process collectives on CPU ('gloo'; '' keeps jax's default).
      cpu_collectives="gloo",
  ))


def runtime() -> ml_collections.ConfigDict:
  """`config.runtime`: process-level settings applied by vtd.main before training."""
  return ml_collections.ConfigDict(dict(
      # Persistent XLA compilation cache: re-runs, resumed runs and stages with identical
      # shapes (e.g. the baseline and distilled students) skip recompilation. '' disables.
      compilation_cache_dir="~/.cache/vtd/jax_compilation_cache",
      # Hide INFO lines of orbax/grain (per-save chatter); their warnings still show.
      quiet_library_logs=True,
      # Console lines: 'short' ("12:04:05 message") or 'absl' (absl's full prefix).
      log_format="short",
      # What a re-run does with finished stages whose config, inputs or data changed:
      # 'changed' reruns exactly those (the old ones are moved to <workdir>/superseded/);
      # 'strict' stops with one line naming the differing keys (vtd/stages.py).
      reuse="changed",
      # Show the full traceback of user errors (also: environment variable VTD_DEBUG=1).
      debug=False,
  ))


def seed_sweep(add, seeds=(0, 1, 2)) -> None:
  """The seed sweep behind every mean +- std table in the README (launch/sweep.py)."""
  for seed in seeds:
    add(seed=seed)
