"""The engine's command-line options, shared by ``main.py`` and every ``whalematch`` command.

Each option takes its default from ``$WHALEMATCH_<NAME>`` where its help says so, and every value is
checked while the command line is parsed, before any work starts: a bad option is argparse's error
(exit code 2, the choices listed), a bad variable a :class:`~matcher.errors.ConfigError` naming it
(the entrypoints exit with code 2). :func:`check_environment` does the same for the settings that
only the environment sets.
"""

from __future__ import annotations

from pathlib import Path

from . import backends, presets
from .cascade.scoring import PAIR_SCORES
from .config import arg_type, default_cache_dir, env, env_value, workers
from .features import runtimes
from .io import device

FLAGS = ("0", "1")


def choice(choices):
    """A parser that accepts one of ``choices`` (ValueError listing them otherwise)."""
    def parse(text: str) -> str:
        if text not in choices:
            raise ValueError(f"choose one of {', '.join(sorted(choices))}")
        return text
    return parse


def existing_folder(text: str) -> Path:
    path = Path(text)
    if not path.is_dir():
        raise ValueError("not an existing folder")
    return path


def flag(text: str) -> str:
    if text.strip() not in FLAGS:
        raise ValueError("expected 0 or 1")
    return text.strip()


# Settings only the environment sets: name -> what reads its value (ValueError for a bad one).
ENV_ONLY = {"GPU_MEMORY_GB": device.parse_gpu_memory, "WEIGHTS_DIR": existing_folder,
            "BUNDLED_WEIGHTS_ONLY": flag}


def check_environment() -> None:
    """:class:`ConfigError` naming the first of :data:`ENV_ONLY` that holds a value it cannot use."""
    for name, parse in ENV_ONLY.items():
        env_value(name, parse, None)


def add_engine_options(parser, default_preset: str = presets.DEFAULT_PIPELINE, audit_note: bool = False) -> None:
    """The engine's options on ``parser`` (a parser or an argument group): preset, caches, device, workers, pair
    score and model, backend, progress and logging; :class:`ConfigError` naming a variable with a bad value.
    ``audit_note``: the options of whalematch, which scores pairs (no ranker: it ranks no query's candidates)."""
    check_environment()
    scores = [s for s in PAIR_SCORES if s != "ranker"] if audit_note else list(PAIR_SCORES)
    p = parser
    p.add_argument("--preset", default=env_value("PRESET", choice(presets.PIPELINES), default_preset),
                   choices=sorted(presets.PIPELINES), help="pipeline preset ($WHALEMATCH_PRESET)")
    p.add_argument("--cache-dir", type=Path, default=default_cache_dir(),
                   help="features and verdicts kept between runs ($WHALEMATCH_CACHE_DIR, else "
                        "$XDG_CACHE_HOME/whalematch, else ~/.cache/whalematch)")
    p.add_argument("--no-cache", action="store_true", help="keep nothing on disk between runs")
    p.add_argument("--device", type=arg_type(device.parse_name), default=env_value("DEVICE", device.parse_name, "auto"),
                   help="auto (a CUDA GPU when there is one, else the CPU), cpu, cuda or cuda:N ($WHALEMATCH_DEVICE; "
                        "$WHALEMATCH_GPU_MEMORY_GB caps the GPU memory used, default 12)")
    p.add_argument("--runtime", type=arg_type(runtimes.parse), default=env_value("RUNTIME", runtimes.parse, "auto"),
                   help="where the feature network runs: auto (ONNX Runtime for DISK on the CPU when installed, "
                        "else PyTorch), torch, onnxruntime, openvino, or openvino-bf16 (3x PyTorch's rate on a CPU "
                        "with bf16, but other features: fails the agreement checks) ($WHALEMATCH_RUNTIME)")
    p.add_argument("--workers", type=arg_type(workers), default=env_value("WORKERS", workers, None),
                   help="CPU verification workers, or auto: the cores available, at most 8 ($WHALEMATCH_WORKERS)")
    p.add_argument("--pair-score", type=arg_type(choice(scores)),
                   default=env_value("PAIR_SCORE", choice(scores), "auto"), choices=scores,
                   help="the pair score: strength (inliers and their similarity), learned (the pair model's P(same "
                        "whale) from the verdict's evidence and the photos' dates and viewpoints), "
                        + ("ranker (the ranking of a query's verified candidates against each other, main.py only), "
                           if not audit_note else "")
                        + "or auto: "
                        + ("the learned pair model where the preset has one, except in audit, which judges labels "
                           "by the image evidence alone" if audit_note else
                           "the ranker for the scenario kinds where it won out of fold, the strength elsewhere")
                        + " ($WHALEMATCH_PAIR_SCORE)")
    p.add_argument("--pair-model", type=Path, default=env("PAIR_MODEL"),
                   help="the pair model's file (an error if it is missing or refused); default: "
                        "pair-model-<preset>.json in $WHALEMATCH_WEIGHTS_DIR or weights/ ($WHALEMATCH_PAIR_MODEL)")
    backends.add_options(p)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("-v", "--verbose", action="store_true", help="debug messages")
