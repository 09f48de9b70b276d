"""Local features per image: the extractor wrappers (DISK, ALIKED, SIFT), the batched feature stage
(mirrored photos too) and the per-image feature store."""
