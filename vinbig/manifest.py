"""What vinbig wrote into an output folder, so that a clean-up removes only vinbig's own files.

An output folder that vinbig writes and later tidies (an export, a report, ``vinbig predict --out``, a synthetic
dataset) carries ``.vinbig-manifest.json``: the kind of output and the files vinbig wrote there, as relative paths.
A rerun removes a stale file only when the manifest lists it; a user's file beside vinbig's is never touched.

A folder is taken as output of a kind (:meth:`Manifest.claim`) when it is missing, empty, or holds a manifest of
that kind. Any other folder (another command's output, a work folder, a user's folder) is refused, or, where the
command offers ``--overwrite``, written into without deleting anything that is there.

The manifest is data that may come from elsewhere (an export is shared as a dataset): an entry that is absolute, goes
up with ``..`` or passes through a link is ignored, so a crafted manifest cannot make vinbig delete outside its
folder.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path, PurePosixPath
from typing import Iterable

from vinbig.errors import UserError

logger = logging.getLogger(__name__)

MANIFEST = ".vinbig-manifest.json"


class Manifest:
    """The files vinbig wrote into `folder` as output of `kind` (``export``, ``report``, ``predict``, ``synth``)."""

    def __init__(self, folder: str | os.PathLike, kind: str, files: Iterable[str] = ()) -> None:
        self.folder, self.kind = Path(folder), kind
        self.files: set[str] = set(files)

    @property
    def path(self) -> Path:
        return self.folder / MANIFEST

    @classmethod
    def read(cls, folder: str | os.PathLike) -> "Manifest | None":
        """The manifest of `folder`, or None when it has none or an unreadable one."""
        path = Path(folder) / MANIFEST
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if not isinstance(doc, dict) or not isinstance(doc.get("kind"), str) or not isinstance(doc.get("files"), list):
            return None
        return cls(folder, doc["kind"], (f for f in doc["files"] if isinstance(f, str) and _safe(f)))

    @classmethod
    def claim(cls, folder: str | os.PathLike, kind: str, what: str, overwrite: bool | None = None) -> "Manifest":
        """`folder` as vinbig's output of `kind`, made if missing.

        Refused with a UserError when it holds files and no manifest of `kind`: `what` names the output in the
        message (``--out of 'vinbig export'``). `overwrite` is None where the command has no ``--overwrite``; when
        True, such a folder is written into and nothing already in it is ever removed.
        """
        folder = Path(folder)
        if folder.exists() and not folder.is_dir():
            raise UserError(f"{what} {folder} is a file, not a folder; give a folder (it is made if missing)")
        found = cls.read(folder) if folder.is_dir() else None
        if found is not None and found.kind == kind:
            return found
        if found is not None:  # another command's output: never taken over, whatever --overwrite says
            raise UserError(f"{what} {folder}: it holds vinbig's {found.kind} output, which {kind} output never "
                            "writes into or cleans up; give an empty or new folder")
        if folder.is_dir() and any(folder.iterdir()) and not overwrite:
            fix = ("give an empty or new folder, or --overwrite to write into it (nothing already there is removed)"
                   if overwrite is not None else "give an empty or new folder")
            raise UserError(f"{what} {folder}: it holds files that vinbig did not write as {kind} output (no "
                            f"{MANIFEST} of kind '{kind}'); vinbig does not write into or clean up a folder it did not "
                            f"make; {fix}")
        folder.mkdir(parents=True, exist_ok=True)
        manifest = cls(folder, kind)
        manifest.save()
        return manifest

    def save(self) -> None:
        """Write the manifest atomically."""
        tmp = self.path.with_name(f"{MANIFEST}.{os.getpid()}.partial")
        doc = {"kind": self.kind, "files": sorted(self.files)}
        try:
            tmp.write_text(json.dumps(doc, indent=0) + "\n", encoding="utf-8")
            os.replace(tmp, self.path)
        finally:
            tmp.unlink(missing_ok=True)

    def add(self, paths: Iterable[str | os.PathLike]) -> None:
        """Record `paths` (inside the folder, absolute or relative to it) as written by vinbig, and save. Call it
        before writing them, so that an interrupted run still lists what it may have left."""
        before = len(self.files)
        self.files.update(self._rel(p) for p in paths)
        if len(self.files) != before:
            self.save()

    def own(self, paths: Iterable[str | os.PathLike], what: str, overwrite: bool | None = None) -> None:
        """:meth:`add` `paths` before writing them, after refusing (UserError, nothing recorded) when one of them
        exists and the manifest does not list it: a file vinbig did not write is never replaced, unless
        `overwrite` (None where the command has no ``--overwrite``). `what` names the folder in the message."""
        paths = [Path(p) if Path(p).is_absolute() else self.folder / p for p in paths]
        foreign = [p for p in paths if (p.exists() or p.is_symlink()) and not self.owns(p)]
        if foreign and not overwrite:
            names = ", ".join(self._rel(p) for p in foreign[:5])
            more = f" and {len(foreign) - 5} more" if len(foreign) > 5 else ""
            fix = ", or --overwrite to replace them" if overwrite is not None else ""
            raise UserError(f"{what} {self.folder} holds {names}{more}, which vinbig did not write but would write "
                            f"now; move them away or give another folder{fix}")
        self.add(paths)

    def owns(self, path: str | os.PathLike) -> bool:
        return self._rel(path) in self.files

    def remove_stale(self, keep: Iterable[str | os.PathLike], within: str | None = None) -> list[Path]:
        """Remove the files the manifest lists (under the sub-folder `within`, if given) that are not in `keep`;
        return those removed. Files it does not list are never touched."""
        keep = {self._rel(p) for p in keep}
        prefix = f"{within.strip('/')}/" if within else ""
        stale = [rel for rel in sorted(self.files) if rel not in keep and rel.startswith(prefix)]
        removed = []
        for rel in stale:
            path = self.folder / rel
            if _inside(self.folder, path) and (path.is_file() or path.is_symlink()):
                path.unlink()
                removed.append(path)
            self.files.discard(rel)
        if stale:
            self.save()
        return removed

    def _rel(self, path: str | os.PathLike) -> str:
        path = Path(path)
        if path.is_absolute():
            path = path.relative_to(self.folder) if path.is_relative_to(self.folder) else \
                path.resolve().relative_to(self.folder.resolve())
        rel = path.as_posix()
        if not _safe(rel):
            raise ValueError(f"{path} is not a path inside {self.folder}")
        return rel


def _safe(rel: str) -> bool:
    """A relative path that stays inside its folder (no root, no '..', no empty name)."""
    p = PurePosixPath(rel)
    return bool(rel) and not p.is_absolute() and "\\" not in rel and all(part not in ("", "..") for part in p.parts)


def _inside(folder: Path, path: Path) -> bool:
    """`path`'s folder, links resolved, lies inside `folder` (the file itself may be a link: it is removed, not
    followed)."""
    try:
        return path.parent.resolve(strict=True).is_relative_to(folder.resolve(strict=True))
    except OSError:
        return False
