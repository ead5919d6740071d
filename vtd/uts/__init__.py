"""UTS Net (Liang et al., ICCVW 2019): unsupervised teacher-student frame features for video retrieval.

A frozen ImageNet ResNet-50 with a PCA-whitening FC layer teaches a VGG16 student (block 5
replaced by Conv-BN-ReLU x2 + Conv-BN) to keep global consistency with the teacher and
inconsistency inside a batch (`vtd/losses/uts.py`); frame features are then LSH-binarised and
aggregated per video. See `shared/reference/retrieval_uts_qbnorm.md` §A.
"""
