"""Check a LightGBM model in its text format before LightGBM parses it.

LightGBM's own parser trusts its input: it cuts the text into trees at the byte offsets the header's
``tree_sizes`` gives (in parallel), and at prediction time follows the trees' child and feature indices
without bounds checks. A model cut short, or one whose values were edited so that a tree's length no
longer matches ``tree_sizes``, makes it read past its buffer (a segmentation fault), and an out-of-range
index reads memory that is not the model's. :func:`check` reads the text the way LightGBM would and
refuses (``ValueError`` saying where) anything that is not a well-formed model of numerical splits over
``n_features`` features with one tree per iteration (a binary classifier or a ranker): every tree at the
offset its size says, every array of the length its leaf count asks, every number finite, every index in
range, each node reached once.
"""

from __future__ import annotations

import math

ARRAYS_INTERNAL = ("split_feature", "split_gain", "threshold", "decision_type", "left_child", "right_child",
                   "internal_value", "internal_weight", "internal_count")
ARRAYS_LEAF = ("leaf_value", "leaf_weight", "leaf_count")
REQUIRED = ("num_leaves", "num_cat", "leaf_value", "shrinkage")
MAX_LEAVES = 1 << 17
DECISION_MISSING = 0b1100  # bits 2-3: how a missing value is routed (0 none, 1 zero, 2 NaN)


def _numbers(text: str, what: str, kind=float, infinite_ok: bool = False) -> list:
    out = []
    for token in text.split():
        try:
            value = kind(token)
        except ValueError:
            raise ValueError(f"{what}: {token[:20]!r} is not a number") from None
        if kind is float and not (math.isfinite(value) or (infinite_ok and not math.isnan(value))):
            raise ValueError(f"{what}: {token[:20]!r} is not finite")
        out.append(value)
    return out


def _fields(block: str, where: str) -> dict[str, str]:
    fields = {}
    for line in block.split("\n"):
        if not line:
            continue
        key, sep, value = line.partition("=")
        if not sep:
            raise ValueError(f"{where}: line {line[:40]!r} is not key=value")
        if key in fields:
            raise ValueError(f"{where}: {key} given twice")
        fields[key] = value
    return fields


def _check_tree(block: str, where: str, n_features: int) -> None:
    f = _fields(block, where)
    missing = [k for k in REQUIRED if k not in f]
    if missing:
        raise ValueError(f"{where}: no {', '.join(missing)}")
    count = _numbers(f["num_leaves"], f"{where} num_leaves", int)
    leaves = count[0] if len(count) == 1 else 0
    if not 1 <= leaves <= MAX_LEAVES:
        raise ValueError(f"{where}: num_leaves {leaves} out of range")
    if f["num_cat"].strip() != "0" or f.get("is_linear", "0").strip() != "0":
        raise ValueError(f"{where}: categorical or linear trees are not models of this project")
    _numbers(f["shrinkage"], f"{where} shrinkage")
    if leaves == 1:  # a tree of one leaf (LightGBM leaves the other arrays blank, or its weight)
        if len(_numbers(f["leaf_value"], f"{where} leaf_value")) != 1:
            raise ValueError(f"{where}: leaf_value must hold one value for one leaf")
        return
    arrays = {}
    for name in ARRAYS_LEAF + ARRAYS_INTERNAL:
        if name not in f:
            if name in ("leaf_value", *ARRAYS_INTERNAL[:6]):
                raise ValueError(f"{where}: no {name}")
            continue
        kind = int if name in ("split_feature", "decision_type", "left_child", "right_child", "leaf_count",
                               "internal_count") else float
        values = _numbers(f[name], f"{where} {name}", kind, infinite_ok=name == "threshold")  # a split at inf
        expected = leaves if name in ARRAYS_LEAF else leaves - 1
        if len(values) != expected:
            raise ValueError(f"{where}: {name} has {len(values)} values, {expected} expected for {leaves} leaves")
        arrays[name] = values
    if any(not 0 <= s < n_features for s in arrays["split_feature"]):
        raise ValueError(f"{where}: a split on a feature outside 0..{n_features - 1}")
    if any(d < 0 or d & ~(DECISION_MISSING | 0b10) or (d & DECISION_MISSING) == DECISION_MISSING
           for d in arrays["decision_type"]):
        raise ValueError(f"{where}: a decision type other than a numerical split")
    seen_nodes, seen_leaves = [0] * (leaves - 1), [0] * leaves
    for child in arrays["left_child"] + arrays["right_child"]:
        if 0 <= child < leaves - 1:
            seen_nodes[child] += 1
        elif -leaves <= child < 0:
            seen_leaves[~child] += 1
        else:
            raise ValueError(f"{where}: child index {child} out of range")
    if seen_nodes[0] != 0 or any(n != 1 for n in seen_nodes[1:]) or any(n != 1 for n in seen_leaves):
        raise ValueError(f"{where}: the nodes do not form one tree (each node and leaf reached once from the root)")


def check(text: str, n_features: int, objectives: tuple[str, ...] = ("binary",)) -> int:
    """The number of trees of a well-formed model text over ``n_features`` features whose objective is one of
    ``objectives``; ``ValueError`` otherwise."""
    if not isinstance(text, str) or not text.isascii():
        raise ValueError("not ASCII text")
    data = text.encode("ascii")
    start = data.find(b"\nTree=")
    end = data.find(b"end of trees")
    if not data.startswith(b"tree\n") or start < 0 or end < start:
        raise ValueError("not LightGBM's text format (tree ... Tree=0 ... end of trees)")
    header = _fields(text[len("tree\n") : start + 1], "header")
    if header.get("num_class") != "1" or header.get("num_tree_per_iteration") != "1":
        raise ValueError("header: not a model with one tree per iteration")
    if header.get("objective", "").split(" ")[0] not in objectives:
        raise ValueError(f"header: objective {header.get('objective', '')[:40]!r} is not {' or '.join(objectives)}")
    if header.get("max_feature_idx") != str(n_features - 1):
        raise ValueError(f"header: max_feature_idx {header.get('max_feature_idx', '')[:20]!r}, "
                         f"{n_features - 1} expected for {n_features} features")
    sizes = _numbers(header.get("tree_sizes", ""), "header tree_sizes", int)
    if not sizes:
        raise ValueError("header: no tree_sizes")
    pos = start + 1
    for i, size in enumerate(sizes):
        if size <= 0 or pos + size > end:
            raise ValueError(f"tree {i}: its size {size} runs past the end of the trees (text cut short?)")
        block = data[pos : pos + size]
        title = f"Tree={i}\n".encode()
        if not block.startswith(title) or not block.endswith(b"\n"):
            raise ValueError(f"tree {i}: not at the offset tree_sizes gives (a tree's length changed?)")
        _check_tree(block[len(title):].decode("ascii"), f"tree {i}", n_features)
        pos += size
    if data[pos:end].strip():
        raise ValueError("text after the last tree that tree_sizes counts")
    return len(sizes)
