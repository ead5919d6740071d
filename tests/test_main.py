import logging

from vtd import main as vtd_main


def _record(path, level, msg):
  return logging.LogRecord("absl", level, path, 1, msg, (), None)


def test_library_log_filter():
  f = vtd_main._LibraryInfoFilter()
  orbax = "/x/site-packages/orbax/checkpoint/checkpoint_manager.py"
  assert not f.filter(_record(orbax, logging.INFO, "Saving checkpoint at step 5"))
  assert f.filter(_record(orbax, logging.WARNING, "disk almost full"))
  assert not f.filter(_record(orbax, logging.WARNING, "Requested `tracked_metric`; did not "
                                                      "provide metrics."))
  assert f.filter(_record("/repo/vtd/train.py", logging.INFO, "step 5"))
