"""``whalematch apply-decisions``: a plan of changes (:func:`.decisions.plan_changes`) applied to the catalogue:
the new metadata table, every output checked before anything is written, then the new photos copied, the log
written, the old metadata backed up and the new one put in place (the rules: :mod:`.decisions`)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pandas as pd

from ..errors import DataError, WhaleMatchError
from ..io.atomic import atomic_path
from ..io.paths import safe_join
from .decisions import (
    LOG_COLUMNS,
    Catalogue,
    Change,
    ChangePlan,
    plan_changes,
    problems_message,
    read_decisions,
)
from .photo_sources import inside, same_bytes


def apply(plan: ChangePlan, cat: Catalogue, output: Path, photo_dir: Path) -> pd.DataFrame:
    """The new metadata table: whale ids merged and assigned, a row per new photo (to be copied into ``photo_dir``
    by :func:`write` when outside the new file's folder: ``plan.copies``), paths relative to ``output``'s folder."""
    out_dir = Path(output).parent
    if inside(photo_dir, out_dir) is None:
        raise DataError(f"--photo-dir {photo_dir} is not inside the folder of {output}: the catalogue could not "
                        "read its photos")
    table = cat.table.copy()
    if len(table) and os.path.abspath(out_dir) != os.path.abspath(cat.folder):
        def moved(row) -> str:
            if row["image_id"] in cat.photos:
                target = cat.photos[row["image_id"]].path
            elif row["path"]:
                target = safe_join(cat.folder, row["path"], cat.path)
            else:
                return row["path"]
            rel = inside(target, out_dir)
            if rel is None:
                raise DataError(f"{output}: the catalogue's photo {target} is not inside that folder; write the new "
                                f"metadata into {cat.folder} or a folder above its photos")
            return rel
        table["path"] = table.apply(moved, axis=1)
    table["whale_id"] = table["whale_id"].map(lambda w: plan.merged.get(w, w))
    labelled = table["image_id"].isin(plan.labels.keys())
    table.loc[labelled, "whale_id"] = table.loc[labelled, "image_id"].map(plan.labels)
    taken = set(table["image_id"])
    rows = []
    for n in plan.new_photos:
        stem, k = n.file.stem, 2
        n.image_id = stem
        while n.image_id in taken:
            n.image_id, k = f"{stem}-{k}", k + 1
        taken.add(n.image_id)
        rel = inside(n.file, out_dir)
        detail = f"new photo {n.file}" + (", a new whale" if n.new_whale else "")
        if rel is None:
            target = Path(photo_dir) / f"{n.image_id}{n.file.suffix.lower()}"
            if target.exists() and not same_bytes(target, n.file):
                raise DataError(f"{target} exists and is another file; cannot copy the new photo {n.file} there")
            if not target.exists():
                plan.copies.append((n.file, target))
            rel = inside(target, out_dir)
            detail += f", copied to {target}"
        n.path = rel
        if n.image_id != stem:
            detail += f" (image id {stem} was taken)"
        detail += f"; viewpoint {n.viewpoint}" if n.viewpoint else "; viewpoint unknown (left blank)"
        row = {c: "" for c in table.columns}
        row.update(image_id=n.image_id, path=rel, whale_id=n.whale_id)
        if "viewpoint" in table.columns:
            row["viewpoint"] = n.viewpoint
        rows.append(row)
        plan.changes.append(Change("add", n.image_id, "", n.whale_id, "; ".join(n.where), detail))
    if rows:
        table = pd.concat([table, pd.DataFrame(rows, columns=table.columns)], ignore_index=True)
    return table


def backup_path(metadata: Path) -> Path:
    """Where ``--in-place`` keeps the file it replaces: ``METADATA.bak``, else the first free ``METADATA.bak.N``
    (N = 2, 3, ...): a backup is never overwritten."""
    first = Path(metadata).with_name(Path(metadata).name + ".bak")
    candidate, n = first, 2
    while os.path.lexists(candidate):
        candidate, n = first.with_name(f"{first.name}.{n}"), n + 1
    return candidate


def _same_file(a: Path, b: Path) -> bool:
    return os.path.normcase(os.path.realpath(a)) == os.path.normcase(os.path.realpath(b))


def _writable_folder(path: Path) -> str | None:
    """Why a file cannot be created at ``path`` (its nearest existing folder not writable), or ``None``."""
    folder = Path(os.path.abspath(path)).parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        return f"{folder} is not a folder"
    if not os.access(folder, os.W_OK | os.X_OK):
        return f"the folder {folder} is not writable"
    return None


def check_outputs(output: Path, log_path: Path, backup: Path | None, inputs: list[Path], plan: ChangePlan) -> None:
    """Refuse, before anything is written, outputs that cannot be written or would destroy another file: the log
    as the metadata, its backup or an input; a folder where a file goes; a folder that cannot be written."""
    problems = []
    protected = [("the new metadata", output)] + ([("its backup", backup)] if backup else []) + [
        ("an input", p) for p in inputs]
    for what, other in protected:
        if _same_file(log_path, other):
            problems.append(f"--log {log_path} is {what} ({other}): the log may not replace it")
    if backup is not None and Path(output).exists() and not Path(output).is_file():
        problems.append(f"{output} is not a file")
    targets = [("the new metadata", Path(output)), ("the log", Path(log_path))] + \
        [("a new photo's copy", target) for _, target in plan.copies]
    for what, path in targets:
        if path.is_dir():
            problems.append(f"{what} {path} is a folder")
            continue
        why = _writable_folder(path)
        if why:
            problems.append(f"{what} {path} cannot be written: {why}")
        elif path.exists() and not os.access(path, os.W_OK) and what != "a new photo's copy":
            problems.append(f"{what} {path} cannot be written: the file is read-only")
    if problems:
        raise DataError(problems_message("outputs that cannot be written", problems))


def write(table: pd.DataFrame, plan: ChangePlan, output: Path, log_path: Path, backup: Path | None = None) -> None:
    """The new photos copied (``plan.copies``), then the log of changes, then (``backup``: a copy of the file it
    replaces, made first) the new metadata, each file written atomically. Check the outputs first
    (:func:`check_outputs`): a failure here leaves the old metadata in place."""
    try:
        for src, target in plan.copies:
            target.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(target, suffix=target.suffix) as tmp:
                shutil.copy2(src, tmp)
        with atomic_path(Path(log_path), suffix=".csv") as tmp:
            pd.DataFrame([c.__dict__ for c in plan.changes + plan.notes], columns=LOG_COLUMNS).to_csv(tmp, index=False)
        if backup is not None and Path(output).exists():
            with atomic_path(backup, suffix=".bak") as tmp:
                shutil.copy2(output, tmp)
        with atomic_path(Path(output), suffix=".csv") as tmp:
            table.to_csv(tmp, index=False)
    except OSError as exc:
        raise DataError(f"cannot write {exc.filename or output} ({exc.strerror or exc})") from None


def run(args, argv: list[str]) -> int:
    """A review page's decisions into a new metadata file, with a log of every change."""
    if args.in_place and args.output is not None:
        raise WhaleMatchError("give --output or --in-place, not both")
    cat = Catalogue.read(args.metadata)
    output = args.metadata if args.in_place else \
        (args.output or args.metadata.with_name(f"{args.metadata.stem}.decided.csv"))
    if not args.in_place and output.resolve() == args.metadata.resolve():
        raise WhaleMatchError(f"{output} is the catalogue itself: give --in-place to overwrite it")
    log_path = args.log or output.with_name(f"{output.stem}.changes.csv")
    photo_dir = args.photo_dir if args.photo_dir.is_absolute() else output.parent / args.photo_dir
    found = read_decisions(args.decisions)
    bases = list(dict.fromkeys([Path.cwd(), *(d.parent.resolve() for d in args.decisions), cat.folder.resolve()]))
    plan = plan_changes(found, cat, bases, args.new_photos)
    table = apply(plan, cat, output, photo_dir)

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
    backup = backup_path(args.metadata) if args.in_place else None
    check_outputs(output, log_path, backup, [args.metadata, *args.decisions], plan)
    write(table, plan, output, log_path, backup)
    whales = len({w for w in table["whale_id"] if w})
    print(f"wrote {output} ({len(table)} photos of {whales} whales)" + (f", the old file kept as "
          f"{backup.name}" if backup else "") + f"; log of changes: {log_path}")
    print("nothing was matched or verified: verdicts are cached by the photos' contents, so a search or audit of "
          "the new catalogue reuses them")
    return 0
