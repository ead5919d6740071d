r"""Benchmark: TeachText train-step cost of distillation, and how the step grows with the batch.

  python bench/teachtext_step.py [--steps 30] [--repeats 5] [--preset ""]
  python bench/teachtext_step.py --quick

Times the jitted train step (forward + backward + RAdam update, the generic vtd step) of
  1. the student alone (L_r),
  2. student + distillation from N teachers with cached teacher embeddings (vtd default),
  3. student + distillation running the N teachers live every step,
on the embedded config (CE, 4 experts, 3 teachers; randomly initialised teachers: their cost
does not depend on their training), variants interleaved in one process (median of
--repeats x --steps steps), at the default batch and at 4x it. The B x B losses (ranking and
distillation) grow quadratically with the batch, the encoders linearly; the scaling table
times the student and the cached variant over --scale-batches on 1 and on 8 (forced) CPU
devices, each device count in its own process.
Goal: cached distillation <= 1.1x the student alone, at the default and 4x batch.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time

# Run as `python bench/teachtext_step.py` from the repo root: make `configs`, `vtd` and
# `measure` importable. (jax is imported inside the functions: a worker process sets its
# device count before that.)
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, _ROOT)
sys.path.insert(0, os.path.join(_ROOT, "bench"))

import measure  # noqa: E402


def _variants(batches: list[int], preset: str, steps: int, wanted: list[str],
              teachers_override: str = ""):
  """{batch: {variant name: StepTimer}} (jax already configured); data, teachers and their
  caches are built once."""
  import jax  # pylint: disable=g-import-not-at-top
  from configs import teachtext as teachtext_config  # pylint: disable=g-import-not-at-top
  from vtd import optim, sharding  # pylint: disable=g-import-not-at-top
  from vtd import train as train_lib  # pylint: disable=g-import-not-at-top
  from vtd.teachtext import input_pipeline  # pylint: disable=g-import-not-at-top
  from vtd.teachtext import teachers as teachers_lib  # pylint: disable=g-import-not-at-top
  from vtd.teachtext import losses as tt_losses  # pylint: disable=g-import-not-at-top
  from vtd.teachtext import trainer as tt_trainer  # pylint: disable=g-import-not-at-top

  config = teachtext_config.get_config(preset or None)
  if teachers_override:
    config.teachers.text_embeddings = teachers_override
  split = tt_trainer.load_data(config.data).train
  mesh = sharding.make_mesh()
  model = teachers_lib.build_model(config.model, tt_trainer.model_experts("", split))
  student_emb = config.student.text_embedding
  teacher_embs = [e.strip() for e in config.teachers.text_embeddings.split(",")]
  sample = next(input_pipeline.train_iterator(split, global_batch_size=2, seed=0,
                                              text_embeddings=teacher_embs + [student_emb]))
  jit_init = jax.jit(model.init, static_argnames="train")  # (op by op: ~10 s per model)
  init = lambda rng, e: jit_init(rng, sample["text"][e], sample["experts"],
                                 sample["available"], train=False)
  teacher_vars = [init(jax.random.key(i), e) for i, e in enumerate(teacher_embs)]
  teachers = tuple(teachers_lib.Teacher(f"teacher_{e}", e, model, "") for e in teacher_embs)
  caches = [teachers_lib.cache_embeddings(t, v, split) for t, v in zip(teachers, teacher_vars)]

  class StepTimer:
    """Compiles one variant's step once; `time()` measures s/step on fresh batches."""

    def __init__(self, weight: float, mode: str, batch: int, state=None):
      distill_cfg = copy.deepcopy(config.distill)
      distill_cfg.teacher_mode = mode
      embs = [student_emb] + (teacher_embs if weight and mode == "live" else [])
      frozen = None if not weight else (caches if mode == "cached" else teacher_vars)
      program = train_lib.Program(
          name="bench", init_variables=lambda rng: init(rng, student_emb),
          loss_fn=tt_losses.make_loss_fn(model, student_emb, config.loss,
                                         distill_cfg=distill_cfg, distill_weight=weight,
                                         teachers=teachers if weight else ()),
          optimizer=optim.create_optimizer(config.optim, 19),
          train_iter=input_pipeline.train_iterator(
              split, global_batch_size=batch, seed=0, text_embeddings=sorted(set(embs))),
          num_steps=steps, frozen=frozen)
      # Every variant trains the same student: one initial state (its init compiles once),
      # copied, since the step donates its state.
      self.initial = (state if state is not None else
                      train_lib.create_state(program, mesh, seed=0))
      self.state = jax.tree.map(lambda x: x.copy(), self.initial)
      self.step_fn = train_lib.make_train_step(
          program, mesh, jax.tree.map(lambda x: x.sharding, self.state))
      self.frozen = None if frozen is None else sharding.replicate(frozen, mesh)
      self.batches = [sharding.shard_batch(next(program.train_iter), mesh)
                      for _ in range(steps)]
      with jax.set_mesh(mesh):  # Compile + warm up.
        self.state, m = self.step_fn(self.state, self.batches[0], self.frozen)
        jax.block_until_ready(m)

    def time(self) -> float:
      with jax.set_mesh(mesh):
        start = time.perf_counter()
        for b in self.batches:
          self.state, m = self.step_fn(self.state, b, self.frozen)
        jax.block_until_ready((self.state, m))
      return (time.perf_counter() - start) / len(self.batches)

  names = {"student": (0.0, "cached"), "cached": (1.0, "cached"), "live": (1.0, "live")}
  timers = {}
  for b in batches:
    timers[b], state = {}, None
    for v in wanted:
      timers[b][v] = StepTimer(*names[v], b, state)
      state = timers[b][v].initial
  return timers, config, len(teachers)


def _worker(devices: int, batches: list[int], variants: list[str], args, conn) -> None:
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                             f" --xla_force_host_platform_device_count={devices}").strip()
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  import numpy as np  # pylint: disable=g-import-not-at-top
  out = {}
  all_timers, config, num_teachers = _variants(batches, args.preset, args.steps, variants,
                                               args.teachers)
  for batch in batches:
    timers = all_timers[batch]
    times = {v: [] for v in variants}
    for _ in range(args.repeats):  # Interleaved, so background load hits every variant alike.
      for v in variants:
        times[v].append(timers[v].time())
    out[batch] = {v: float(np.median(t)) for v, t in times.items()}
  out["info"] = (config.model.arch, num_teachers, config.train.batch_size)
  conn.send(out)
  conn.close()


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--steps", type=int, default=30, help="steps per timing")
  parser.add_argument("--repeats", type=int, default=5, help="median of N timings")
  parser.add_argument("--preset", default="", help="config preset, e.g. smoke")
  parser.add_argument("--batch", type=int, default=0, help="default batch (0: the config's)")
  parser.add_argument("--scale-batches", default="32,64,128,256",
                      help="batches of the scaling table ('' to skip)")
  parser.add_argument("--teachers", default="",
                      help="teacher text embeddings, comma-separated ('' = the config's)")
  parser.add_argument("--quick", action="store_true",
                      help="smoke preset, one teacher, 8 devices only, few steps")
  args = parser.parse_args()
  if args.quick:
    # One teacher, one batch, two variants, everything in one 8-device process (the run is
    # compile-bound: each step variant compiles once).
    args.preset, args.steps, args.repeats, args.scale_batches = "smoke", 2, 1, ""
    args.teachers = "gpt_xl"
  if not args.batch:
    from configs import teachtext as teachtext_config  # pylint: disable=g-import-not-at-top
    args.batch = teachtext_config.get_config(args.preset or None).train.batch_size

  batches = [args.batch] if args.quick else [args.batch, 4 * args.batch]
  variants = ["student", "cached"] if args.quick else ["student", "cached", "live"]
  devices = 8 if args.quick else 1
  res = measure.run_in_subprocess(_worker, devices, batches, variants, args)
  arch, num_teachers, _ = res["info"]
  print(f"TeachText train step, arch {arch}, {num_teachers} teachers, {devices} CPU device(s) "
        f"({os.cpu_count()} cores, shared), median of {args.repeats} x {args.steps} steps, "
        f"variants interleaved")
  print("| variant | batch | ms/step | vs student alone |")
  print("|---|---:|---:|---:|")
  names = {"student": "student alone (L_r)",
           "cached": f"+ distillation, {num_teachers} teachers cached (default)",
           "live": f"+ distillation, {num_teachers} teachers live"}
  for batch in batches:
    for v in variants:
      t = res[batch][v]
      print(f"| {names[v]} | {batch} | {1e3 * t:.2f} | {t / res[batch]['student']:.2f}x |")
  print("goal: cached distillation <= 1.1x the student alone, at the default and 4x batch")

  scale = [int(b) for b in args.scale_batches.split(",") if b]
  if scale:
    for devices in (1, 8):
      got = measure.run_in_subprocess(_worker, devices, scale, ["student", "cached"], args)
      print()
      print(f"Scaling with the batch ({devices} CPU device(s); B x B losses):")
      print(measure.scaling_table("batch", scale,
                                  {v: [got[b][v] for b in scale] for v in ("student", "cached")}))


if __name__ == "__main__":
  main()
