"""Training the learned global head on whale identities (sub-center ArcFace over the frozen DISK keypoints).

The network is :func:`matcher.features.global_head.build_head`; this module holds its training settings
(``CONF``, ``TRAIN``), the training loop and the per-image embedding, shared by ``train_global.py`` (the
shipped head and its figures) and ``oof_heads.py`` (heads trained without chosen whales).
"""

from __future__ import annotations

import logging
import time

import numpy as np
import pandas as pd

from matcher.features.global_head import GlobalHead, build_head, pad_batch

log = logging.getLogger("train_global")
CONF = {"dim": 128, "clusters": 32, "out": 256}
TRAIN = {"epochs": 50, "batch": 64, "keypoints": 256, "lr": 3e-3, "weight_decay": 1e-4, "margin": 0.15,
         "scale": 20.0, "subcenters": 2, "min_photos": 1}
# Cross-encounter training (off when 0): batches of whales seen in two encounters, a photo of each, and photos
# of other whales taken the same day as each; an InfoNCE term (this weight, temperature TAU) pulls a whale's two
# encounters together against the same-day photos of other whales (the light, water and camera they share).
# With "cross_by": "view" the two photos are a top and a lateral view of the whale instead of two encounters.
# "structured": the share of each batch built that way, the rest photos drawn at random as without the term.
CROSS_ENCOUNTER = {"cross_encounter": 0.0, "tau": 0.1, "structured": 0.5}


def add_cross_options(parser, prefix: str = "") -> None:
    """The command-line options of the cross-encounter term (``--<prefix>cross-encounter`` and the rest)."""
    parser.add_argument(f"--{prefix}cross-encounter", type=float, default=0.0,
                        help="weight of the head's cross-encounter term (head_training.CROSS_ENCOUNTER; 0: off)")
    parser.add_argument(f"--{prefix}structured", type=float, default=CROSS_ENCOUNTER["structured"],
                        help="share of each batch built for the cross-encounter term (the rest drawn at random)")
    parser.add_argument(f"--{prefix}cross-by", choices=("encounter", "view"), default="encounter",
                        help="what a cross-encounter positive's two photos differ in (view: a top and a lateral)")


def train_settings(args, base: dict | None = None, prefix: str = "") -> dict:
    """The training settings of :func:`add_cross_options`' values over ``base`` (``TRAIN``). The cross-encounter
    keys enter only when the term is on, so heads trained without it keep their cache keys."""
    train = dict(base or TRAIN)
    attr = prefix.replace("-", "_")
    weight = getattr(args, f"{attr}cross_encounter")
    if weight > 0:
        train.update({**CROSS_ENCOUNTER, "cross_encounter": weight, "structured": getattr(args, f"{attr}structured")})
        if getattr(args, f"{attr}cross_by") != "encounter":
            train["cross_by"] = getattr(args, f"{attr}cross_by")
    return train


def encounter_batches(labels: list[str], encounters: list[str], dates: list[str], batch: int, n_batches: int,
                      rng) -> list[tuple[np.ndarray, np.ndarray]]:
    """``n_batches`` batches of photo indices, with for each the index in the batch of its cross-encounter
    positive (-1: none): a quarter of the batch are whales photographed in two encounters, each with a photo of
    one encounter and one of another, and the rest photos of other whales taken on those photos' days."""
    by_whale: dict[str, dict[str, list[int]]] = {}
    by_date: dict[str, list[int]] = {}
    for i, (w, e, d) in enumerate(zip(labels, encounters, dates)):
        by_whale.setdefault(w, {}).setdefault(e or f"photo{i}", []).append(i)
        by_date.setdefault(d, []).append(i)
    travellers = sorted(w for w, enc in by_whale.items() if len(enc) >= 2)
    per = max(1, batch // 4)
    out = []
    for _ in range(n_batches):
        chosen = rng.choice(len(travellers), min(per, len(travellers)), replace=False)
        idx, pos = [], []
        for c in chosen:
            enc = by_whale[travellers[c]]
            e1, e2 = rng.choice(sorted(enc), 2, replace=False)
            a, b = int(rng.choice(enc[e1])), int(rng.choice(enc[e2]))
            idx += [a, b]
            pos += [len(idx) - 1, len(idx) - 2]
        for a in list(idx):
            others = [j for j in by_date.get(dates[a], []) if labels[j] != labels[a]]
            if others and len(idx) < batch:
                idx.append(int(rng.choice(others)))
                pos.append(-1)
        out.append((np.array(idx), np.array(pos)))
    return out


def train_head(inputs: list[np.ndarray], labels: list[str], seed: int = 0, train: dict | None = None,
               conf: dict | None = None, encounters: list[str] | None = None,
               dates: list[str] | None = None) -> GlobalHead:
    """A head trained on the keypoint inputs of photos labelled by whale. Whales with fewer than
    ``train['min_photos']`` photos are left out; those kept with one photo are classes of their own
    (negatives for every other). Each step takes a batch of photos, each a random subset of its keypoints
    (an augmentation and a bound on the work); AdamW with a one-cycle schedule; fixed seed. With
    ``train['cross_encounter']`` > 0 (needs ``encounters`` and ``dates`` per photo) the batches are
    :func:`encounter_batches` and the loss adds that weight of the cross-encounter InfoNCE term (``encounters``:
    what the two photos of a positive differ in; the view, top or lateral, for ``train['cross_by'] == 'view'``)."""
    import torch
    from torch.nn import functional as F

    train, conf = {**TRAIN, **(train or {})}, {**CONF, **(conf or {})}
    counts = pd.Series(labels).value_counts()
    keep = [i for i, w in enumerate(labels) if counts[w] >= train["min_photos"]]
    inputs, labels = [inputs[i] for i in keep], [labels[i] for i in keep]
    cross = float(train.get("cross_encounter", 0.0))
    if cross > 0:
        if encounters is None or dates is None:
            raise ValueError("cross-encounter training needs each photo's encounter (or view) and date")
        encounters, dates = [encounters[i] for i in keep], [dates[i] for i in keep]
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    classes = sorted(set(labels))
    index = {w: i for i, w in enumerate(classes)}
    y_all = np.array([index[w] for w in labels])
    head = build_head(conf)
    k = int(train["subcenters"])
    weight = torch.nn.Parameter(torch.randn(len(classes) * k, conf["out"]) * 0.01)
    opt = torch.optim.AdamW(list(head.parameters()) + [weight], lr=train["lr"], weight_decay=train["weight_decay"])
    steps = train["epochs"] * int(np.ceil(len(inputs) / train["batch"]))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=train["lr"], total_steps=steps, pct_start=0.1)
    cos_m, sin_m = float(np.cos(train["margin"])), float(np.sin(train["margin"]))
    started = time.perf_counter()
    per_epoch = int(np.ceil(len(inputs) / train["batch"]))
    for epoch in range(train["epochs"]):
        if cross > 0:
            size = max(2, int(round(train["batch"] * float(train.get("structured", 1.0)))))
            batches = []
            for idx, pos in encounter_batches(labels, encounters, dates, size, per_epoch, rng):
                fill = 0 if size >= train["batch"] else train["batch"] - len(idx)  # 1.0: structured batches only
                rest = rng.choice(len(inputs), fill, replace=False) if fill > 0 else np.zeros(0, int)
                batches.append((np.concatenate([idx, rest]), np.concatenate([pos, np.full(len(rest), -1)])))
        else:
            order = rng.permutation(len(inputs))
            batches = [(order[s:s + train["batch"]], None) for s in range(0, len(order), train["batch"])]
        total = 0.0
        for idx, pos in batches:
            xs = []
            for i in idx:
                x = inputs[i]
                if len(x) > train["keypoints"]:
                    x = x[np.sort(rng.choice(len(x), train["keypoints"], replace=False))]
                xs.append(np.asarray(x, np.float32))
            x, mask = pad_batch(xs, conf["dim"] + 3)
            emb = head(torch.from_numpy(x), torch.from_numpy(mask))
            cos = (emb @ F.normalize(weight, dim=-1).T).view(len(idx), len(classes), k).max(-1).values
            y = torch.from_numpy(y_all[idx])
            target = cos.gather(1, y[:, None]).clamp(-1 + 1e-7, 1 - 1e-7)
            with_margin = target * cos_m - torch.sqrt(1 - target ** 2) * sin_m
            logits = cos.scatter(1, y[:, None], with_margin) * train["scale"]
            loss = F.cross_entropy(logits, y)
            if pos is not None and (pos >= 0).any():
                sim = (emb @ emb.T) / float(train.get("tau", 0.1))
                same = y[:, None] == y[None, :]
                anchors = torch.from_numpy(np.flatnonzero(pos >= 0))
                target = torch.from_numpy(pos[pos >= 0])
                row = sim[anchors].masked_fill(same[anchors], float("-inf"))  # other whales only ...
                row = row.scatter(1, target[:, None], sim[anchors].gather(1, target[:, None]))  # ... and the positive
                loss = loss + cross * F.cross_entropy(row, target)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        log.debug("epoch %d: loss %.3f", epoch, total / sum(len(b) for b, _ in batches))
    seconds = time.perf_counter() - started
    log.info("global head: %d photos of %d whales, %d epochs in %.0f s (last loss %.3f)", len(inputs),
             len(classes), train["epochs"], seconds, total / sum(len(b) for b, _ in batches))
    state = {k_: v.detach().clone() for k_, v in head.state_dict().items()}
    return GlobalHead(conf, state, {"train": train, "seed": seed, "photos": len(inputs), "whales": len(classes),
                                    "train_seconds": round(seconds, 1)})


def embed_all(head: GlobalHead, inputs: dict[str, np.ndarray], ids) -> dict[str, np.ndarray]:
    """int8 embedding per image id, each computed alone from all its keypoints."""
    return {i: head.embed_inputs(inputs[i]) for i in ids}
