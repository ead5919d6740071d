"""Reader for Object Discovery in Internet Images (Rubinstein, Joulin, Kopf & Liu, CVPR 2013).

The reference (`segmentation.md` §5.3) fixes the classes (Airplane, Car, Horse) and that Table 1
is computed on the 100-image-per-class subsets. The on-disk layout is NOT FOUND there; this
reader follows the released `ObjectDiscovery-data.zip` as public code reads it:

  ObjectDiscovery-data/
    Data/
      Airplane/ Car/ Horse/                  full (noisy) class sets
      Airplane100/ Car100/ Horse100/         the 100-image subsets (default classes)
        <stem>.jpg                           the images
        GroundTruth/<stem>.png               one mask per image, same stem and size

Decisions for what the reference leaves open (documented here, not from the paper):
* `root` may be `ObjectDiscovery-data`, its `Data` folder or any folder holding the class
  folders; class folders are looked up in `root` first, then in `root/Data`.
* Images are the files directly in a class folder with extension .jpg/.jpeg/.png/.bmp (any
  case), sorted by name; hidden files, other files and sub-folders are ignored.
* The mask of `<stem>.<ext>` is `GroundTruth/<stem>` with the first extension found among
  .png, .bmp, .jpg, .jpeg, .pgm, .tif, .tiff (any case). A missing mask is an error: every
  image of the release has one (noise images have an all-background mask and are kept).
* Foreground is the bright part of the mask: colour masks take the max over colour channels
  (alpha is ignored); a mask whose values are all <= 1 is a 0/1 mask (foreground = 1),
  otherwise foreground is value > 127.5 (8-bit scale; > 32767.5 for 16-bit files with values
  above 255), which also cleans JPEG-compressed 0/255 masks.
* Images are returned RGB uint8; an image and its mask must have the same size.
* `class_name` is the folder name without a trailing "100" ("Airplane100" -> "Airplane").
* `resize=(H, W)` is optional: bilinear for images (area when shrinking), nearest for masks.
  For P and J keep the default None: the ground truth stays at the original size and the
  predictions are resized to it (§5.3).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence

import cv2
import numpy as np

from vtd.errors import UserError

CLASSES_100 = ("Airplane100", "Car100", "Horse100")
CLASSES_FULL = ("Airplane", "Car", "Horse")

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")
MASK_EXTENSIONS = (".png", ".bmp", ".jpg", ".jpeg", ".pgm", ".tif", ".tiff")
GT_FOLDER = "GroundTruth"


@dataclasses.dataclass(frozen=True)
class ObjectDiscoveryEntry:
  """One image of the dataset, before reading pixels.

  Attributes:
    class_name: "Airplane", "Car" or "Horse" (folder name without "100").
    folder: the class folder it came from, e.g. "Airplane100".
    image_id: "<folder>/<stem>", unique over the dataset.
    image_path, mask_path: absolute file paths.
  """
  class_name: str
  folder: str
  image_id: str
  image_path: str
  mask_path: str


@dataclasses.dataclass
class ObjectDiscoveryImage:
  """One image with its ground truth.

  Attributes:
    image: [H, W, 3] uint8 RGB.
    mask: [H, W] bool, True on the object.
    class_name, folder, image_id, image_path, mask_path: as in `ObjectDiscoveryEntry`.
  """
  image: np.ndarray
  mask: np.ndarray
  class_name: str
  folder: str
  image_id: str
  image_path: str
  mask_path: str


def read_image_rgb(path: str, resize: tuple[int, int] | None = None) -> np.ndarray:
  """Reads an image file as [H, W, 3] uint8 RGB (grey and 16-bit files are converted).

  Args:
    path: image file.
    resize: optional (H, W); bilinear, or area interpolation when shrinking.

  Raises:
    UserError: the file is missing or not a readable image.
  """
  if not os.path.isfile(path):
    raise UserError(f"image file not found: {path}")
  bgr = cv2.imread(path, cv2.IMREAD_COLOR)
  if bgr is None or bgr.size == 0:
    raise UserError(f"cannot read image file (corrupt or unsupported format): {path}")
  rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
  return resize_image(rgb, resize, nearest=False)


def read_mask(path: str, resize: tuple[int, int] | None = None) -> np.ndarray:
  """Reads a ground-truth mask file as [H, W] bool (module docstring: foreground rule).

  Raises:
    UserError: the file is missing or not a readable image.
  """
  if not os.path.isfile(path):
    raise UserError(f"mask file not found: {path}")
  raw = cv2.imread(path, cv2.IMREAD_UNCHANGED)
  if raw is None or raw.size == 0:
    raise UserError(f"cannot read mask file (corrupt or unsupported format): {path}")
  if raw.ndim == 3:
    raw = raw[..., :3].max(axis=-1)  # Colour (or colour + alpha) masks: any bright channel.
  peak = raw.max()
  if peak <= 1:
    mask = raw > 0
  else:
    # 8-bit scale unless values exceed it (16-bit files holding 0/255 masks stay correct).
    wide = peak > 255 and np.issubdtype(raw.dtype, np.integer)
    top = np.iinfo(raw.dtype).max if wide else 255
    mask = raw > top / 2
  return resize_image(mask, resize, nearest=True)


def resize_image(array: np.ndarray, resize: tuple[int, int] | None,
                 nearest: bool = False) -> np.ndarray:
  """Resizes [H, W(, C)] to `resize` = (H, W): nearest for masks (bool in, bool out),
  otherwise bilinear, or area interpolation when shrinking both sides. None: unchanged."""
  if resize is None:
    return array
  h, w = (int(v) for v in resize)
  if h <= 0 or w <= 0:
    raise ValueError(f"resize must be a positive (H, W), got {resize}")
  if array.shape[:2] == (h, w):
    return array
  if nearest:
    out = cv2.resize(array.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST)
    return out.astype(bool)
  shrink = h < array.shape[0] and w < array.shape[1]
  return cv2.resize(array, (w, h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def _find_class_dir(root: str, folder: str) -> str:
  for base in (root, os.path.join(root, "Data")):
    path = os.path.join(base, folder)
    if os.path.isdir(path):
      return path
  raise UserError(f"Object Discovery class folder not found: {os.path.join(root, folder)} "
                  f"(also looked in {os.path.join(root, 'Data', folder)})")


def _ext_lookup(directory: str) -> dict[tuple[str, str], str]:
  """(stem, lower-case extension) -> file name, for the files of `directory`."""
  out = {}
  for name in sorted(os.listdir(directory)):
    stem, ext = os.path.splitext(name)
    if not name.startswith(".") and os.path.isfile(os.path.join(directory, name)):
      out.setdefault((stem, ext.lower()), name)
  return out


def list_object_discovery(root: str, classes: Sequence[str] = CLASSES_100
                          ) -> list[ObjectDiscoveryEntry]:
  """Lists the images and ground-truth masks of the given class folders (no pixels read).

  Args:
    root: dataset root (module docstring).
    classes: class folder names, e.g. ("Airplane100", "Car100", "Horse100") (default) or
      ("Airplane", "Car", "Horse") for the full sets.

  Returns:
    Entries in class order, then file-name order.

  Raises:
    UserError: a missing root, class folder or GroundTruth folder, an empty class folder, or
      an image without a mask (the message names the path).
  """
  root = os.path.abspath(os.path.expanduser(root))
  if not os.path.isdir(root):
    raise UserError(f"Object Discovery root folder not found: {root}")
  entries = []
  for folder in classes:
    class_dir = _find_class_dir(root, folder)
    gt_dir = os.path.join(class_dir, GT_FOLDER)
    if not os.path.isdir(gt_dir):
      raise UserError(f"ground-truth folder not found: {gt_dir}")
    masks = _ext_lookup(gt_dir)
    images = [(stem, name) for (stem, ext), name in _ext_lookup(class_dir).items()
              if ext in IMAGE_EXTENSIONS]
    if not images:
      raise UserError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in {class_dir}")
    stems = [stem for stem, _ in images]
    if len(set(stems)) != len(stems):
      dup = sorted({s for s in stems if stems.count(s) > 1})[0]
      raise UserError(f"two images named {dup!r} with different extensions in {class_dir}; "
                      "their masks would be ambiguous")
    class_name = folder[:-3] if folder.endswith("100") and len(folder) > 3 else folder
    for stem, name in sorted(images, key=lambda x: x[1]):
      mask_name = next((masks[(stem, e)] for e in MASK_EXTENSIONS if (stem, e) in masks), None)
      if mask_name is None:
        raise UserError(f"no ground-truth mask for image {os.path.join(class_dir, name)}: "
                        f"expected {os.path.join(gt_dir, stem)}.png (or "
                        f"{', '.join(MASK_EXTENSIONS[1:])})")
      entries.append(ObjectDiscoveryEntry(
          class_name=class_name, folder=folder, image_id=f"{folder}/{stem}",
          image_path=os.path.join(class_dir, name), mask_path=os.path.join(gt_dir, mask_name)))
  return entries


def load_entry(entry: ObjectDiscoveryEntry,
               resize: tuple[int, int] | None = None) -> ObjectDiscoveryImage:
  """Reads one entry's image and mask (UserError naming the file if either is unreadable)."""
  image = read_image_rgb(entry.image_path)
  mask = read_mask(entry.mask_path)
  if mask.shape != image.shape[:2]:
    raise UserError(f"mask {entry.mask_path} is {mask.shape[1]}x{mask.shape[0]} but image "
                    f"{entry.image_path} is {image.shape[1]}x{image.shape[0]} (W x H)")
  return ObjectDiscoveryImage(
      image=resize_image(image, resize), mask=resize_image(mask, resize, nearest=True),
      class_name=entry.class_name, folder=entry.folder, image_id=entry.image_id,
      image_path=entry.image_path, mask_path=entry.mask_path)


def load_object_discovery(root: str, classes: Sequence[str] = CLASSES_100,
                          resize: tuple[int, int] | None = None) -> list[ObjectDiscoveryImage]:
  """Reads the images and masks of the given class folders into memory.

  Args:
    root, classes: as for `list_object_discovery`.
    resize: optional (H, W) for images and masks; keep None for P/J evaluation (§5.3).

  Returns:
    One `ObjectDiscoveryImage` per image, in `list_object_discovery` order.
  """
  return [load_entry(e, resize) for e in list_object_discovery(root, classes)]
