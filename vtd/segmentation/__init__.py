"""Unsupervised foreground segmentation (ICCV'17 / IJCV'19): VideoPCA teacher, students, selection, Multi-Net, EvalSeg-Net."""
