"""Build the code-execution submission zip: main.py, matcher/, the weights a preset needs and their licences.

    python -m matcher.challenge.pack --preset disk-mnn --out submission/submission.zip

The zip holds the project's LICENSE, ``weights/README.md`` (what each weight file is, where it
comes from, its licence) and, when pretrained weights are packed, the licence texts they need
(``weights/licenses/``).
"""

from __future__ import annotations

import argparse
import sys
import zipfile
from pathlib import Path

from .. import presets
from ..errors import WhaleMatchError
from ..io import weights

ROOT = Path(__file__).resolve().parents[2]


def pair_model_head(preset: str) -> Path | None:
    """The global head file the preset's shipped pair model reads, if it reads one."""
    from ..pairs.model import PairModel, model_file

    path = weights.WEIGHTS_DIR / model_file(preset)
    if not path.is_file():
        return None
    model = PairModel.load(path)
    if not model.uses_head:
        return None
    head = weights.WEIGHTS_DIR / Path(model.info["head"]["file"]).name
    if not head.is_file():
        raise WhaleMatchError(f"{path}: reads the global head {head.name}, which is not in {weights.WEIGHTS_DIR} "
                              "(make train-global)")
    return head


def pack(preset: str, out: Path) -> list[str]:
    conf = presets.resolve(preset)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".zip.tmp")
    names = []
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.write(ROOT / "main.py", "main.py")
        for path in sorted((ROOT / "matcher").rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
                zf.write(path, path.relative_to(ROOT).as_posix())
        zf.write(ROOT / "LICENSE", "LICENSE")
        zf.write(weights.SUMS_FILE, "weights/SHA256SUMS")
        zf.write(weights.WEIGHTS_DIR / "README.md", "weights/README.md")
        for extra in sorted(weights.WEIGHTS_DIR.glob("*.json")):  # small fitted artifacts (calibration, codebooks)
            zf.write(extra, f"weights/{extra.name}")
        for name in weights.files_for(conf):
            zf.write(weights.find(name), f"weights/{name}")
            names.append(name)
        head = pair_model_head(preset)
        if head is not None:  # the global head the preset's pair model reads (a file the project fits itself)
            zf.write(head, f"weights/{head.name}")
            names.append(head.name)
        if names:  # the pretrained files' licence texts travel with them
            for text in sorted((weights.WEIGHTS_DIR / "licenses").glob("*.txt")):
                zf.write(text, f"weights/licenses/{text.name}")
        zf.writestr("PRESET", preset + "\n")
    tmp.replace(out)
    return names


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default=presets.DEFAULT_PIPELINE, choices=sorted(presets.PIPELINES))
    p.add_argument("--out", type=Path, default=ROOT / "submission" / "submission.zip")
    args = p.parse_args(argv)
    try:
        names = pack(args.preset, args.out)
    except WhaleMatchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    size = args.out.stat().st_size / 1e6
    print(f"wrote {args.out} ({size:.1f} MB) for preset {args.preset}; weights: {', '.join(names) or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
