"""Segmentation data: the embedded synthetic videos (generator and object classes) and the
readers of the real test sets (Object Discovery, YouTube-Objects)."""
