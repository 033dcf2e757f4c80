"""Rows whose one input is a file (an image, an audio clip): the folder and table layouts, read and checked.

Three layouts are read into `LabelledRows` with the file paths as the one input column: a folder
with a subfolder per class; a folder holding `train/` and `val/` (or `validation/`, or `test/`)
folders of class subfolders (`split_folders`); and a table (CSV, TSV, JSONL, Parquet) with a path
column and a label column, paths relative to the table's folder or the task's `<section>.<kind>_root`.
`check_files` opens every file of a split before any weights load (the kind says how) and drops or
names the unusable ones. What differs between images and audio is a `FileKind`: the extensions, the
words used in messages and the task section whose keys the messages name.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunesmith.data.labelled import LabelledRows
from tunesmith.data.readers import not_found, read_table, require_text
from tunesmith.errors import DataError

log = logging.getLogger("tunesmith")

# In order of preference: with both val/ and test/, val/ validates and test/ stays untouched.
SPLIT_FOLDERS = {"train": ("train", "training"), "validation": ("val", "valid", "validation", "test")}


@dataclass(frozen=True)
class FileKind:
    """What one task's input files are, for finding them and for the messages about them."""

    noun: str
    """One file, as messages name it (`image`)."""
    plural: str
    """Several (`images`)."""
    extensions: tuple[str, ...]
    """Lower-case suffixes of the files read from folders (`.jpg`); other files are ignored with a note."""
    section: str
    """The task section whose `<column>` and `<root>` keys messages point at (`image_classification`)."""
    column: str
    """Its key naming the path column (`image_column`)."""
    root: str
    """Its key naming the folder relative paths start from (`image_root`)."""
    example: str
    """Class folders as an example (`cats/*.jpg, dogs/*.jpg`)."""

    @property
    def layouts(self) -> str:
        return (f"a folder with one subfolder of {self.plural} per class ({self.example}); a folder holding train/ and "
                f"val/ (or validation/ or test/), each with one subfolder per class; or a CSV/JSONL of {self.noun} paths "
                "and labels")


def split_folders(folder: Path) -> tuple[Path, Path] | None:
    """`(train, validation)` subfolders when `folder` holds both, else None; the validation folder is
    the first of val/, valid/, validation/, test/ present (the log says which, and what is left unused)."""
    found = []
    for names in SPLIT_FOLDERS.values():
        found.append([folder / n for n in names if (folder / n).is_dir()])
    if not all(found):
        return None
    (train, *_), (validation, *unused) = found
    log.info("%s: training on %s/, validating on %s/%s", folder, train.name, validation.name,
             f" ({', '.join(p.name + '/' for p in unused)} not used)" if unused else "")
    return train, validation


def read_file_rows(kind: FileKind, path: str | Path, column: str, label_column: str | None, root: str | None,
                   bad_rows: str, labelled: bool = True, label_key: str = "data.label_column") -> LabelledRows:
    """Reads a folder of `kind` files or a table of paths (labels are folder names or `label_column`,
    which messages call `label_key`).

    Raises:
        DataError: the path is missing, a folder has no class folders or files, a table lacks
            the path or label column, or (under `bad_rows: error`) has rows with empty cells.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(not_found(path, "data"))
    if path.is_dir():
        return _read_class_folders(kind, path, column) if labelled else _read_loose_files(kind, path, column)
    return _read_path_table(kind, path, column, label_column if labelled else None, root, bad_rows, label_key)


def _files(kind: FileKind, folder: Path) -> tuple[list[Path], list[Path]]:
    files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))
    return [p for p in files if p.suffix.lower() in kind.extensions], [p for p in files if p.suffix.lower() not in kind.extensions]


def _read_class_folders(kind: FileKind, folder: Path, key: str) -> LabelledRows:
    classes = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        example = kind.example.replace(", ", ", train/")
        raise DataError(f"{folder}: no class folders found; {_a(kind.noun)} folder needs one subfolder per class "
                        f"(e.g. train/{example}), or use a CSV with {kind.section}.{kind.column}")
    paths, labels, ignored, nested = [], [], [], {}
    for class_folder in classes:
        found, others = _files(kind, class_folder)
        paths += [str(p) for p in found]
        labels += [class_folder.name] * len(found)
        ignored += others
        inner = sorted({p.relative_to(class_folder).parts[0] for p in found if p.parent != class_folder})
        if inner:
            nested[class_folder.name] = inner
    _note_ignored(kind, folder, ignored)
    _check_nesting(kind, folder, [c.name for c in classes], nested)
    empty = [c.name for c in classes if c.name not in set(labels)]
    if empty:
        log.warning("%s: class folders with no %s are ignored: %s", folder, kind.plural, ", ".join(empty[:10]))
    if not paths:
        raise DataError(f"{folder}: the class folders hold no {kind.plural} ({', '.join(kind.extensions)})")
    return LabelledRows(str(folder), {key: paths}, labels, list(range(1, len(paths) + 1)))


def _a(noun: str) -> str:
    return ("an " if noun[0] in "aeiou" else "a ") + noun


def _check_nesting(kind: FileKind, folder: Path, classes: list[str], nested: dict[str, list[str]]) -> None:
    """Refuses class folders that are really split folders or one level too high; warns that files in
    subfolders of a class folder are labelled by the class folder (the tree is flattened).

    Raises:
        DataError: a class folder named like a split (train/, test/, ...) holds subfolders of files,
            or the only class folder holds subfolders of files.
    """
    splits = {n for names in SPLIT_FOLDERS.values() for n in names} | {"testing"}
    as_splits = [c for c in nested if c.lower() in splits]
    if as_splits:
        raise DataError(f"{folder}: {', '.join(c + '/' for c in as_splits)} look like split folders holding class "
                        f"folders, not classes; the layouts read are {kind.layouts}. Point data.train at {folder} only "
                        "when it holds train/ together with val/, validation/ or test/, or set data.train and "
                        "data.validation to the split folders")
    if len(classes) == 1 and nested:
        raise DataError(f"{folder}: the only class folder, {classes[0]}/, holds folders of {kind.plural} "
                        f"({', '.join(nested[classes[0]][:5])}); did you mean {folder / classes[0]}? The layouts "
                        f"read are {kind.layouts}")
    if nested:
        shown = "; ".join(f"{c}/ holds {', '.join(s + '/' for s in sub[:3])}" for c, sub in list(nested.items())[:5])
        log.warning("%s: class folders hold subfolders of %s (%s); their %s are labelled by the class "
                    "folder they lie in, the subfolder names are not labels", folder, kind.plural, shown, kind.plural)


def _read_loose_files(kind: FileKind, folder: Path, key: str) -> LabelledRows:
    found, others = _files(kind, folder)
    _note_ignored(kind, folder, others)
    if not found:
        raise DataError(f"{folder}: no {kind.plural} found ({', '.join(kind.extensions)})")
    return LabelledRows(str(folder), {key: [str(p) for p in found]}, [""] * len(found), list(range(1, len(found) + 1)))


def _note_ignored(kind: FileKind, folder: Path, ignored: list[Path]) -> None:
    if ignored:
        log.info("%s: ignored %d files without %s extension (e.g. %s)", folder, len(ignored), _a(kind.noun), ignored[0].name)


def _read_path_table(kind: FileKind, path: Path, column: str, label_column: str | None, root_key: str | None,
                     bad_rows: str, label_key: str) -> LabelledRows:
    frame = read_table(path)
    wanted = {column: f"{kind.section}.{kind.column}"} | ({label_column: label_key} if label_column else {})
    for name, key in wanted.items():
        if name not in frame.columns:
            found = ", ".join(repr(c) for c in frame.columns)
            raise DataError(f"{path}: column {name!r} not found; columns are {found} (set {key} to the right name)")
    require_text(frame, list(wanted), path)
    cells = frame[list(wanted)].apply(lambda col: col.str.strip())
    bad = cells.eq("").any(axis=1)
    root = _root(kind, path, root_key)
    keep = ~bad.to_numpy()
    rows = LabelledRows(
        source=str(path),
        inputs={column: [_under(root, p) for p in cells[column][keep]]},
        labels=cells[label_column][keep].tolist() if label_column else [""] * int(keep.sum()),
        lines=[int(n) for n, k in zip(frame.index, keep) if k],
        skipped=int(bad.sum()),
        columns={str(c): frame[c][keep].tolist() for c in frame.columns},
    )
    if rows.skipped:
        lines = ", ".join(str(n) for n, b in zip(frame.index, bad) if b)
        what = f"{rows.skipped} rows with an empty path or label (lines {lines[:60]})"
        if bad_rows == "error":
            raise DataError(f"{path}: {what}; fix them or set data.bad_rows: skip")
        log.warning("%s: skipping %s", path, what)
    if len(rows) == 0:
        raise DataError(f"{path}: no usable rows (all {len(frame)} rows have an empty path or label)")
    _check_some_exist(kind, path, rows.inputs[column], root, root_key)
    return rows


def resolve_paths(kind: FileKind, table: Path, cells: list[str], root_key: str | None) -> list[str]:
    """A table's path cells made absolute: relative ones start from `root_key`'s folder, else the table's.

    Raises:
        DataError: the root folder is missing, or not one of the paths exists (a wrong root).
    """
    root = _root(kind, table, root_key)
    paths = [_under(root, cell) for cell in cells]
    _check_some_exist(kind, table, paths, root, root_key)
    return paths


def _root(kind: FileKind, table: Path, root_key: str | None) -> Path:
    """The folder relative paths are resolved against: the section's root key, else the table's folder."""
    if root_key is None:
        return table.parent
    root = Path(root_key).expanduser()
    key = f"{kind.section}.{kind.root}"
    if not root.is_dir():
        raise DataError(not_found(root, f"{key} folder") + f"; set {key} to the folder the relative {kind.noun} "
                        f"paths in {table} start from, or leave it unset to use the table's folder")
    return root


def _check_some_exist(kind: FileKind, table: Path, paths: list[str], root: Path, root_key: str | None) -> None:
    """Stops early, naming the folder searched, when not one path exists (a wrong root, not bad rows)."""
    if any(os.path.exists(p) for p in paths):
        return
    key = f"{kind.section}.{kind.root}"
    how = key if root_key else f"the table's folder ({key} is unset)"
    raise DataError(f"{table}: none of the {len(paths)} {kind.noun} paths exists (e.g. {paths[0]}); relative paths are "
                    f"looked up in {os.path.abspath(root)}, {how}; set {key} to the folder they start from")


def _under(root: Path, cell: str) -> str:
    """The file's absolute path, so every message about it shows the folder it was looked up in."""
    p = Path(cell).expanduser()
    return os.path.abspath(p if p.is_absolute() else root / p)


def check_files(kind: FileKind, rows: LabelledRows, key: str, bad_rows: str, problem: Callable[[str], str | None],
                fix: str = "fix or remove them") -> tuple[LabelledRows, list[dict[str, Any]]]:
    """Opens every file of `rows` (`problem` says why one is unusable, or None); drops the bad ones
    (`skip`) or raises naming them (`error`).

    Returns:
        The usable rows and one `{"path", "problem"}` record per unusable file.

    Raises:
        DataError: under `bad_rows: error` when any file is unusable, or when none is usable.
    """
    paths = rows.inputs[key]
    with ThreadPoolExecutor(max_workers=min(16, (os.cpu_count() or 1) * 2)) as pool:
        problems = list(pool.map(problem, paths))
    bad = [{"path": p, "problem": why} for p, why in zip(paths, problems) if why]
    shown = "; ".join(f"{b['path']}: {b['problem']}" for b in bad[:10]) + (" ..." if len(bad) > 10 else "")
    if bad and bad_rows == "error":
        raise DataError(f"{rows.source}: {len(bad)} unusable {kind.plural} ({shown}); {fix}, "
                        f"or set data.bad_rows: skip to leave them out with a warning")
    if bad:
        log.warning("%s: skipping %d unusable %s: %s", rows.source, len(bad), kind.plural, shown)
    kept = rows.subset([i for i, why in enumerate(problems) if not why])
    kept.skipped = rows.skipped + len(bad)
    if len(kept) == 0:
        raise DataError(f"{rows.source}: none of the {len(rows)} {kind.plural} can be read ({shown})")
    return kept, bad
