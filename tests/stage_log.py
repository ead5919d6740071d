"""What a run did with each stage, read from its console lines (vtd.stages logs one per stage)."""

_ACTIONS = ("reusing", "re-evaluating", "rerunning", "resuming", "running")  # "rerunning" first


def stage_actions(caplog) -> dict[str, str]:
  """{stage: 'reusing' | 're-evaluating' | 'rerunning' | 'resuming' | 'running'}."""
  out = {}
  for r in caplog.records:
    msg = r.getMessage()
    if msg.startswith("stage ") and ": " in msg:
      name = msg.split(" ")[2]
      for word in _ACTIONS:
        if word in msg.rsplit(": ", 1)[-1] or msg.endswith(word):
          out[name] = word
          break
  return out
