"""Named settings for every stage, in the manner of hloc's ``confs``.

A pipeline preset names an extractor, a matcher and a verifier preset. Each
stage's settings are plain dicts; their JSON form (see :func:`settings_key`)
is part of every cache key, so changing any value invalidates exactly the
entries it affects.
"""

from __future__ import annotations

import copy
import hashlib
import json

# Images are rescaled so their area is close to ``target_area`` pixels (never
# upscaled more than ``max_upscale``), then each side is rounded to a multiple of
# ``multiple``. The working size depends on the image alone, so a feature never
# depends on which other images share its batch.
#
# DISK also detects at 0.6 of the working size's side (``extra_scales``, 512 more keypoints):
# the photos are crops that frame the whale more or less tightly (half a body against a
# whole one is a 2x change of scale once both are resized to the working area), and DISK
# is not scale-invariant (the measurements behind each choice: benchmarks/RESULTS.md).
EXTRACTORS: dict[str, dict] = {
    "disk": {
        "model": "disk",
        "weights": "depth",
        "max_keypoints": 1024,
        "extra_scales": [{"scale": 0.6, "max_keypoints": 512}],
        "white_fill": {"threshold": 250, "margin": 0.02},  # keypoints on the organisers' white fill dropped
        "target_area": 640 * 224,
        "max_upscale": 2.0,
        "multiple": 16,
    },
    "aliked": {
        "model": "aliked",
        "weights": "aliked-n16",
        "max_keypoints": 1024,
        "detection_threshold": 0.0,
        "target_area": 640 * 224,
        "max_upscale": 2.0,
        "multiple": 32,
    },
    "sift": {
        "model": "sift",
        "rootsift": True,
        "max_keypoints": 2048,
        "target_area": 640 * 224,
        "max_upscale": 2.0,
        "multiple": 1,
    },
}

MATCHERS: dict[str, dict] = {
    "mnn": {"model": "mnn", "min_similarity": 0.0},
    "lightglue-disk": {"model": "lightglue", "features": "disk", "filter_threshold": 0.1},
    "lightglue-aliked": {"model": "lightglue", "features": "aliked", "filter_threshold": 0.1},
}

VERIFIERS: dict[str, dict] = {
    # Affine by default: a whale's back (from a drone) or flank (from a boat) is a
    # nearly flat patch seen from far away, so two photos of it differ by an
    # affine map (translation, rotation, scale, the shear of a tilted camera or a
    # bending body). A homography's two extra perspective terms buy nothing at
    # that distance and let RANSAC fit chance matches on these small crops.
    "affine": {
        "model": "affine",
        "threshold": 6.0,
        "max_iters": 2000,
        "confidence": 0.999,
        "min_matches": 6,
        "seed": 0,
        "score_scale": 20.0,
    },
    "homography": {
        "model": "homography",
        "threshold": 6.0,
        "max_iters": 2000,
        "confidence": 0.999,
        "min_matches": 8,
        "seed": 0,
        "score_scale": 20.0,
    },
}

PIPELINES: dict[str, dict] = {
    "disk-mnn": {"extractor": "disk", "matcher": "mnn", "verifier": "affine"},
    "disk-lightglue": {"extractor": "disk", "matcher": "lightglue-disk", "verifier": "affine"},
    "aliked-lightglue": {"extractor": "aliked", "matcher": "lightglue-aliked", "verifier": "affine"},
    "aliked-mnn": {"extractor": "aliked", "matcher": "mnn", "verifier": "affine"},
    "sift-mnn": {"extractor": "sift", "matcher": "mnn", "verifier": "affine"},
}

DEFAULT_PIPELINE = "disk-mnn"

# The pretrained network file of each model, from its ``weights`` (or ``features``) setting: the one place these
# file names are spelt (the extractors, LightGlue, the weights' digest in cache keys and the submission zip read it).
WEIGHT_FILES = {"disk": "disk-{weights}-save.pth", "aliked": "{weights}.pth", "lightglue": "{features}_lightglue.pth"}


def weights_file(stage_conf: dict) -> str | None:
    """The pretrained network file a stage's settings (an extractor's or a matcher's) load; None: none."""
    pattern = WEIGHT_FILES.get(stage_conf.get("model", ""))
    return pattern.format(**stage_conf) if pattern else None


# Detector-free matchers (see matcher/pairs/loftr.py). They find correspondences from both
# images at once, so they do not fit the extractor + matcher stages of a pipeline
# preset; they serve an expensive re-verification stage. The weights are supplied by
# the user (``weights/loftr_outdoor.ckpt`` or $WHALEMATCH_LOFTR_WEIGHTS), never downloaded.
DENSE_MATCHERS: dict[str, dict] = {
    "loftr": {
        "model": "loftr",
        "weights": "outdoor",
        "coarse_threshold": 0.2,  # kornia's default dual-softmax threshold
        "target_area": 640 * 224,
        "max_upscale": 2.0,
    },
}


# Stage 0 of the cascade: a global descriptor per image (matcher/cascade/global_descriptors.py).
# ``codebook`` is a file fitted by the project, found by matcher.io.weights.locate.
GLOBAL_DESCRIPTORS: dict[str, dict] = {
    "asmk-disk": {"model": "asmk", "codebook": "codebook-disk-k1024-v1.json", "alpha": 3.0, "tau": 0.0},
    # Plain mean pooling, for comparison (the benchmark's baseline): ASMK with one all-zero word.
    "mean-disk": {"model": "mean", "alpha": 1.0, "tau": -1.0},
    # A head trained on whale identities over DISK's keypoints (matcher/features/global_head.py; rebuilt by
    # `make train-global`, figures out of fold in weights/global-head-disk-v1.json and benchmarks/RESULTS.md).
    "learned-disk": {"model": "learned", "weights": "global-head-disk-v1.pt"},
    # the same head with test-time flip (each image's embedding averaged with its mirror's): more true matches
    # kept out of fold (0.503 against 0.474 in the top 20), at the price of a second DISK pass per image
    "learned-disk-flip": {"model": "learned", "weights": "global-head-disk-v1.pt", "flip": True},
    "none": {"model": "none"},
}
# The stage 0 of a catalogue's index (whalematch index, search's shortlist): 256 bytes a photo, so an index of
# 10^6 photos fits in memory, where ASMK keeps about 73 kB a photo of the development photos (benchmarks/RESULTS.md,
# catalogue search).
CATALOGUE_STAGE0 = "learned-disk"
GLOBAL_BY_EXTRACTOR = {"disk": "asmk-disk"}  # stage 0 used by default, per extractor; others: off unless asked
STAGE2_BY_PIPELINE: dict[str, str] = {}  # stage 2 used by default, per pipeline (none so far: benchmarks/RESULTS.md)


def default_global(conf: dict) -> str:
    """The stage-0 descriptor a resolved pipeline preset uses unless told otherwise (a variant's extractor,
    ``disk@<digest>``, uses its base's)."""
    return GLOBAL_BY_EXTRACTOR.get(conf["extractor"]["name"].split("@")[0], "none")


def default_stage2(conf: dict) -> str | None:
    """The expensive (stage-2) matcher a resolved pipeline preset uses unless told otherwise."""
    return STAGE2_BY_PIPELINE.get(conf["name"])


def _set_options(value):
    """``value`` with every dict entry that is ``None`` left out, at any depth."""
    if isinstance(value, dict):
        return {k: _set_options(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_set_options(v) for v in value]
    return value


def settings_key(name: str, conf: dict) -> str:
    """``name-<12 hex>``: a short, stable identifier of exactly these settings. An option set to ``None``
    (off) is left out, so adding an option that is off by default leaves every existing key as it was."""
    blob = json.dumps(_set_options(conf), sort_keys=True, separators=(",", ":"))
    return f"{name}-{hashlib.sha256(blob.encode()).hexdigest()[:12]}"


def resolve(pipeline: str) -> dict:
    """The full settings of a pipeline preset: ``{extractor, matcher, verifier}`` dicts with names."""
    if pipeline not in PIPELINES:
        raise KeyError(f"unknown preset {pipeline!r}; choose one of {', '.join(sorted(PIPELINES))}")
    names = PIPELINES[pipeline]
    return {
        "name": pipeline,
        "extractor": {"name": names["extractor"], **copy.deepcopy(EXTRACTORS[names["extractor"]])},
        "matcher": {"name": names["matcher"], **copy.deepcopy(MATCHERS[names["matcher"]])},
        "verifier": {"name": names["verifier"], **copy.deepcopy(VERIFIERS[names["verifier"]])},
    }


STAGES = ("extractor", "matcher", "verifier")
_STAGE_TABLES = {"extractor": EXTRACTORS, "matcher": MATCHERS, "verifier": VERIFIERS}


def parse_override(text: str) -> tuple[str, str, object]:
    """``"stage.key=value"`` -> ``(stage, key, value)``; the value is read as JSON (numbers, booleans,
    null, lists), and as a plain string when it is not JSON."""
    path, sep, raw = text.partition("=")
    stage, dot, key = path.strip().partition(".")
    if not sep or not dot or not key or stage not in STAGES:
        raise ValueError(f"setting override {text!r}: expected STAGE.KEY=VALUE with STAGE one of {', '.join(STAGES)}")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return stage, key.strip(), value


def variant(pipeline: str, overrides: list[str]) -> str:
    """Register, in this process only, ``pipeline`` with some settings changed; return the new preset's name.

    Each override is ``stage.key=value`` (see :func:`parse_override`) and must name a setting the
    stage already has: a misspelt key would otherwise change only the cache key. The changed
    stages are named ``<stage>@<digest of their settings>``, so their cache entries never
    mix with the preset's own; the cache folder's ``settings.json`` records what they are.
    Used by the accuracy benchmark to measure a lever without editing the presets.
    """
    conf = resolve(pipeline)
    if not overrides:
        return pipeline
    for text in overrides:
        stage, key, value = parse_override(text)
        if key not in conf[stage] or key == "name":
            known = ", ".join(sorted(k for k in conf[stage] if k != "name"))
            raise ValueError(f"setting override {text!r}: {stage} {conf[stage]['name']!r} has no setting {key!r} "
                             f"(it has {known})")
        if isinstance(value, str) and not isinstance(conf[stage][key], str):
            raise ValueError(f"setting override {text!r}: {value!r} is not JSON, and {stage} {key!r} holds "
                             f"{type(conf[stage][key]).__name__} {json.dumps(conf[stage][key])} (quote the whole "
                             f"override for the shell)")
        conf[stage][key] = value
    names = {}
    for stage in STAGES:
        base = PIPELINES[pipeline][stage]
        settings = {k: v for k, v in conf[stage].items() if k != "name"}
        if settings == _STAGE_TABLES[stage][base]:
            names[stage] = base
            continue
        digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:8]
        names[stage] = f"{base}@{digest}"
        _STAGE_TABLES[stage][names[stage]] = settings
    name = f"{pipeline}[{','.join(overrides)}]"
    PIPELINES[name] = names
    return name


def extractor_settings_key(conf: dict) -> str:
    """The settings key of an extractor's settings (a digest of them alone; the cache key of its features,
    :func:`matcher.cache.feature_key`, adds the software, the weights and the runtime)."""
    return settings_key(conf["name"], conf)


def verdict_settings_key(conf: dict) -> str:
    """The settings key of a pair verdict: the settings that produced the features, the matches and the model
    (what a calibration or a pair model is fitted for; :func:`matcher.cache.verdict_key` adds the software)."""
    parts = {"extractor": conf["extractor"], "matcher": conf["matcher"], "verifier": conf["verifier"]}
    return settings_key(f"{conf['extractor']['name']}+{conf['matcher']['name']}+{conf['verifier']['name']}", parts)
