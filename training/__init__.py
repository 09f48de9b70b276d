"""Rebuilding the artefacts the project fits itself, each run from the repository's root as a module:

    python -m training.train_verifier   the learned pair model (weights/pair-model-<preset>.json)
    python -m training.train_global     the learned stage-0 head (weights/global-head-disk-v1.pt, .json)
    python -m training.build_codebook   the stage-0 codebook (weights/codebook-disk-k1024-v1.json)

(``make train-verifier``, ``make train-global``, ``make codebook``). The folds of every out-of-fold
figure are dealt by :mod:`training.whale_folds`; the pairs a pair model learns from by
:mod:`training.pair_dataset`; heads trained without chosen whales by :mod:`training.oof_heads`.
Each artefact's file names the command that rebuilt it; its SHA-256 is recorded in weights/SHA256SUMS.
"""
