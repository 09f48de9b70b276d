"""benchmarks/accuracy.py: the per-type table it prints (pure parts; the engine run is main.py's)."""

from __future__ import annotations

import pandas as pd
import pytest

from benchmarks import accuracy as benchmark


def test_score_by_type_means_over_queries_and_overall():
    sub = pd.DataFrame({"query_id": ["a", "a", "b", "c"], "database_image_id": ["x", "y", "z", "w"],
                        "score": [0.9, 0.8, 0.7, 0.6]})
    labels = pd.DataFrame({"query_id": ["a", "b", "c"], "database_image_id": ["y", "z", "q"]})
    queries = pd.DataFrame({"query_id": ["a", "b", "c"], "scenario": ["s1", "s1", "s2"],
                            "scenario_type": ["within", "within", "across"]})
    table = benchmark.score_by_type(sub, labels, queries).set_index("type")
    assert list(table.index) == ["within", "across", "overall"]
    assert table.loc["within", "map20"] == pytest.approx((0.5 + 1.0) / 2)  # a: hit at rank 2; b: rank 1
    assert table.loc["within", "top1"] == pytest.approx(0.5)
    assert table.loc["across", "map20"] == 0.0
    assert table.loc["overall", "map20"] == pytest.approx(1.5 / 3) and table.loc["overall", "queries"] == 3
    md = benchmark.markdown(table.reset_index())
    assert "| **overall** | 3 | 0.5000 | 0.3333 |" in md



def test_set_override_registers_a_variant_with_its_own_cache_keys():
    from matcher import presets

    base = presets.resolve("disk-mnn")
    name = presets.variant("disk-mnn", ["verifier.threshold=3", "extractor.max_keypoints=2048"])
    conf = presets.resolve(name)
    assert name == "disk-mnn[verifier.threshold=3,extractor.max_keypoints=2048]"
    assert conf["verifier"]["threshold"] == 3 and conf["extractor"]["max_keypoints"] == 2048
    assert conf["matcher"] == base["matcher"]  # untouched stages keep their names and entries
    assert presets.extractor_settings_key(conf["extractor"]) != presets.extractor_settings_key(base["extractor"])
    assert presets.verdict_settings_key(conf) != presets.verdict_settings_key(base)
    assert presets.resolve("disk-mnn") == base  # the preset itself is unchanged
    assert presets.variant("disk-mnn", []) == "disk-mnn"
    assert presets.parse_override("matcher.features=disk") == ("matcher", "features", "disk")


@pytest.mark.parametrize("text, message", [
    ("verifier.treshold=3", "has no setting 'treshold'"),  # a typo must not silently change only the cache key
    ("threshold=3", "expected STAGE.KEY=VALUE"),
    ("ranker.k=3", "expected STAGE.KEY=VALUE"),
    ("extractor.extra_scales=[scale:0.5]", "is not JSON"),  # what a shell leaves of an unquoted JSON list
])
def test_set_override_rejects_what_it_cannot_apply(text, message):
    from matcher import presets

    with pytest.raises(ValueError, match=message):
        presets.variant("disk-mnn", [text])
    assert benchmark.main(["--set", text]) == 2
