"""TeachText: text-video retrieval with multi-text-embedding distillation (ICCV'21)."""
