"""Issue 21: the five CSV files of a challenge folder mutated a few hundred times (fixed seed): the main job never
shows a traceback; it either exits 0 with a valid submission or exits 2 with a message naming a file of the
folder. Images and caches are shared between the runs, so each run costs only its reading and ranking."""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import load_main
from faultdata import clean_folder, write_csv

RUNS = 400
SEED = 21
FILES = ("query_scenarios.csv", "metadata.csv", "queries/all.csv", "databases/all.csv", "scenario_types.csv")
HOSTILE = ["", " ", "../../etc/passwd", "/etc/passwd", "images", "images/", "C:\\x.jpg", "~/x.jpg", "a" * 300,
           "b" * 5000, "\x00", "\x07", "é", "日本", '"', "'", ";", "\t", "nan", "NaN", "None", "-1", "1e309", "0x10",
           "${HOME}", "%s%n", "<script>alert(1)</script>", "w0a", "w1b", "all", "queries/all.csv",
           "databases/all.csv", "queries/../queries/all.csv", "metadata.csv", "top", "2018-02-30", "9999-99-99"]


def split_lines(text: str) -> list[str]:
    return text.split("\n")


def mutate(text: str, rng: np.random.Generator) -> bytes:
    """One to three random edits of a CSV's text, then its bytes in a random encoding."""
    lines = split_lines(text)
    for _ in range(int(rng.choice([1, 1, 1, 2, 3]))):
        op = int(rng.integers(0, 17))
        i = int(rng.integers(0, max(1, len(lines))))
        if op == 0 and lines:
            del lines[i]
        elif op == 1 and lines:
            lines.insert(i, lines[i])
        elif op == 2 and len(lines) > 1:
            j = int(rng.integers(0, len(lines)))
            lines[i], lines[j] = lines[j], lines[i]
        elif op == 3:
            joined = "\n".join(lines)
            lines = split_lines(joined[: int(rng.integers(0, len(joined) + 1))])
        elif op == 4 and lines:
            lines[i] += "," + str(rng.choice(HOSTILE))
        elif op == 5 and lines:
            lines[i] = lines[i].rsplit(",", 1)[0]
        elif op in (6, 7) and lines:
            fields = lines[i].split(",")
            fields[int(rng.integers(0, len(fields)))] = "" if op == 6 else str(rng.choice(HOSTILE))
            lines[i] = ",".join(fields)
        elif op == 8:
            sep = str(rng.choice([";", "\t", "|", " "]))
            lines = [line.replace(",", sep) for line in lines]
        elif op == 9 and lines:
            header = lines[0].split(",")
            k = int(rng.integers(0, len(header)))
            header[k] = str(rng.choice([header[k].upper(), f" {header[k]} ", header[k][:-1], header[k] + "x",
                                        header[k].replace("_", "-"), ""]))
            lines[0] = ",".join(header)
        elif op == 10:
            lines.insert(i, "")
        elif op == 11:
            lines = ['"' + line.replace('"', '""').replace(",", '","') + '"' for line in lines]
        elif op == 12 and lines:
            lines[i] = lines[i][: len(lines[i]) // 2] + '"' + lines[i][len(lines[i]) // 2:]
        elif op == 13:
            lines = lines[:1]  # the header alone
        elif op == 14:
            lines = []
        elif op == 15 and lines:
            lines[i] = "".join(chr(int(c)) for c in rng.integers(1, 0x2FF, 12))
        elif op == 16:
            lines = [line + "," for line in lines]  # a separator at the end of every line
    out = "\n".join(lines)
    encoding = int(rng.integers(0, 12))
    if encoding == 0:
        return out.replace("\n", "\r\n").encode("utf-8", "replace")
    if encoding == 1:
        return out.encode("utf-16")  # with its BOM
    if encoding == 2:
        return out.encode("latin-1", "replace")
    if encoding == 3:
        return "\ufeff".encode() + out.encode("utf-8", "replace")
    if encoding == 4:
        raw = bytearray(out.encode("utf-8", "replace"))
        for _ in range(3):
            if raw:
                raw[int(rng.integers(0, len(raw)))] = int(rng.integers(0, 256))
        return bytes(raw)
    return out.encode("utf-8", "replace")


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    root = clean_folder(tmp_path_factory.mktemp("fuzz") / "data", n_whales=3).root
    write_csv(root / "scenario_types.csv", ["scenario_id", "scenario_type"], [["all", "top all"], ["half", "top"]])
    return root


def valid(path: Path) -> tuple[bool, str]:
    """Whether a submission file is well formed: columns, scores in [0, 1] strictly falling per query (rows without
    evidence share 0), at most 20 distinct database images per query."""
    sub = pd.read_csv(path, dtype={"query_id": str, "database_image_id": str}, keep_default_na=False)
    if list(sub.columns) != ["query_id", "database_image_id", "score"]:
        return False, f"columns {list(sub.columns)}"
    scores = pd.to_numeric(sub["score"], errors="coerce")
    if scores.isna().any() or not all(0.0 <= s <= 1.0 and math.isfinite(s) for s in scores):
        return False, "a score outside [0, 1]"
    for qid, group in sub.assign(score=scores).groupby("query_id", sort=False):
        if len(group) > 20 or group["database_image_id"].duplicated().any():
            return False, f"query {qid!r}: {len(group)} rows or a repeated image"
        s = group["score"].to_numpy()
        if not ((np.diff(s) < 0) | ((s[1:] == 0) & (s[:-1] == 0))).all():
            return False, f"query {qid!r}: scores not strictly falling"
    return True, ""


def test_mutated_input_files_never_crash_the_main_job(base, tmp_path, capsys, monkeypatch, restore_logging):
    for name in [k for k in os.environ if k.startswith("WHALEMATCH_")]:
        monkeypatch.delenv(name)
    entry = load_main()
    tables = sorted(p.relative_to(base).as_posix() for p in base.rglob("*.csv"))  # FILES and the other scenario's
    originals = {f: (base / f).read_text() for f in tables}
    cache = tmp_path / "cache"
    rng = np.random.default_rng(SEED)
    outcomes = {0: 0, 2: 0}
    for run in range(RUNS):
        root = tmp_path / f"run{run}"
        for f in tables:
            (root / f).parent.mkdir(parents=True, exist_ok=True)
            (root / f).write_text(originals[f])
        (root / "images").symlink_to(base / "images")
        chosen = rng.choice(len(FILES), size=int(rng.choice([1, 1, 1, 2])), replace=False)
        for k in chosen:
            (root / FILES[k]).write_bytes(mutate(originals[FILES[k]], rng))
        out = root / "out" / "submission.csv"
        rc = entry.main(["--data-dir", str(root), "--output", str(out), "--preset", "sift-mnn", "--cache-dir",
                         str(cache), "--time-budget", "none", "--stage2", "none", "--quiet"])
        err = capsys.readouterr().err
        what = f"run {run} (mutated {[FILES[k] for k in chosen]}):\n{err[-3000:]}"
        assert "Traceback" not in err, what
        assert rc in (0, 2), what
        outcomes[rc] += 1
        if rc == 0:
            ok, why = valid(out)
            assert ok, f"{why}; {what}"
        else:
            errors = [line for line in err.splitlines() if " ERROR " in line]
            assert errors and any(str(root) in line for line in errors), what
            assert not out.exists(), what
        shutil.rmtree(root)
    assert outcomes[0] > RUNS // 10 and outcomes[2] > RUNS // 10, outcomes  # the mutations reach both outcomes
