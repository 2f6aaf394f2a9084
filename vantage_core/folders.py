"""Output folders written so that nothing is lost.

A folder's new content is written in full to a temporary sibling (``.<name>.tmp-<pid>``); then
the folder it replaces is renamed aside, the new one renamed into place, and the old one
deleted. Each rename is atomic, so a failure or a kill at any moment leaves either the old
folder or the new one (or the old one under its aside name, between the two renames). Before
any work, :func:`check_output_folder` refuses an output that would replace what it reads, that
holds something other than what ``--overwrite`` may replace, or that cannot be written.
"""

from __future__ import annotations

import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from vantage_core.errors import VantageError


def temporary_sibling(path: Path) -> Path:
    """Where this process writes the next content of ``path`` before swapping it in."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # exists, owned by someone else
    return True


def remove_stale_temporaries(path: Path) -> list[Path]:
    """Delete ``.<name>.tmp-<pid>`` folders beside ``path`` whose process is gone (a write that
    was killed) or is this one; another live process's folder is its write in progress and
    stays. Returns the removed."""
    removed = []
    for tmp in path.parent.glob(f".{path.name}.tmp-*"):
        pid = tmp.name.rsplit("-", 1)[-1]
        if pid.isdigit() and (int(pid) == os.getpid() or not _pid_alive(int(pid))):
            shutil.rmtree(tmp, ignore_errors=True)
            removed.append(tmp)
    return removed


def fsync_tree(root: Path) -> None:
    """Flush every file and folder under ``root`` to the disk."""
    for dirpath, _, files in os.walk(root):
        for name in files:
            with open(os.path.join(dirpath, name), "rb") as f:
                os.fsync(f.fileno())
        fsync_dir(Path(dirpath))


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def swap_in(new: Path, path: Path, aside: Path | None = None) -> Path:
    """Rename the complete folder ``new`` to ``path``. A folder already at ``path`` is renamed to
    ``aside`` first (default: a hidden sibling) and deleted only once ``new`` is in place."""
    aside = aside or path.with_name(f".{path.name}.old-{os.getpid()}")
    if aside.exists() and path.exists():  # a leftover from an earlier interrupted swap
        shutil.rmtree(aside)
    # (an aside without ``path`` is the only complete copy: it stays until the new one is in place)
    if path.exists():
        os.replace(path, aside)
    os.replace(new, path)
    fsync_dir(path.parent)
    shutil.rmtree(aside, ignore_errors=True)
    return path


@contextmanager
def new_folder(path: str | os.PathLike, *, aside: Path | None = None, durable: bool = False) -> Iterator[Path]:
    """A fresh temporary sibling of ``path`` to fill; when the block ends without an error it is
    swapped in for ``path`` (see :func:`swap_in`), when it raises it is deleted and ``path`` is
    left as it was. ``durable``: fsync the new content before the swap. A folder that cannot be
    created or swapped in is a :class:`VantageError` naming ``path``."""
    target = output_path(path)
    with _naming(path):
        target.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(target)  # ours from an earlier failed try, or a killed process's
        tmp = temporary_sibling(target)
        tmp.mkdir()
    try:
        yield tmp
        if durable:
            fsync_tree(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    with _naming(path):
        swap_in(tmp, target, aside)


@contextmanager
def _naming(path: str | os.PathLike) -> Iterator[None]:
    """An operating-system error while creating or renaming ``path`` as one line that names it."""
    try:
        yield
    except OSError as exc:
        raise VantageError(f"{path}: cannot write this folder ({exc.strerror or exc}); choose a folder "
                           f"you can write") from None


def output_path(path: str | os.PathLike) -> Path:
    """``path`` made absolute (``.`` and ``..`` folded), so that it has a name and a parent; the
    root folder, which has neither, is refused."""
    absolute = Path(os.path.abspath(os.fspath(path)))
    if not absolute.name:
        raise VantageError(f"{path}: the root folder cannot be an output folder; choose a folder inside it")
    return absolute


def _resolved(path: str | os.PathLike) -> Path:
    return Path(os.path.abspath(os.path.realpath(os.fspath(path))))


def refuse_overlap(source: str | os.PathLike, out: str | os.PathLike, out_option: str = "--out") -> None:
    """Refuse an output folder that is, contains or lies inside ``source`` (what the command
    reads): replacing it would delete what is being read."""
    src, dst = _resolved(source), _resolved(out)
    if dst == src:
        relation = "is"
    elif dst in src.parents:
        relation = "contains"
    elif src in dst.parents:
        relation = "lies inside"
    else:
        return
    raise VantageError(f"{out_option} {out} {relation} the folder it reads, {source}; choose an output folder "
                       f"that neither is, contains nor lies inside {source}")


def check_output_folder(out: str | os.PathLike, *, overwrite: bool, replaceable: Callable[[Path], bool],
                        what: str, out_option: str = "--out") -> Path:
    """Check, before any work, that ``out`` can become a new ``what`` folder: its nearest
    existing parent is a folder this process may write; it is absent or empty, or (with
    ``overwrite``) a folder that ``replaceable`` accepts (an earlier ``what``), never anything
    else. Returns ``out`` as a path."""
    out = Path(out)
    if out.exists() or out.is_symlink():
        if not out.is_dir():
            raise VantageError(f"{out_option} {out}: a file, not a folder; give a folder for the {what}")
        if any(out.iterdir()):
            if not overwrite:
                raise VantageError(f"{out_option} {out} already exists; pass --overwrite to replace it")
            if not replaceable(out):
                raise VantageError(f"{out_option} {out} holds files that are not a {what}; --overwrite replaces "
                                   f"only an earlier {what}: choose a new or empty folder")
    _check_writable_parent(out, out_option)
    return out


def _check_writable_parent(out: Path, out_option: str) -> None:
    parent = _resolved(out).parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise VantageError(f"{out_option} {out}: {parent} is a file, not a folder; choose a folder you can write")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise VantageError(f"{out_option} {out}: {parent} is not writable by this user; choose a folder you can "
                           f"write")
