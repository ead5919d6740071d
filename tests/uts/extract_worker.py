"""One process of the 2-process extraction test (tests/uts/test_multihost_extract.py).

Usage: python -m tests.uts.extract_worker PROCESS_ID NUM_PROCESSES PORT OUT_DIR
Extracts features of `collection()` (also used by tests/uts/test_pipeline.py) into
OUT_DIR/shards; process 0 then saves the features it loaded (every shard, its own and the
other host's) to OUT_DIR/features.npz.
"""

import sys

import jax
import ml_collections
import numpy as np

from vtd import distributed
from vtd.errors import UserError
from vtd.uts import extract
from vtd.uts import input_pipeline


def collection(num_videos: int = 11, bad: tuple[int, ...] = (4,)
               ) -> tuple[input_pipeline.VideoCollection, list[np.ndarray]]:
  """`num_videos` videos of 2-4 random 8x8 frames (and the frames); videos in `bad` raise."""
  rng = np.random.default_rng(0)
  videos = [rng.integers(0, 255, size=(2 + i % 3, 8, 8, 3), dtype=np.uint8)
            for i in range(num_videos)]

  def read(i):
    if i in bad:
      raise UserError(f"cannot decode video {i}")
    return videos[i]

  ids = [f"v{i}" for i in range(num_videos)]
  return input_pipeline.VideoCollection(ids, ids[:1], {}, read, 8, "test", ids), videos


@jax.jit
def embed(frames):
  x = frames.astype(np.float32)
  return {"mean": x.mean(axis=(1, 2)), "max": x.max(axis=(1, 2))}


def main(process_id: int, num_processes: int, port: int, out_dir: str) -> None:
  distributed.maybe_initialize(ml_collections.ConfigDict(dict(
      mode="on", coordinator_address=f"127.0.0.1:{port}", num_processes=num_processes,
      process_id=process_id, cpu_collectives="gloo")))
  feats = extract.extract(collection()[0], embed, f"{out_dir}/shards", shard_videos=2,
                          batch_frames=4)
  if jax.process_index() == 0:
    np.savez(f"{out_dir}/features.npz", frame_video=feats.frame_video,
             skipped=np.asarray(feats.skipped), **feats.features)
  print(f"process {jax.process_index()}/{jax.process_count()} done")


if __name__ == "__main__":
  main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
