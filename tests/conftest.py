"""Test set-up: 8 forced CPU devices (multi-device code is tested on CPU) and parsed absl flags."""

import os

# Must happen before jax is imported anywhere.
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

from absl import flags  # noqa: E402

# grain and other absl users read flags; under pytest nobody parses them.
flags.FLAGS.mark_as_parsed()
