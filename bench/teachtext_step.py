r"""Benchmark (a): TeachText train-step cost of distillation.

  python bench/teachtext_step.py [--steps 50] [--preset ""]

Times the jitted train step (forward + backward + RAdam update, the generic vtd step) of
  1. the student alone (L_r),
  2. student + distillation from N teachers with cached teacher embeddings (vtd default),
  3. student + distillation running the N teachers live every step,
on the default embedded config (batch 64, CE, 3 teachers), in the same process, and prints
the time per step and the ratio to the student alone. Project goal: cached <= 1.3x.
Teachers are randomly initialised (their cost does not depend on their training).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

# Run as `python bench/teachtext_step.py` from the repo root: make `configs` importable.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np

from configs import teachtext as teachtext_config
from vtd import optim
from vtd import sharding
from vtd import train as train_lib
from vtd.teachtext import input_pipeline
from vtd.teachtext import teachers as teachers_lib
from vtd.teachtext import train as tt_train


class StepTimer:
  """Compiles one variant's step once; `time()` measures ms/step on fresh batches."""

  def __init__(self, program, mesh, steps: int):
    self.mesh, self.steps = mesh, steps
    self.state = train_lib.create_state(program, mesh, seed=0)
    self.step_fn = train_lib.make_train_step(program, mesh,
                                             jax.tree.map(lambda x: x.sharding, self.state))
    self.frozen = None if program.frozen is None else sharding.replicate(program.frozen, mesh)
    self.batches = [sharding.shard_batch(next(program.train_iter), mesh) for _ in range(steps)]
    with jax.set_mesh(mesh):  # Compile + warm up.
      self.state, m = self.step_fn(self.state, self.batches[0], self.frozen)
      jax.block_until_ready(m)

  def time(self) -> float:
    with jax.set_mesh(self.mesh):
      start = time.perf_counter()
      for b in self.batches:
        self.state, m = self.step_fn(self.state, b, self.frozen)
      jax.block_until_ready((self.state, m))
    return (time.perf_counter() - start) / self.steps


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--steps", type=int, default=50)
  parser.add_argument("--preset", default="", help="config preset, e.g. smoke")
  parser.add_argument("--repeats", type=int, default=5, help="best of N timings")
  args = parser.parse_args()
  config = teachtext_config.get_config(args.preset or None)
  data = tt_train.load_data(config.data)
  split = data.train
  mesh = sharding.make_mesh()
  model = teachers_lib.build_model(config.model, tt_train.model_experts(config, split))
  student_emb = config.student.text_embedding
  teacher_embs = [e.strip() for e in config.teachers.text_embeddings.split(",")]
  sample = next(input_pipeline.train_iterator(split, global_batch_size=2, seed=0,
                                              text_embeddings=teacher_embs + [student_emb]))
  teacher_vars = [model.init(jax.random.key(i), sample["text"][e], sample["experts"],
                             sample["available"], train=False)
                  for i, e in enumerate(teacher_embs)]
  teachers = tuple(teachers_lib.Teacher(f"teacher_{e}", e, model, "") for e in teacher_embs)
  caches = [teachers_lib.cache_embeddings(t, v, split) for t, v in zip(teachers, teacher_vars)]

  def program(weight, mode):
    config.distill.teacher_mode = mode
    embs = [student_emb] + (teacher_embs if weight and mode == "live" else [])
    frozen = None if not weight else (caches if mode == "cached" else teacher_vars)
    return train_lib.Program(
        name="bench",
        init_variables=lambda rng: model.init(rng, sample["text"][student_emb],
                                              sample["experts"], sample["available"],
                                              train=False),
        loss_fn=tt_train.make_loss_fn(model, student_emb, config, weight,
                                      teachers if weight else ()),
        optimizer=optim.create_optimizer(config.optim, 19),
        train_iter=input_pipeline.train_iterator(split, global_batch_size=config.train.batch_size,
                                                 seed=0, text_embeddings=sorted(set(embs))),
        num_steps=args.steps, frozen=frozen)

  variants = [("student alone (L_r)", 0.0, "cached"),
              (f"+ distillation, {len(teachers)} teachers cached", 1.0, "cached"),
              (f"+ distillation, {len(teachers)} teachers live", 1.0, "live")]
  timers = {name: StepTimer(program(w, m), mesh, args.steps) for name, w, m in variants}
  times = {name: float("inf") for name in timers}
  for _ in range(args.repeats):  # Interleaved, so background load hits every variant alike.
    for name, timer in timers.items():
      times[name] = min(times[name], timer.time())
  base = times[variants[0][0]]
  print(f"TeachText train step, batch {config.train.batch_size}, arch {config.model.arch}, "
        f"{len(split.expert_names)} experts, {jax.device_count()} {jax.default_backend()} "
        f"device(s), best of {args.repeats} x {args.steps} steps")
  print(f"{'variant':40s} {'ms/step':>9s} {'ratio':>7s}")
  for name, t in times.items():
    print(f"{name:40s} {1e3 * t:9.2f} {t / base:6.2f}x")


if __name__ == "__main__":
  main()
