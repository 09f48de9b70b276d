"""Pairs of images: tentative matches (mutual nearest neighbours, LightGlue, LoFTR), RANSAC verification,
the batched verification stage and the verdict store (one verdict per unordered pair and settings)."""
