"""vtd: teacher-student learning in video (TeachText, foreground segmentation, UTS) in JAX/Flax."""

__version__ = "0.1.0"
