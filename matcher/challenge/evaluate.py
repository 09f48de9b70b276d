"""Evaluate a submission against development labels: mAP@20 and top-1, per scenario and overall.

Usage: python -m matcher.challenge.evaluate --submission submission.csv --labels data/dev_labels.csv
       [--scenarios data/dev]

Overall is the mean over all labelled queries, as in the challenge. Without
--scenarios, a query's scenario is the part of its query_id before the first "-"
(the ids matcher.challenge.scenarios writes); with it, the scenario's query files decide
and scenario_types.csv, when present, adds each scenario's type.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from ..errors import DataError, WhaleMatchError
from ..io.tables import read_csv
from .layout import read_types
from .metric import mean_average_precision, top1_accuracy
from .submission import SUBMISSION_COLUMNS, TOP_K

LABEL_COLUMNS = ("query_id", "database_image_id")


def read_submission(path: str | Path) -> pd.DataFrame:
    """Submission with a float score column; warns about challenge-rule violations."""
    df = read_csv(Path(path), tuple(SUBMISSION_COLUMNS))[SUBMISSION_COLUMNS]
    score = pd.to_numeric(df["score"].str.strip(), errors="coerce")
    if score.isna().any():
        bad = df["score"][score.isna()].iloc[0]
        raise DataError(f"{path}: score {bad!r} is not a number ({int(score.isna().sum())} such rows)")
    df = df.assign(score=score.astype(float))
    if ((df["score"] < 0) | (df["score"] > 1)).any():
        print(f"warning: {path}: some scores lie outside [0, 1]", file=sys.stderr)
    if len(df) and df.groupby("query_id").size().max() > TOP_K:
        print(f"warning: {path}: some queries have more than {TOP_K} predictions", file=sys.stderr)
    return df


def scenario_of_queries(labels: pd.DataFrame, scenarios_dir: str | Path | None) -> pd.DataFrame:
    """query_id -> scenario, scenario_type (type empty when unknown)."""
    queries = pd.Series(pd.unique(labels["query_id"]), name="query_id")
    if scenarios_dir is None:
        return pd.DataFrame(
            {"query_id": queries, "scenario": queries.str.split("-", n=1).str[0], "scenario_type": ""}
        )
    root = Path(scenarios_dir)
    index = read_csv(root / "query_scenarios.csv", ("scenario_id", "queries_path"))
    frames = [
        read_csv(root / rel, ("query_id",))[["query_id"]].assign(scenario=sid)
        for sid, rel in zip(index["scenario_id"], index["queries_path"], strict=True)
    ]
    mapping = pd.concat(frames, ignore_index=True).drop_duplicates("query_id")
    types = read_types(root)
    mapping["scenario_type"] = mapping["scenario"].map(lambda sid: types.get(sid, ""))
    unknown = set(queries) - set(mapping["query_id"])
    if unknown:
        raise DataError(f"{root}: labelled query {sorted(unknown)[0]!r} is in no scenario's query file")
    return mapping[mapping["query_id"].isin(set(queries))]


def _row(name: str, scenario_type: str, ap: pd.Series, top1: pd.Series) -> dict:
    return {
        "scenario": name,
        "scenario_type": scenario_type,
        "n_queries": len(ap),
        "map20": float(ap.mean()),
        "top1": float(top1.mean()),
    }


def score_frames(submission: pd.DataFrame, labels: pd.DataFrame, queries: pd.DataFrame) -> pd.DataFrame:
    """Per-scenario and overall table from loaded frames; queries maps query_id -> scenario."""
    _, ap = mean_average_precision(submission, labels)
    _, top1 = top1_accuracy(submission, labels)
    rows = []
    for (scenario, scenario_type), group in queries.groupby(["scenario", "scenario_type"], sort=True):
        ids = list(group["query_id"])
        rows.append(_row(scenario, scenario_type, ap[ids], top1[ids]))
    rows.append(_row("overall", "", ap, top1))
    return pd.DataFrame(rows)


def score_by_type(sub: pd.DataFrame, labels: pd.DataFrame, queries: pd.DataFrame) -> pd.DataFrame:
    """Rows per scenario type (types in first-seen scenario order) and an ``overall`` row: queries, mAP@20, top-1."""
    _, ap = mean_average_precision(sub, labels)
    _, top1 = top1_accuracy(sub, labels)
    q = queries.set_index("query_id")
    q = q.loc[q.index.intersection(ap.index)]
    q["type"] = q["scenario_type"].where(q["scenario_type"] != "", q["scenario"])
    order = q.sort_values("scenario")["type"].drop_duplicates().tolist()
    rows = []
    for t in order:
        ids = q.index[q["type"] == t]
        rows.append({"type": t, "queries": len(ids), "map20": ap[ids].mean(), "top1": top1[ids].mean()})
    rows.append({"type": "overall", "queries": len(ap), "map20": ap.mean(), "top1": top1.mean()})
    return pd.DataFrame(rows)


def subset_dir(root: Path, keep: set[str], tmp: Path) -> Path:
    """A data folder holding only the scenarios in ``keep`` (links to the rest of ``root``)."""
    for name in os.listdir(root):
        if name not in ("query_scenarios.csv", "scenario_types.csv"):
            (tmp / name).symlink_to((root / name).resolve())
    index = pd.read_csv(root / "query_scenarios.csv", dtype=str, keep_default_na=False)
    index[index["scenario_id"].isin(keep)].to_csv(tmp / "query_scenarios.csv", index=False)
    if (root / "scenario_types.csv").is_file():
        types = pd.read_csv(root / "scenario_types.csv", dtype=str, keep_default_na=False)
        types[types["scenario_id"].isin(keep)].to_csv(tmp / "scenario_types.csv", index=False)
    return tmp


def score_submission(
    submission_path: str | Path, labels_path: str | Path, scenarios_dir: str | Path | None = None
) -> pd.DataFrame:
    """Table with columns scenario, scenario_type, n_queries, map20, top1; last row 'overall'."""
    labels = read_csv(Path(labels_path), LABEL_COLUMNS)[list(LABEL_COLUMNS)]
    if labels.empty:
        raise DataError(f"{labels_path}: no labelled queries")
    submission = read_submission(submission_path)
    queries = scenario_of_queries(labels, scenarios_dir)
    return score_frames(submission, labels, queries)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m matcher.challenge.evaluate", description=__doc__.split("\n")[0])
    parser.add_argument("--submission", required=True, help="CSV: query_id,database_image_id,score")
    parser.add_argument("--labels", required=True, help="CSV: query_id,database_image_id")
    parser.add_argument("--scenarios", default=None, help="scenario folder (query_scenarios.csv, ...)")
    args = parser.parse_args(argv)
    try:
        table = score_submission(args.submission, args.labels, args.scenarios)
    except WhaleMatchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(table.to_string(index=False, float_format=lambda x: f"{x:.4f}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
