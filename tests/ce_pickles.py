"""CE feature pickles written the way the Collaborative-Experts release wrote them (test data)."""

import os
import pickle
import sys
import types

import numpy as np


def write_pickle(path, obj, protocol=4):
  """Pickles `obj` to `path` (parent folders created); returns the path."""
  os.makedirs(os.path.dirname(os.fspath(path)) or ".", exist_ok=True)
  with open(path, "wb") as f:
    pickle.dump(obj, f, protocol=protocol)
  return path


def write_expert_store(path, keys, store, missing=()):
  """Pickles an ExpertStore as the old CE code did: class `datastructures.ExpertStore`, with
  the Python-2-era protocol 2 (__builtin__ names, _codecs); keys an array of str and keymap
  keyed by numpy strings, as after CE's `filter_keys`. The `datastructures` module exists
  only while pickling: the reader must not need it. Returns the path."""
  module = types.ModuleType("datastructures")
  cls = type("ExpertStore", (), {"__module__": "datastructures"})
  module.ExpertStore = cls
  sys.modules["datastructures"] = module
  try:
    obj = cls.__new__(cls)
    obj.keys, obj.dim, obj.store_dtype = np.array(keys), store.shape[1], np.float16
    obj.store = store.astype(np.float16)
    obj.keymap = {k: i for i, k in enumerate(obj.keys)}
    obj.missing = set(missing)
    return write_pickle(path, obj, protocol=2)
  finally:
    del sys.modules["datastructures"]
