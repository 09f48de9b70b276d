"""The ``whalematch`` command line: every command's options, their help (each with its default) and the
environment variables ($WHALEMATCH_<NAME>) that set the engine's defaults."""

from __future__ import annotations

import argparse
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .. import __version__
from ..config import env
from ..errors import WhaleMatchError
from ..options import add_engine_options
from . import apply_decisions, audit, batch, calibrate, decisions, index, search, verify
from .catalogue_search import PER_WHALE

DEFAULT_OUT = "whalematch-out"
DEFAULT_K = 200  # catalogue photos verified per new photo with an index (benchmarks/RESULTS.md, catalogue search)


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("expected a whole number of at least 1")
    return value


def probability(text: str) -> float:
    value = float(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError("expected a number strictly between 0 and 1")
    return value


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The descriptions as written, and every option's default in its help."""


# --------------------------------------------------------------------------- options


def common_options() -> argparse.ArgumentParser:
    """The engine's options (:func:`matcher.options.add_engine_options`, as main.py has them) and what every
    matching command adds: the calibration and the prior."""
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("engine")
    add_engine_options(g, audit_note=True)
    g.add_argument("--calibration", type=Path, default=env("CALIBRATION"),
                   help="calibration file; None: calibration-<preset>.json in $WHALEMATCH_WEIGHTS_DIR or weights/ "
                        "($WHALEMATCH_CALIBRATION)")
    g.add_argument("--prior", type=float, default=None,
                   help="share of same-whale pairs to assume for P(same whale); None: search: 1/K for the K whales "
                        "compared (the new photo shows one of them), audit and verify: the calibration's even odds "
                        "(the evidence of the pair alone); every command states which and why")
    return p


def out_options(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--out", type=Path, default=Path(DEFAULT_OUT), help=f"folder for {what}")
    p.add_argument("--outliers", choices=("faint", "hide"), default="faint",
                   help="draw matches that failed verification as faint dots, or not at all")


def verify_options(v: argparse.ArgumentParser) -> None:
    v.add_argument("images", nargs="*", help="two image files (or image ids with --metadata)")
    v.add_argument("--pairs", type=Path, help="CSV with columns image_a,image_b (paths, or ids with --metadata); "
                                              "an optional column mirror (1/0)")
    v.add_argument("--metadata", type=Path, help="metadata.csv (image_id,path[,viewpoint,...]) to name images by id "
                                                 "and read their viewpoints")
    v.add_argument("--mirror", action="store_true",
                   help="match A against the horizontally mirrored B (a left versus a right flank); automatic, "
                        "mirroring the right flank, when the metadata gives the viewpoints")
    v.add_argument("--picture", type=Path, help="where to write the match picture of a single pair; None: in OUT")
    v.add_argument("--pictures", type=int, default=100, help="batch: pictures for the best N pairs")
    v.add_argument("--output", type=Path, help="batch: results CSV; None: OUT/results.csv")
    v.add_argument("--json", action="store_true", help="single pair: print the result as JSON")
    out_options(v, "pictures, results and the review page")


def search_options(s: argparse.ArgumentParser) -> None:
    s.add_argument("image", nargs="?", help="the new photo (or give --batch)")
    s.add_argument("--batch", type=Path,
                   help="several new photos instead of one: a folder of images, a metadata CSV (image_id,path"
                        "[,viewpoint]) or a text file of image paths, one a line; each is ranked against the catalogue "
                        "and gets its own folder of results in OUT, with a summary in OUT/batch.csv")
    s.add_argument("--catalogue", type=Path, required=True,
                   help="a folder of images, a folder with metadata.csv, or a metadata CSV")
    s.add_argument("--viewpoint", choices=("top", "left", "right"),
                   help="view of the new photo (with --batch: of each new photo whose list gives none): compares "
                        "only comparable catalogue views and mirrors the new photo for opposite flanks; None: compare "
                        "every catalogue image")
    s.add_argument("--mirror", action="store_true", help="match the mirrored new photo against every catalogue image")
    s.add_argument("--all-views", action="store_true", help="with --viewpoint, still compare every catalogue image")
    s.add_argument("--subset", type=Path, help="CSV with an image_id column: search only these catalogue images")
    s.add_argument("--top", type=int, default=10,
                   help="pictures for the best N images (of each new photo with --batch)")
    s.add_argument("--k", type=positive_int, default=DEFAULT_K,
                   help="with an index (whalematch index): verify the K catalogue photos stage 0 finds most alike "
                        "for each new photo")
    s.add_argument("--per-whale", type=int, default=PER_WHALE,
                   help="with an index: at most this many photos of one whale in a shortlist (0: no limit)")
    s.add_argument("--exhaustive", action="store_true",
                   help="verify every comparable catalogue photo, index or not")
    s.add_argument("--group-by", choices=("encounter", "date", "none"), default="encounter",
                   help="--batch: identify the photos of one sighting together: those of one encounter_id (the "
                        "new photos' CSV), of one date, or none (each photo alone); encounters.csv and a page per "
                        "sighting")
    s.add_argument("--new-whale-prior", type=probability, default=None,
                   help="share of sightings that show a whale new to the catalogue, for P(new whale); None: the "
                        "share the model was fitted on (it says which)")
    out_options(s, "pictures, results and the review page")


def index_options(i: argparse.ArgumentParser) -> None:
    i.add_argument("catalogue", type=Path, help="a folder of images, a folder with metadata.csv, or a metadata CSV")
    i.add_argument("--dry-run", action="store_true", help="print what changed since the last update, do nothing")


def audit_options(a: argparse.ArgumentParser) -> None:
    a.add_argument("--metadata", type=Path, required=True, help="metadata.csv with image_id,path,whale_id"
                                                                "[,viewpoint,date,encounter_id]")
    a.add_argument("--subset", type=Path, help="CSV with an image_id column: audit only these images")
    a.add_argument("--scope", choices=audit.SCOPES, default="all",
                   help="cross-whale pairs to consider: all, or only photos of the same year or date")
    a.add_argument("--limit", type=int, default=None,
                   help="verify a seeded random sample of N cross-whale pairs; None: all of them")
    a.add_argument("--seed", type=int, default=0, help="seed of the --limit sample")
    a.add_argument("--no-cross", action="store_true", help="skip (b)")
    a.add_argument("--whales", help="comma-separated whale ids to audit; None: all")
    a.add_argument("--isolated-below", type=float, default=0.5,
                   help="(a) flag an image whose best same-whale P(same) (or score) is below this")
    a.add_argument("--strong-above", type=float, default=0.9,
                   help="(b) flag a cross-whale pair whose P(same) (or score) is at least this")
    a.add_argument("--pictures", type=int, default=50, help="evidence pictures for the first N of each list")
    a.add_argument("--dry-run", action="store_true",
                   help="print the counts (with --backend ray, also the cluster plan, from a short pilot whose "
                        "verdicts are kept) and stop")
    out_options(a, "pictures, results and the review page")


def calibrate_options(c: argparse.ArgumentParser) -> None:
    c.add_argument("--metadata", type=Path, required=True, help="metadata.csv with image_id,path,whale_id")
    c.add_argument("--subset", type=Path, help="CSV with an image_id column: use only these images")
    c.add_argument("--positives", type=int, default=600, help="same-whale pairs in all")
    c.add_argument("--negative-ratio", type=float, default=4.0,
                   help="different-whale pairs per same-whale pair (the rare strong chance matches of different "
                        "whales need many samples; the classes are weighed to even odds)")
    c.add_argument("--max-images", type=int, default=800, help="images in all")
    c.add_argument("--max-per-whale", type=int, default=8, help="same-whale pairs per whale")
    c.add_argument("--heldout", type=float, default=0.3, help="share of whales held out")
    c.add_argument("--seed", type=int, default=0, help="seed of the split by whale and of the pair sample")
    c.add_argument("--output", type=Path, help="calibration file; None: OUT/calibration-<preset>.json")
    c.add_argument("--out", type=Path, default=Path(DEFAULT_OUT), help="folder for the labelled pairs CSV")


def apply_decisions_options(a: argparse.ArgumentParser) -> None:
    a.add_argument("decisions", nargs="+", type=Path,
                   help="decisions CSV(s) exported from review pages: query_image, candidate_image, decision (same, "
                        "different or not sure); optional candidate_whale, comment, reviewer, time")
    a.add_argument("--metadata", type=Path, required=True,
                   help="the catalogue's metadata CSV (image_id,path,whale_id[,viewpoint,...]); never changed "
                        "without --in-place")
    a.add_argument("--output", type=Path,
                   help="the new metadata CSV; None: <metadata stem>.decided.csv beside METADATA. In another folder "
                        "the paths are rewritten relative to it (it must hold the photos)")
    a.add_argument("--in-place", action="store_true",
                   help="overwrite METADATA (the old file is kept as METADATA.bak, or .bak.2, .bak.3, ... when that "
                        "exists: a backup is never overwritten)")
    a.add_argument("--new-photos", type=Path, action="append", default=[], metavar="DIR",
                   help="a folder the reviewed new photos come from (repeatable); a new photo is taken only from "
                        "such a folder or the catalogue's own, and only if it decodes as an image")
    a.add_argument("--log", type=Path, help="CSV log of every change and of decisions that change nothing; None: "
                                            "<output stem>.changes.csv beside the output")
    a.add_argument("--photo-dir", type=Path, default=Path("new_photos"),
                   help="where a new photo from outside the output's folder is copied (relative to that folder), so "
                        "that the catalogue keeps its photos inside its folder")
    a.add_argument("--dry-run", action="store_true", help="print the changes, write nothing")
    a.add_argument("-v", "--verbose", action="store_true", help="debug messages")


def run_search(args, argv: list[str]) -> int:
    """``search``: one new photo (:func:`.search.run`), or several with ``--batch`` (:func:`.batch.run`)."""
    if (args.image is None) == (args.batch is None):
        raise WhaleMatchError("search needs one new photo, or --batch with several (not both)")
    return (batch.run if args.batch is not None else search.run)(args, argv)


@dataclass(frozen=True)
class Command:
    """One ``whalematch`` command: its options, its one-line summary and description, what runs it
    (``run(args, argv) -> exit status``, in the command's own module) and whether it takes the engine's options."""

    add_options: Callable[[argparse.ArgumentParser], None]
    summary: str
    description: str
    run: Callable[[argparse.Namespace, list[str]], int]
    engine: bool = True


COMMANDS = {
    "verify": Command(verify_options, "verify one pair (A B) or a CSV of pairs (--pairs)",
                      "Verdict of a pair of photos, with a picture of the inlier correspondences; or, with --pairs, a "
                      "CSV of verdicts and a review page.", verify.run),
    "index": Command(index_options, "build or update a catalogue's index (searches then verify a shortlist)",
                     "Keep an index of the catalogue in the cache folder: every photo's content hash, features "
                     "(mirrored for flanks) and stage-0 embedding. Incremental: new photos are added, removed ones "
                     "dropped, changed files redone, and each is listed; a stopped update resumes. search uses the "
                     "index when there is one: it verifies the --k photos stage 0 finds most alike instead of every "
                     "catalogue photo.", index.run),
    "search": Command(search_options, "rank catalogue images and whales for a new photo (or several: --batch)",
                      "Rank the images of a catalogue (and its whales, when the metadata has whale_id) for a new "
                      "photo, with match pictures of the best candidates; with --batch, for each of several new "
                      "photos (every pair verified in one go, on a cluster with --backend ray).", run_search),
    "audit": Command(audit_options, "find possible mislabels in a labelled catalogue",
                     "(a) images that verify against no other image of their whale; (b) pairs labelled as different "
                     "whales that verify strongly. Prints the pair counts first.", audit.run),
    "calibrate": Command(calibrate_options, "fit P(same whale) on a labelled catalogue",
                         "Fit the map from pair strength to P(same whale) on labelled pairs (isotonic), and report "
                         "its calibration error (ECE, Brier) on pairs of held-out whales.", calibrate.run),
    "apply-decisions": Command(apply_decisions_options, "apply the decisions of review pages to a catalogue",
                               decisions.__doc__.split("\n\n", 1)[1].replace("``", "") +
                               "\nExample: whalematch apply-decisions whalematch-decisions-*.csv --metadata "
                               "catalogue/metadata.csv", apply_decisions.run, engine=False),
}


def build_parser(description: str | None = None) -> argparse.ArgumentParser:
    """The ``whalematch`` parser (``description``: the command's own); :class:`ConfigError` naming a
    $WHALEMATCH_<NAME> that holds a bad value."""
    common = common_options()
    p = argparse.ArgumentParser(prog="whalematch", description=description, formatter_class=HelpFormatter)
    p.add_argument("--version", action="version", version=f"whalematch {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, cmd in COMMANDS.items():
        parser = sub.add_parser(name, parents=[common] if cmd.engine else [], help=cmd.summary,
                                description=textwrap.fill(cmd.description, 79) if cmd.engine else cmd.description,
                                formatter_class=HelpFormatter)
        cmd.add_options(parser)
        parser.set_defaults(run=cmd.run)
    return p
