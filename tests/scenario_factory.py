"""Build small challenge-layout data folders from generated images (known identities)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from conftest import textured_image, warp_affine

from matcher.io.images import load


def write_image(path: Path, rgb: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])


def new_view(catalogue: Path, image_id: str, path: Path, angle: float = -4.0) -> Path:
    """A new photo of a catalogue photo (``catalogue/images/<image_id>.jpg``): rotated by ``angle`` degrees and
    scaled by 0.96, written to ``path``."""
    write_image(path, warp_affine(load(Path(catalogue) / "images" / f"{image_id}.jpg"), angle=angle, scale=0.96)[0])
    return path


def make_whales(root: Path, n_whales: int = 8, per_whale: int = 3, seed: int = 0) -> pd.DataFrame:
    """Images of ``n_whales`` "whales": each a random texture, seen ``per_whale`` times under known warps."""
    rng = np.random.default_rng(seed)
    rows = []
    for w in range(n_whales):
        base = textured_image(1000 + seed * 100 + w, size=(240, 96))
        for k in range(per_whale):
            img, _ = warp_affine(base, angle=float(rng.uniform(-6, 6)), scale=float(rng.uniform(0.9, 1.1)),
                                 shift=(float(rng.uniform(-6, 6)), float(rng.uniform(-6, 6))))
            image_id = f"img{w:02d}{k}"
            rel = f"images/{image_id}.jpg"
            write_image(root / rel, img)
            rows.append({"image_id": image_id, "path": rel, "height": img.shape[0], "width": img.shape[1],
                         "viewpoint": "top", "date": "2018-08-01", "whale_id": f"w{w:02d}"})
    return pd.DataFrame(rows)


def write_layout(root: Path, meta: pd.DataFrame, scenarios: dict[str, tuple[list[str], list[str]]],
                 query_ids: dict[str, list[str]] | None = None) -> None:
    """Write query_scenarios.csv, metadata.csv and the per-scenario query and database CSVs."""
    root.mkdir(parents=True, exist_ok=True)
    meta.drop(columns=["whale_id"], errors="ignore").to_csv(root / "metadata.csv", index=False)
    index = []
    for sid, (queries, database) in scenarios.items():
        qids = (query_ids or {}).get(sid) or [f"{sid}-{q}" for q in queries]
        (root / "queries").mkdir(exist_ok=True)
        (root / "databases").mkdir(exist_ok=True)
        pd.DataFrame({"query_id": qids, "query_image_id": queries}).to_csv(root / f"queries/{sid}.csv", index=False)
        pd.DataFrame({"database_image_id": database}).to_csv(root / f"databases/{sid}.csv", index=False)
        index.append({"scenario_id": sid, "queries_path": f"queries/{sid}.csv",
                      "database_path": f"databases/{sid}.csv"})
    pd.DataFrame(index).to_csv(root / "query_scenarios.csv", index=False)


def loo_and_split(root: Path, n_whales: int, n_loo: int, per_whale: int = 3, seed: int = 0) -> pd.DataFrame:
    """Generated whales in two scenarios: ``loo``, the first view of whales ``0..n_loo-1`` as queries
    against every image (leave-one-out: queries are part of the database), and ``split``, the first
    view of the other whales against every image that is not a first view. Returns the metadata."""
    meta = make_whales(root, n_whales=n_whales, per_whale=per_whale, seed=seed)
    ids = meta["image_id"].tolist()
    firsts = meta.groupby("whale_id")["image_id"].first().tolist()
    rest = [i for i in ids if i not in firsts]
    write_layout(root, meta, {"loo": (firsts[:n_loo], ids), "split": (firsts[n_loo:], rest)})
    return meta
