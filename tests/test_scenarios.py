"""Development scenarios built from a synthetic catalogue (and, when present, the real one)."""

import os
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from matcher.challenge.scenarios import (
    SCENARIO_TYPES,
    SPECS,
    build_scenarios,
    dev_set_size,
    main,
    make_dev_set,
    read_labelled_catalogue,
)
from matcher.errors import DataError

LOO_TYPES = {t for t, s in SPECS.items() if s.leave_one_out}
CROSS_YEAR = ("top_2018_to_2017", "top_2019_to_2017", "top_2019_to_2018")
SMALL = {"max_queries": 6, "max_database": 24}


def real_catalogue() -> Path:
    default = Path(__file__).resolve().parents[1].parent / "shared" / "belugas"
    return Path(os.environ.get("WHALEMATCH_BELUGAS", default))


def write_catalogue(root: Path) -> Path:
    """24 whales seen in 2017-2019 from the top, half of them also from the side in 2017."""
    (root / "images").mkdir(parents=True)
    rows = []
    for w in range(24):
        shots = [("top", 2017)] * (1 + w % 3) + [("top", 2018)] * (2 + w % 2) + [("top", 2019)] * (1 + w % 2)
        if w % 2 == 0:
            shots += [("left", 2017), ("right", 2017)]
        for k, (view, year) in enumerate(shots):
            image_id = f"img{len(rows):04d}"
            path = f"images/{image_id}.jpg"
            size = (40, 20) if view == "top" else (60, 16)
            Image.new("RGB", size, (w * 10 % 256, k * 30 % 256, 90)).save(root / path)
            rows.append((image_id, path, size[1], size[0], view, f"{year}-08-{1 + k:02d}",
                         f"{year}-08-{1 + k:02d} 12:00:00", f"whale{w:03d}", f"whale{w:03d}-{year}"))
    columns = "image_id,path,height,width,viewpoint,date,timestamp,whale_id,encounter_id".split(",")
    pd.DataFrame(rows, columns=columns).to_csv(root / "metadata.csv", index=False)
    return root


@pytest.fixture(scope="module")
def catalogue_dir(tmp_path_factory):
    return write_catalogue(tmp_path_factory.mktemp("catalogue"))


@pytest.fixture(scope="module")
def dev(catalogue_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("dev")
    summary = make_dev_set(catalogue_dir, out / "dev", out / "labels.csv", seed=0, **SMALL)
    return out / "dev", out / "labels.csv", summary


def read(path):
    return pd.read_csv(path, dtype=str)


def scenario_tables(out: Path):
    """scenario_id -> (type, queries frame, database image ids)."""
    index = read(out / "query_scenarios.csv")
    types = dict(read(out / "scenario_types.csv").itertuples(index=False))
    return {
        sid: (types[sid], read(out / q), list(read(out / d)["database_image_id"]))
        for sid, q, d in index.itertuples(index=False)
    }


def test_layout_files_and_columns(dev):
    out, labels_path, _ = dev
    assert list(read(out / "query_scenarios.csv").columns) == ["scenario_id", "queries_path", "database_path"]
    assert list(read(out / "scenario_types.csv").columns) == ["scenario_id", "scenario_type"]
    assert list(read(labels_path).columns) == ["query_id", "database_image_id"]
    meta = read(out / "metadata.csv")
    assert list(meta.columns) == ["image_id", "path", "height", "width", "viewpoint", "date"]
    for path in meta["path"]:
        assert path.startswith("images/")
        assert (out / path).is_file() and not (out / path).is_symlink()
    tables = scenario_tables(out)
    assert {t for t, _, _ in tables.values()} == set(SCENARIO_TYPES)
    used = set()
    for _, queries, database in tables.values():
        assert list(queries.columns) == ["query_id", "query_image_id"]
        used |= set(queries["query_image_id"]) | set(database)
    assert used == set(meta["image_id"])
    all_queries = pd.concat([q for _, q, _ in tables.values()])
    assert all_queries["query_id"].is_unique


def test_no_labels_leak_into_metadata(dev):
    meta = read(dev[0] / "metadata.csv")
    assert "whale_id" not in meta.columns and "encounter_id" not in meta.columns


def test_every_query_has_a_true_match_other_than_itself(dev, catalogue_dir):
    out, labels_path, _ = dev
    whale = dict(read(catalogue_dir / "metadata.csv")[["image_id", "whale_id"]].itertuples(index=False))
    labels = read(labels_path)
    for _, queries, database in scenario_tables(out).values():
        for qid, image in queries.itertuples(index=False):
            matches = set(labels.loc[labels["query_id"] == qid, "database_image_id"])
            expected = {d for d in database if d != image and whale[d] == whale[image]}
            assert matches and matches == expected


def test_leave_one_out_and_cross_year(dev, catalogue_dir):
    meta = read(catalogue_dir / "metadata.csv")
    year = dict(zip(meta["image_id"], meta["date"].str[:4].astype(int)))
    view = dict(zip(meta["image_id"], meta["viewpoint"]))
    for scenario_type, queries, database in scenario_tables(dev[0]).values():
        images = list(queries["query_image_id"])
        if scenario_type in LOO_TYPES:
            assert set(images) <= set(database)
        if scenario_type in CROSS_YEAR:
            assert min(year[q] for q in images) > max(year[d] for d in database)
        if scenario_type == "top_to_lateral":
            assert {view[q] for q in images} == {"top"} and {view[d] for d in database} <= {"left", "right"}
        if scenario_type == "lateral_to_top":
            assert {view[q] for q in images} <= {"left", "right"} and {view[d] for d in database} == {"top"}


def test_sizes_respect_limits(dev):
    summary = dev[2]
    assert (summary["n_queries"] <= SMALL["max_queries"]).all()
    assert (summary["n_database"] <= SMALL["max_database"]).all()
    assert (summary["mean_true_matches"] >= 1).all()


def test_same_seed_same_output(catalogue_dir, dev, tmp_path):
    make_dev_set(catalogue_dir, tmp_path / "dev", tmp_path / "labels.csv", seed=0, **SMALL)
    out, labels_path, _ = dev
    for rel in ["query_scenarios.csv", "scenario_types.csv", "metadata.csv", "queries/scenario01.csv",
                "databases/scenario05.csv"]:
        assert (tmp_path / "dev" / rel).read_bytes() == (out / rel).read_bytes()
    assert (tmp_path / "labels.csv").read_bytes() == labels_path.read_bytes()


def test_missing_catalogue_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(DataError, match="catalogue folder not found"):
        read_labelled_catalogue(tmp_path / "absent")
    code = main(["--catalogue", str(tmp_path / "absent"), "--out", str(tmp_path / "o"),
                 "--labels", str(tmp_path / "l.csv")])
    err = capsys.readouterr().err
    assert code == 2 and "absent" in err and "Traceback" not in err


def test_missing_columns_name_the_file(tmp_path, capsys):
    pd.DataFrame({"image_id": ["a"], "path": ["images/a.jpg"]}).to_csv(tmp_path / "metadata.csv", index=False)
    with pytest.raises(DataError, match=r"metadata\.csv: missing column\(s\) height"):
        read_labelled_catalogue(tmp_path)
    code = main(["--catalogue", str(tmp_path), "--out", str(tmp_path / "o"), "--labels", str(tmp_path / "l.csv")])
    assert code == 2 and "whale_id" in capsys.readouterr().err


def test_real_catalogue_default_sizes():
    root = real_catalogue()
    if not (root / "metadata.csv").is_file():
        pytest.skip(f"beluga catalogue not found at {root}")
    scenarios = build_scenarios(read_labelled_catalogue(root))
    images, pairs = dev_set_size(scenarios)
    assert {s.scenario_type for s in scenarios} == set(SCENARIO_TYPES)
    assert images <= 900 and pairs <= 30_000


def test_oracle_submission_scores_one(dev, tmp_path):
    from matcher.challenge.evaluate import score_submission

    out, labels_path, summary = dev
    labels = read(labels_path)
    labels.groupby("query_id").head(20).assign(score=1.0).to_csv(tmp_path / "sub.csv", index=False)
    table = score_submission(tmp_path / "sub.csv", labels_path, out)
    assert list(table["scenario"]) == [*summary["scenario"], "overall"]
    assert list(table["scenario_type"][:-1]) == list(summary["type"])
    assert (table["map20"] == 1.0).all() and (table["top1"] == 1.0).all()
    assert table["n_queries"].iloc[-1] == summary["n_queries"].sum()
