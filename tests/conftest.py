"""Test set-up: 8 forced CPU devices (multi-device code is tested on CPU) and parsed absl flags."""

import os

# Must happen before jax is imported anywhere.
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import tempfile  # noqa: E402

import jax  # noqa: E402
from absl import flags  # noqa: E402

# grain and other absl users read flags; under pytest nobody parses them.
flags.FLAGS.mark_as_parsed()

# One persistent compilation cache for the whole session (a fresh, private directory): the
# end-to-end tests compile the same step functions for several stages (e.g. generation-2
# students have the shapes of generation-1 ones), and the suite is compile-bound on CPU.
jax.config.update("jax_compilation_cache_dir", tempfile.mkdtemp(prefix="vtd-test-jax-cache-"))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)

import pathlib  # noqa: E402

import pytest  # noqa: E402

# Each method's tests share session fixtures (one finished tiny run per method, its generated
# data and pretraining cache), so under pytest-xdist (the README's `-n 2 --dist loadgroup`) a
# method's tests stay on one worker and those fixtures are built once; the rest spread freely.
_GROUPED_DIRS = ("teachtext", "segmentation", "uts")


def pytest_collection_modifyitems(config, items):
  root = pathlib.Path(__file__).parent
  for item in items:
    parts = pathlib.Path(str(item.fspath)).relative_to(root).parts
    if len(parts) > 1 and parts[0] in _GROUPED_DIRS:
      item.add_marker(pytest.mark.xdist_group(parts[0]))
