"""``whalematch``: tools for curating a whale photo catalogue.

    whalematch verify A.jpg B.jpg                 verdict of one pair and its match picture
    whalematch verify --pairs pairs.csv           a CSV of verdicts (columns image_a,image_b) and a review page
    whalematch search NEW.jpg --catalogue DIR     catalogue images (and whales) ranked for a new photo
    whalematch audit --metadata metadata.csv      labels to check: isolated images, strong cross-whale pairs
    whalematch calibrate --metadata metadata.csv  refit P(same whale) on a labelled catalogue
    whalematch apply-decisions DECISIONS.csv --metadata metadata.csv
                                                  a review page's decisions into a new metadata file

The matching commands share the engine's caches (``--cache-dir``, else $WHALEMATCH_CACHE_DIR,
else ~/.cache/whalematch): features and pair verdicts are computed once per image and
pair for given settings. Each review page records decisions (Same / Different / Not sure)
in the browser and exports them as a CSV for apply-decisions. ``whalematch COMMAND --help``
lists each command's options.
"""

from __future__ import annotations

import json
import logging
import math
import shlex
import sys
import time
from pathlib import Path

from ..config import setup_logging
from ..engine import Engine
from ..errors import ConfigError, DataError, WhaleMatchError
from ..io.catalogue import Photo, load_catalogue, read_photos
from ..io.paths import os_error
from ..pairs import model as pair_model
from . import audit, batch, calibrate, cluster, decisions, priors, search, verify
from . import calibration as calib
from .curator import Curator, PairTask, mirror_side, pair_task
from .options import build_parser

log = logging.getLogger("whalematch")
# An audit judges labels that came with their photos' dates: its pairs are scored by their image evidence alone,
# since the learned pair model reads the dates too (a photo filed under a whale seen the day before would pass).
AUDIT_SCORE_WHY = ("the image evidence alone, by default: the learned pair model also reads the dates, and photos "
                   "of one encounter would vouch for each other's labels; --pair-score learned asks for it")


# --------------------------------------------------------------------------- shared


def make_curator(args, calibration_file: Path | None, auto_score: str = "learned") -> Curator:
    """The engine of the options, its pair score (the learned model's P(same whale), or the strength's score;
    ``--pair-score auto`` means ``auto_score``, the learned one where the preset has a model) and the
    calibration of that score (``calibration_file``, else the model's own, else the preset's)."""
    if args.prior is not None and not 0 < args.prior < 1:
        raise WhaleMatchError(f"--prior must lie strictly between 0 and 1 (got {args.prior})")
    engine = Engine(args.preset, None if args.no_cache else args.cache_dir, args.device, args.workers,
                    progress=not args.quiet, backend=args.backend, ray_address=args.ray_address, runtime=args.runtime)
    model, score = None, auto_score if args.pair_score == "auto" else args.pair_score
    if score != "strength":
        try:
            model = pair_model.for_preset(engine.name, engine.settings_key, args.pair_model)
        except pair_model.NoPairModel as exc:  # only a missing default falls back; a refused file is an error
            if args.pair_score == "learned":  # asked for by name: no model is an error
                raise
            log.info("no learned pair model (%s); scoring pairs by their strength", exc)
    if model is not None and calibration_file is None and "calibration" in model.info:
        cal = calib.Calibration.from_json(model.info["calibration"], f"{model.source} (its calibration)")
    else:
        cal, why = calib.for_preset(engine.conf, calibration_file)
        if cal is None:
            log.warning("%s; P(same whale) left blank, rankings use the raw score", why)
    if cal is not None and (cal.input == calib.MODEL) != (model is not None):
        raise WhaleMatchError(f"{cal.source}: calibrates the {cal.input}, but the pairs are scored by "
                              f"{'the pair model' if model is not None else 'their strength'} (--pair-score)")
    cur = Curator(engine, cal, args.prior, model)
    if args.prior is not None:
        cur.use_prior(priors.given(args.prior))
    return cur


def fmt(v, spec=".3f") -> str:
    """A number for printing; ``n/a`` when blank."""
    if v is None or (isinstance(v, float) and math.isnan(v)) or v == "":
        return "n/a"
    return format(v, spec)


# --------------------------------------------------------------------------- commands


def cmd_verify(args) -> int:
    """One pair: its verdict printed and its picture drawn (a batch with --pairs)."""
    if args.pairs is not None:
        if args.images:
            raise WhaleMatchError("give either two images or --pairs CSV, not both")
        return cmd_verify_batch(args)
    if len(args.images) != 2:
        raise WhaleMatchError("verify needs two images (A B), or --pairs CSV")
    meta = read_photos(args.metadata) if args.metadata else None
    a, b = (verify.resolve_photo(v, meta) for v in args.images)
    cur = make_curator(args, args.calibration)
    cur.use_prior(priors.for_pairs(args.prior, priors.ONE_PAIR_WHY))
    task = PairTask(a, b, mirror_side(a, b, args.mirror))
    row = cur.verify([task])[0]
    if row["error"]:
        raise WhaleMatchError(row["error"])
    picture = args.picture or args.out / cur.picture_name(task)
    cur.draw(task, row, picture, args.outliers)
    row["picture"] = str(picture)
    if args.json:
        print(json.dumps({**row, "settings": cur.engine.settings_key, "preset": args.preset}, indent=2))
        return 0
    print(f"A: {a.id}  ({a.path}{', ' + a.viewpoint if a.viewpoint else ''})")
    print(f"B: {b.id}  ({b.path}{', ' + b.viewpoint if b.viewpoint else ''})")
    if task.mirror:
        side = a if task.mirror == "a" else b
        why = "left versus right flank" if {a.viewpoint, b.viewpoint} == {"left", "right"} else "--mirror"
        print(f"mirrored: {side.id} was flipped horizontally before matching ({why}); the picture shows it unflipped")
    else:
        print("mirrored: no")
    print(f"matches: {row['n_matches']} tentative, {row['n_inliers']} inliers")
    print(f"strength {row['strength']:.2f}   score {row['score']:.3f}   P(same whale) {fmt(row['probability'], '.3f')}")
    print(f"verdict: {row['verdict']}" + (f"  ({row['note']})" if row["note"] else ""))
    for line in cur.describe():
        print(f"settings: {line}")
    print(f"picture: {picture}")
    return 0


def cmd_verify_batch(args) -> int:
    """A CSV of pairs: results CSV, pictures of the best and a review page."""
    meta = read_photos(args.metadata) if args.metadata else None
    tasks = verify.read_pairs(args.pairs, meta, args.mirror)
    cur = make_curator(args, args.calibration)
    cur.use_prior(priors.for_pairs(args.prior, priors.PAIRS_WHY))
    print(f"{len(tasks)} pairs from {args.pairs}; {len({p.id for t in tasks for p in (t.a, t.b)})} images",
          file=sys.stderr)
    batch = verify.verify_batch(cur, tasks, args.pictures, args.out / "images", args.outliers)
    csv_path = verify.write_results(batch, args.output or args.out / "results.csv")
    page = verify.write_page(cur, batch, args.pairs, args.pictures, args.out / "report.html")
    print(f"verified {len(batch.rows) - batch.errors} pairs"
          + (f", {batch.likely_same(cur)} with P(same whale) >= 0.5" if cur.calibration is not None else ""))
    print(cur.prior_line())
    print(f"results: {csv_path}\nreview page: {page} (decisions: Same / Different / Not sure, exported as a CSV "
          "for whalematch apply-decisions)")
    return 0


def cmd_search(args) -> int:
    """A new photo against a catalogue: images and whales ranked, tables and page (many photos with --batch)."""
    if (args.image is None) == (args.batch is None):
        raise WhaleMatchError("search needs one new photo, or --batch with several (not both)")
    catalogue = verify.apply_subset(load_catalogue(args.catalogue), args.subset)
    if args.batch is not None:
        return cmd_search_batch(args, catalogue)
    query = verify.resolve_photo(args.image, None)
    query = Photo(query.id, query.path, (args.viewpoint or "").lower())
    cur = make_curator(args, args.calibration)
    tasks = search.search_tasks(query, catalogue, args.mirror, args.all_views or not args.viewpoint)
    if not tasks:
        raise WhaleMatchError(f"no catalogue image to compare with (views: {args.viewpoint or 'any'})")
    cur.use_prior(priors.for_search(args.prior, [t.b for t in tasks]))
    print(f"searching {len(tasks)} catalogue images for {query.id}; "
          f"{cur.extraction_line([query] + [t.b for t in tasks])}", file=sys.stderr)
    sys.stderr.flush()
    result = search.search(cur, query, tasks, catalogue, args.top, args.out / "images", args.outliers)
    tables = search.write_tables(result, args.out)
    page = search.write_page(cur, result, search.summary_lines(cur, result, args.catalogue), args.top, args.out)
    print(cur.prior_line())
    print(f"best catalogue images for {query.id}:")
    for r in result.rows[: min(10, len(result.rows))]:
        if r.get("error"):
            break
        print(f"  {r['rank']:>3}. {r['image_b']:<24} {r['whale_id']:<12} inliers {r['n_inliers']:>4}  "
              f"score {r['score']:.3f}  P {fmt(r['probability'], '.2f')}  {r['verdict']}"
              + (f"  ({r['note']})" if r["note"] else ""))
    if result.whales:
        print("best whales:")
        for w in result.whales[:5]:
            print(f"  {w['rank']:>3}. {w['whale_id']:<12} via {w['best_image']:<24} score {w['score']:.3f}  "
                  f"P {fmt(w['probability'], '.2f')}  ({w['images_verified']}/{w['images']} images verify)")
    print(f"results: {', '.join(map(str, tables))}")
    print(f"review page: {page} (decisions: Same / Different / Not sure, exported as a CSV for "
          f"whalematch apply-decisions DECISIONS.csv --metadata CATALOGUE.csv --new-photos "
          f"{shlex.quote(str(query.path.parent.resolve()))})")
    return 0


def cmd_search_batch(args, catalogue: list[Photo]) -> int:
    """Several new photos against a catalogue: every pair verified in one go, each photo ranked on its own."""
    queries = batch.read_new_photos(args.batch, args.viewpoint)
    cur = make_curator(args, args.calibration)
    tasks = batch.batch_tasks(queries, catalogue, args.mirror, args.all_views)
    n_tasks = sum(len(t) for t in tasks.values())
    print(f"searching {len(queries)} new photos from {args.batch} against {len(catalogue)} catalogue images "
          f"({n_tasks} pairs); {cur.extraction_line(queries + catalogue)}", file=sys.stderr)
    if cluster.wanted(cur, [t for ts in tasks.values() for t in ts]):
        print("\n".join(cluster.plan_lines(cur, [t for ts in tasks.values() for t in ts], args.plan_nodes)))
    sys.stdout.flush()
    summary, path = batch.search_batch(cur, queries, tasks, catalogue, args)
    print(f"best catalogue image of each new photo ({cur.engine.verified()} pairs verified by this run; "
          f"{cur.engine.backend.label}):")
    for r in summary:
        print(f"  {r['new_photo']:<28} " + (f"error: {r['error']}" if r["error"] else
              f"{r['best_image']:<24} {r['best_whale']:<12} inliers {r['n_inliers']:>4}  score {r['score']:.3f}  "
              f"P {fmt(r['probability'], '.2f')}  {r['verdict']}"))
    print(f"summary: {path}; each new photo's results, pictures and review page in {args.out}/<photo>/")
    return 0


def cmd_audit(args) -> int:
    """A labelled catalogue: the pair counts, then isolated images and strong cross-whale pairs."""
    meta = read_photos(args.metadata)
    photos = verify.apply_subset(list(meta.values()), args.subset)
    if args.whales:
        keep = {w.strip() for w in args.whales.split(",") if w.strip()}
        photos = [p for p in photos if p.whale_id in keep]
    if not photos:
        raise DataError(f"{args.metadata}: no images to audit")
    plan = audit.plan_audit(photos, args.scope, None if args.no_cross else args.limit, args.seed)
    cross = [] if args.no_cross else plan.cross
    cur = make_curator(args, args.calibration, auto_score="strength")  # see AUDIT_SCORE_WHY
    cur.use_prior(priors.for_pairs(args.prior, priors.AUDIT_WHY))
    print(f"audit of {plan.photos} images of {plan.whales} whales ({args.metadata})")
    print(f"  {cur.extraction_line(photos)}")
    print("  pair score: " + (f"strength, {AUDIT_SCORE_WHY}" if cur.model is None else
                              "the learned pair model (--pair-score learned): it reads the photos' dates too, so a "
                              "mislabel within an encounter can hide"))
    print(f"  {cur.prior_line()}")
    print(f"  (a) {len(plan.within)} same-whale pairs; {plan.singletons} images have no other comparable image "
          "of their whale and cannot be checked")
    scope = {"all": "", "same-year": " taken in the same year", "same-date": " taken on the same date"}[args.scope]
    if args.no_cross:
        print(f"  (b) skipped (--no-cross); {plan.cross_total} cross-whale pairs{scope} exist")
    else:
        sampled = f", a sample of {len(cross)} (--limit, seed {args.seed})" if len(cross) < plan.cross_total else ""
        print(f"  (b) {plan.cross_total} cross-whale pairs of comparable views{scope}{sampled}")
    print(f"  {len(plan.within) + len(cross)} pairs to verify (the pair cache holds {cur.engine.stored_verdicts()} "
          "verdicts for these settings; those are not verified again)")
    if cluster.wanted(cur, plan.within + cross):
        tasks = [pair_task(a, b) for a, b in plan.within + cross]
        print("\n".join(f"  {line}" for line in cluster.plan_lines(cur, tasks, args.plan_nodes)))
    sys.stdout.flush()
    if args.dry_run:
        return 0
    t0 = time.perf_counter()
    found = audit.audit(cur, meta, plan.within, cross, args.isolated_below, args.strong_above, args.pictures,
                        args.out / "images", args.outliers)
    iso_csv, sus_csv = audit.write_tables(found, args.out)
    summary = audit.summary_lines(cur, plan, found, args.metadata, args.isolated_below, args.strong_above)
    page = audit.write_page(found, summary, args.out)
    print(f"verified in {time.perf_counter() - t0:.0f} s ({cur.engine.verified()} pairs verified by this run, "
          f"{cur.engine.stats.features_extracted} images' features extracted; {cur.engine.backend.label})")
    print(f"(a) {len(found.isolated)} images verify against no other image of their whale:")
    for d in found.isolated[:10]:
        print(f"  {d['rank']:>3}. {d['image_id']:<16} {d['whale_id']:<12} best {d['best_partner']:<16} "
              f"inliers {d['best_inliers']:>4}  P {fmt(d['best_probability'], '.2f')}  score {d['best_score']:.3f}")
    print(f"(b) {len(found.strong)} cross-whale pairs verify strongly:")
    for d in found.strong[:10]:
        print(f"  {d['rank']:>3}. {d['image_a']} ({d['whale_a']}) ~ {d['image_b']} ({d['whale_b']})  "
              f"inliers {d['n_inliers']}  P {fmt(d['probability'], '.2f')}  score {d['score']:.3f}  {d['kind']}")
    print(f"results: {iso_csv}, {sus_csv}\nreview page: {page} (both lists, most doubtful first, with decisions: "
          "Same on a cross-whale pair merges the two ids with whalematch apply-decisions)")
    return 0


def cmd_apply_decisions(args) -> int:
    """A review page's decisions into a new metadata file, with a log of every change."""
    if args.in_place and args.output is not None:
        raise WhaleMatchError("give --output or --in-place, not both")
    cat = decisions.Catalogue.read(args.metadata)
    output = args.metadata if args.in_place else \
        (args.output or args.metadata.with_name(f"{args.metadata.stem}.decided.csv"))
    if not args.in_place and output.resolve() == args.metadata.resolve():
        raise WhaleMatchError(f"{output} is the catalogue itself: give --in-place to overwrite it")
    log_path = args.log or output.with_name(f"{output.stem}.changes.csv")
    photo_dir = args.photo_dir if args.photo_dir.is_absolute() else output.parent / args.photo_dir
    found = decisions.read_decisions(args.decisions)
    bases = list(dict.fromkeys([Path.cwd(), *(d.parent.resolve() for d in args.decisions), cat.folder.resolve()]))
    plan = decisions.plan_changes(found, cat, bases, args.new_photos)
    table = decisions.apply(plan, cat, output, photo_dir)

    told = ", ".join(f"{n} {k}" for k, n in sorted(plan.counts.items()))
    print(f"{len(found)} decisions from {', '.join(map(str, args.decisions))} ({told or 'none'})")
    print(f"catalogue {args.metadata}: {len(cat.photos)} photos of {len(cat.whale_counts())} whales")
    print(f"{len(plan.changes)} changes: {len(set(plan.merged))} whale ids merged, {len(plan.labels)} photos labelled, "
          f"{len(plan.new_photos)} new photos added")
    for c in plan.changes:
        print(f"  {c.line()}")
    if plan.notes:
        print(f"{len(plan.notes)} decisions change nothing:")
        for c in plan.notes:
            print(f"  {c.line()}")
    if args.dry_run:
        print("dry run: nothing written")
        return 0
    backup = decisions.backup_path(args.metadata) if args.in_place else None
    decisions.check_outputs(output, log_path, backup, [args.metadata, *args.decisions], plan)
    decisions.write(table, plan, output, log_path, backup)
    whales = len({w for w in table["whale_id"] if w})
    print(f"wrote {output} ({len(table)} photos of {whales} whales)" + (f", the old file kept as "
          f"{backup.name}" if backup else "") + f"; log of changes: {log_path}")
    print("nothing was matched or verified: verdicts are cached by the photos' contents, so a search or audit of "
          "the new catalogue reuses them")
    return 0


def ci(h: dict, name: str) -> str:
    """The 90% bootstrap interval of a held-out measure, when there is one."""
    lo_hi = h.get(f"{name}_ci90")
    return f" (90% interval {lo_hi[0]:.3f}-{lo_hi[1]:.3f})" if lo_hi else ""


def cmd_calibrate(args, argv: list[str]) -> int:
    """Fit P(same whale) on a labelled catalogue and report its held-out error."""
    meta = read_photos(args.metadata)
    photos = verify.apply_subset([p for p in meta.values() if p.whale_id], args.subset)
    calibrate.check_inputs(photos, args.metadata, args.heldout)
    cur = make_curator(args, None)
    sets = calibrate.sample_calibration_pairs(photos, args.seed, args.heldout, args.positives, args.max_images,
                                              args.max_per_whale, args.negative_ratio)
    for name in calibrate.SETS:
        s = sets[name]
        print(f"{name:>8}: {len(s['positives'])} same-whale + {len(s['negatives'])} different-whale pairs "
              f"from {s['images']} images of {s['whales']} whales", file=sys.stderr)
    print(cur.extraction_line(calibrate.photos_used(sets)), file=sys.stderr)
    cal, results = calibrate.calibrate(cur, sets, args.seed, args.metadata, calibrate.portable_command(argv))
    output = args.output or args.out / f"calibration-{cal.preset}.json"
    pairs_csv = args.out / f"calibration-pairs-{cal.preset}.csv"
    calibrate.save(cal, results, output, pairs_csv)
    h = cal.heldout
    print(f"calibration of {cal.preset} (settings {cal.settings_key}): isotonic fit on {cal.fit['pairs']} pairs "
          f"({cal.fit['positives']} same whale, {cal.fit['negatives']} different) from {cal.fit['images']} images "
          f"of {cal.fit['whales']} whales")
    print(f"held-out ({h['pairs']} pairs: {h['positives']} same, {h['negatives']} different; {h['images']} images "
          f"of {h['whales']} other whales): ECE {h['ece']:.4f}{ci(h, 'ece')}  Brier {h['brier']:.4f}{ci(h, 'brier')}  "
          f"(raw score read as a probability: ECE {h['raw_score_ece']:.4f}, Brier {h['raw_score_brier']:.4f})")
    print("reliability on the held-out pairs, classes weighed to even odds "
          "(P bin, pairs, of which same whale, mean P, share same whale):")
    for r in calibrate.heldout_reliability(cal, results):
        print(f"  {r['bin']}  {r['pairs']:>5}  {r['same_whale_pairs']:>5}  {r['mean_p']:.3f}  {r['positive_rate']:.3f}")
    print(f"wrote {output} (and the labelled pairs in {pairs_csv})")
    return 0


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        parser = build_parser(__doc__)
    except ConfigError as exc:
        print(f"whalematch: error: {exc}", file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    try:
        if args.command == "verify":
            return cmd_verify(args)
        if args.command == "search":
            return cmd_search(args)
        if args.command == "audit":
            return cmd_audit(args)
        if args.command == "apply-decisions":
            return cmd_apply_decisions(args)
        return cmd_calibrate(args, argv)
    except WhaleMatchError as exc:
        log.error("%s", exc)
        return 2
    except OSError as exc:  # a file system refusal the checks did not foresee: named, never a traceback
        log.error("%s", os_error(exc))
        return 2
    except KeyboardInterrupt:
        log.error("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
