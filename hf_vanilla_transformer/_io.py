"""Writes that land whole or not at all: stage beside the target, then rename it into place.

A rename within one file system is atomic, so a run killed at any moment leaves the previous state or the new
one, never a half-written folder that a later run would take for complete. The staging folder and file are made
with `os.mkdir` and `os.open(..., 0o666)`, not `tempfile` (whose 0700/0600 modes would be carried into the final
paths): what is saved gets the user's umask, like everything transformers writes.
"""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def check_free(folder: str | os.PathLike, hint: str = "choose a new output folder") -> None:
    """Raise `FileExistsError` unless `folder` is absent or an empty folder."""
    folder = Path(folder)
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise FileExistsError(f"{folder} exists and is not empty; {hint}.")


def _new_name(parent: Path, prefix: str, suffix: str, make) -> Path:
    for _ in range(100):
        path = parent / f"{prefix}{secrets.token_hex(4)}{suffix}"
        try:
            make(path)
            return path
        except FileExistsError:
            continue
    raise FileExistsError(f"Could not create a staging name in {parent}.")


def publish_folder(
    staging: str | os.PathLike, target: str | os.PathLike, *, merge: bool = False, replace: bool = False
) -> Path:
    """Move the finished `staging` folder to `target` (same file system).

    By default `target` must be absent or empty and becomes `staging` in one rename. `replace=True` puts an
    existing `target` aside first and deletes it after. `merge=True` moves each entry of `staging` into the folder
    `target` instead (each file in one rename, replacing one of the same name; other files stay) and removes the
    emptied `staging`.
    """
    staging, target = Path(staging), Path(target)
    if merge:
        target.mkdir(parents=True, exist_ok=True)
        for entry in sorted(staging.iterdir()):
            _replace(entry, target / entry.name)
        staging.rmdir()
    elif replace and (target.exists() or target.is_symlink()):
        _replace(staging, target)
    else:
        check_free(target)  # again: something may have appeared there while the staging folder was written
        if target.exists():
            target.rmdir()
        os.replace(staging, target)
    return target


def _replace(source: Path, destination: Path) -> None:
    if destination.is_dir() and not destination.is_symlink():
        # A folder cannot be renamed onto a non-empty one: put the old one aside, then delete it.
        old = _new_name(destination.parent, f".{destination.name}.", ".old", lambda path: os.replace(destination, path))
        os.replace(source, destination)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(source, destination)


@contextmanager
def staged_folder(target: str | os.PathLike, *, merge: bool = False, replace: bool = False) -> Iterator[Path]:
    """Yield an empty staging folder to write into; on success it is published at `target` (see `publish_folder`
    for `merge` and `replace`), on failure removed, so `target` never holds a partial write.

    Without `merge` or `replace`, `target` must be absent or empty (`FileExistsError`, also when it fills up
    meanwhile). The staging folder is a hidden sibling of `target`, or with `merge` a `_`-named folder inside it
    (a name the Trainer's Hub uploads skip).
    """
    target = Path(target)
    if not (merge or replace):
        check_free(target)
    if merge:
        target.mkdir(parents=True, exist_ok=True)
        staging = _new_name(target, "_staging.", "", os.mkdir)
    else:
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = _new_name(target.parent, f".{target.name}.", ".staging", os.mkdir)
    try:
        yield staging
        publish_folder(staging, target, merge=merge, replace=replace)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def write_file(path: str | os.PathLike, text: str) -> Path:
    """Write `text` (UTF-8) to `path` through a temporary file beside it and one rename, flushed to disk first."""
    path = Path(path)

    def create(temporary: Path) -> None:
        os.close(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))

    # A "_" name is one the Trainer's Hub uploads skip, should a run be killed before the rename.
    temporary = _new_name(path.parent, f"_{path.name}.", ".tmp", create)
    try:
        with open(temporary, "w", encoding="utf-8") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return path


__all__ = ["check_free", "publish_folder", "staged_folder", "write_file"]
