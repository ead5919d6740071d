"""Text files listing video ids, one per line (FIVR's youtube_ids.txt, the CE split lists)."""

from __future__ import annotations

from vtd.errors import UserError


def read_id_list(path: str, what: str, *, strip_suffix: bool = False) -> list[str]:
  """Ids in file order; blank lines ignored, surrounding spaces stripped.

  Args:
    path: the file.
    what: its name in error messages ("split list", ...).
    strip_suffix: cut each id at its first "." (DiDeMo's "<id>.mp4").

  Raises:
    UserError (naming the file and line): missing or non-UTF-8 file, a line with more than one
    token, a duplicate id (it would duplicate a retrieval target), no id at all.
  """
  try:
    with open(path, encoding="utf-8") as f:
      # "\n"-separated, as written; str.splitlines would also split at \x0b, \x1c, \x85, ...
      lines = f.read().split("\n")
  except FileNotFoundError as e:
    raise UserError(f"{what} not found: {path}; check the path") from e
  except UnicodeDecodeError as e:
    raise UserError(f"{path}: not a UTF-8 text file ({e}); the {what} must list one video id "
                    f"per line") from e
  except OSError as e:  # A directory, no permission, an I/O error.
    raise UserError(f"cannot read {what} {path} ({e.strerror or e}); check that it is a "
                    f"readable text file") from e
  ids, seen = [], {}
  for number, line in enumerate(lines, 1):
    vid = line.strip()
    if "\x00" in vid:
      raise UserError(f"{path}:{number}: a NUL byte in a video id (a binary file?); the {what} "
                      f"must list one video id per line")
    if not vid:
      continue
    if len(vid.split()) != 1:
      raise UserError(f"{path}:{number}: expected one video id per line, got {line[:80]!r}")
    if strip_suffix:
      vid = vid.split(".")[0]
    if vid in seen:
      raise UserError(f"{path}:{number}: duplicate video id {vid[:80]!r} (first on line "
                      f"{seen[vid]})")
    seen[vid] = number
    ids.append(vid)
  if not ids:
    raise UserError(f"{path}: no video ids")
  return ids
