"""The one place that guards output folders: never delete or overwrite what we did not write.

Every command that writes an output folder goes through here. A folder is *ours*
only when it carries our manifest (:func:`write_mark`) and holds nothing it does
not list (:func:`check_replaceable`). :func:`claim` makes the checks before any
work, :func:`output_lock` keeps a second run off the same output, and
:func:`staged_folder` builds the new result beside the old one and swaps it in
at the end, so an interrupt leaves the old result whole and no mix of both.
The rules, as a table: docs/reliability.md ("Output folders").
"""
from __future__ import annotations

import contextlib
import fcntl
import fnmatch
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional

from safnet_ros import __version__
from safnet_ros.errors import ConfigError
from safnet_ros.validation import check_output_dir

#: The manifest a safnet command leaves in each output folder it writes.
MARK_NAME = ".safnet-output.json"
#: Marker of the staging and lock names beside an output (hidden, never read as results).
STAGING_TAG = ".safnet-"


def _listing(folder: Path) -> list[str]:
    """Every file and folder under ``folder`` as sorted POSIX relative paths (the mark excluded)."""
    out: list[str] = []
    for dirpath, dirnames, filenames in os.walk(folder):
        rel = Path(dirpath).relative_to(folder)
        for n in dirnames + filenames:
            p = (rel / n).as_posix()
            if p != MARK_NAME:
                out.append(p)
    return sorted(out)


def write_mark(folder: str | os.PathLike, command: str, settings: Optional[dict[str, Any]] = None,
               files: Optional[Iterable[str]] = None) -> Path:
    """Write ``folder/.safnet-output.json``: command, version, settings and the files written
    (default: everything now under ``folder``). Call it when the content is complete."""
    folder = Path(folder)
    listed = sorted(set(files)) if files is not None else _listing(folder)
    mark = {"written_by": "safnet_ros", "command": command, "version": str(__version__),
            "settings": json.loads(json.dumps(settings or {}, default=str)), "files": listed,
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    tmp = folder / f"{MARK_NAME}.tmp"
    tmp.write_text(json.dumps(mark, indent=1))
    os.replace(tmp, folder / MARK_NAME)
    return folder / MARK_NAME


def read_mark(folder: str | os.PathLike) -> Optional[dict[str, Any]]:
    """The mark of ``folder`` (a real folder, not a link), or None when it has none or it is unreadable."""
    folder = Path(folder)
    if folder.is_symlink() or not folder.is_dir():
        return None
    p = folder / MARK_NAME
    if p.is_symlink() or not p.is_file():
        return None
    try:
        mark = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(mark, dict) or mark.get("written_by") != "safnet_ros" or not isinstance(mark.get("files"), list):
        return None
    return mark


def foreign_entries(folder: str | os.PathLike, mark: dict[str, Any]) -> list[str]:
    """Entries of ``folder`` that its mark does not list (a user's files), sorted."""
    listed = set(mark.get("files", ()))
    return [p for p in _listing(Path(folder)) if p not in listed and not p.endswith(f"{MARK_NAME}.tmp")]


#: What each command wrote before outputs were marked: (file name patterns, text metadata.yaml must hold).
_UNMARKED_LAYOUTS: dict[str, tuple[tuple[str, ...], Optional[str]]] = {
    "bag convert": (("metadata.yaml", "*.mcap", "*.db3"), "safnet.source_scene"),
    "segment-bag": (("metadata.yaml", "*.mcap", "*.db3"), "/safnet/labeled_cloud"),
    "eval": (("eval.json", "per_class.csv", "views_sweep.png", "confusion_*.png"), None),
    "bench soak": (("soak.json", "soak_rss.png"), None),
}


def written_before_marks(folder: Path, command: str) -> bool:
    """True when ``folder`` (no mark) holds exactly what ``command`` wrote before outputs were marked:
    only its file names (no sub-folders), and for bags a metadata.yaml naming our topics or data."""
    if command in _UNMARKED_DATASETS:
        return _dataset_before_marks(folder, command)
    layout = _UNMARKED_LAYOUTS.get(command)
    if layout is None:
        return False
    patterns, needle = layout
    entries = list(folder.iterdir())
    if not entries or any(e.is_symlink() or not e.is_file() for e in entries):
        return False
    if not all(any(fnmatch.fnmatch(e.name, pat) for pat in patterns) for e in entries):
        return False
    if needle is not None:
        meta = folder / "metadata.yaml"
        try:
            return meta.is_file() and needle in meta.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return False
    return True


#: Dataset folders written before marks: (the file that proves it, other top-level file patterns).
_UNMARKED_DATASETS: dict[str, tuple[str, tuple[str, ...]]] = {
    "data preprocess": ("preprocess_summary.json", ("scannetv2_*.txt", "scannetv2-labels.combined.tsv",
                                                    "class_weights.json")),
    "data synth": ("scannetv2-labels.combined.tsv", ("scannetv2_*.txt",)),
}


def _dataset_before_marks(folder: Path, command: str) -> bool:
    """An unmarked dataset folder of ``command``: its proof file, its own top-level files, and
    sub-folders that are its scenes (a preprocessed scene's meta.json, or a synth scene's .synth.json)."""
    proof, patterns = _UNMARKED_DATASETS[command]
    if not (folder / proof).is_file():
        return False
    for e in folder.iterdir():
        if e.is_symlink():
            return False
        if e.is_dir():
            hidden = e.name.startswith(".")  # our staging folders
            mine = (e / "meta.json").is_file() if command == "data preprocess" else \
                (e / f"{e.name}.synth.json").is_file()
            if not (hidden or mine):
                return False
        elif e.name != proof and not any(fnmatch.fnmatch(e.name, pat) for pat in patterns):
            return False
    return True


def is_empty(path: str | os.PathLike) -> bool:
    """True when ``path`` does not exist or is an empty real folder."""
    p = Path(path)
    if p.is_symlink():
        return False
    if not p.exists():
        return True
    return p.is_dir() and not any(p.iterdir())


def check_replaceable(folder: str | os.PathLike, command: Optional[str], what: str = "output folder") -> None:
    """ConfigError unless ``folder`` may be deleted: a real folder carrying our mark (of ``command``
    when given) and holding nothing we did not write."""
    p = Path(folder)
    if p.is_symlink():
        raise ConfigError(f"{p}: the {what} is a symbolic link; safnet replaces only folders it wrote "
                          "(remove the link yourself or choose another output)")
    if not p.is_dir():
        raise ConfigError(f"{p}: the {what} exists and is not a folder; safnet replaces only folders it wrote")
    mark = read_mark(p)
    if mark is None and command is not None and written_before_marks(p, command):
        return
    if mark is None:
        raise ConfigError(f"{p}: the {what} was not written by safnet (no {MARK_NAME}); safnet replaces "
                          "only the outputs it wrote itself; choose another output or remove it yourself")
    if command is not None and mark.get("command") != command:
        raise ConfigError(f"{p}: the {what} was written by `safnet {mark.get('command')}`, not `safnet {command}`; "
                          "not replaced")
    extra = foreign_entries(p, mark)
    if extra:
        raise ConfigError(f"{p}: the {what} holds files safnet did not write ({', '.join(extra[:3])}"
                          f"{', ...' if len(extra) > 3 else ''}); not replaced; move them out or choose another output")


def _resolved(p: str | os.PathLike) -> Path:
    return Path(os.path.abspath(os.path.expanduser(os.fspath(p)))).resolve()


def _inside(child: Path, parent: Path) -> bool:
    return child == parent or parent in child.parents


def check_separate(out: str | os.PathLike, inputs: Iterable[str | os.PathLike], what: str = "output") -> None:
    """ConfigError when the output is an input, lies inside one, or holds one (symlinks resolved)."""
    o = _resolved(out)
    for i in inputs:
        ip = _resolved(i)
        if o == ip:
            raise ConfigError(f"{out}: the {what} is the input {i}")
        if _inside(o, ip):
            raise ConfigError(f"{out}: the {what} lies inside the input {i}; choose a folder outside it")
        if _inside(ip, o):
            raise ConfigError(f"{out}: the {what} holds the input {i}; writing there could replace it")


def claim(out: str | os.PathLike, command: str, *, overwrite: bool, inputs: Iterable[str | os.PathLike] = (),
          incremental: bool = False, what: str = "output folder") -> Path:
    """The checks made before any work on the output ``out`` of ``safnet <command>``.

    * ``out`` must be separate from every input (:func:`check_separate`);
    * an existing non-empty ``out`` is refused without ``overwrite``, unless ``incremental``
      (the command adds to its own earlier output: it must then carry this command's mark);
    * with ``overwrite`` it must be ours (:func:`check_replaceable`), or carry our mark when
      ``incremental`` (the command then replaces only its own sub-folders).
    Creates nothing; returns ``out`` as a Path.
    """
    p = check_output_dir(out, what)
    check_separate(p, inputs, what)
    if is_empty(p):
        return p
    if p.is_symlink():
        check_replaceable(p, command, what)
    mark = read_mark(p)
    if incremental:
        if mark is None and written_before_marks(p, command):
            return p
        if mark is None or mark.get("command") != command:
            raise ConfigError(f"{p}: the {what} exists, is not empty and was not written by `safnet {command}` "
                              f"(no {MARK_NAME}); choose an empty or new folder")
        return p
    if not overwrite:
        ours = mark is not None or (p.is_dir() and written_before_marks(p, command))
        hint = "pass --overwrite to replace it" if ours else \
            "it was not written by safnet, so it is never replaced; choose another output"
        raise ConfigError(f"{p}: the {what} exists and is not empty; {hint}")
    check_replaceable(p, command, what)
    return p


@contextlib.contextmanager
def output_lock(out: str | os.PathLike, what: str = "output folder") -> Iterator[None]:
    """Hold an exclusive lock on the output ``out`` for the block; ConfigError when another run holds it.

    The lock is an ``flock`` on the hidden file ``.<name>.safnet-lock`` beside ``out`` (so a
    swap of ``out`` itself does not move it); the kernel releases it when a process dies.
    """
    check_output_dir(out, what)  # a regular file in the way is named before anything is created
    p = Path(os.path.abspath(os.fspath(out)))
    p.parent.mkdir(parents=True, exist_ok=True)
    lock = p.parent / f".{p.name}{STAGING_TAG}lock"
    if not os.access(p.parent, os.W_OK) and p.is_dir() and not p.is_symlink():
        lock = p / f"{STAGING_TAG}lock"  # a read-only parent: the lock goes inside (commands adding to OUT)
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                holder = os.read(fd, 32).decode(errors="replace").strip()
            finally:
                os.close(fd)
            raise ConfigError(f"{out}: another safnet run{f' (pid {holder})' if holder else ''} is writing to this "
                              f"{what}; wait for it to finish or choose another output") from None
        try:  # the holder before us may have removed the file after we opened it: lock the current one
            same = os.fstat(fd).st_ino == os.stat(lock).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(lock)
        os.close(fd)


def staging_path(out: str | os.PathLike, kind: str = "new") -> Path:
    """A hidden path beside ``out`` for building (``new``) or retiring (``old``) a result."""
    p = Path(os.path.abspath(os.fspath(out)))
    return p.parent / f".{p.name}{STAGING_TAG}{kind}-{os.getpid()}"


def replace_folder(new: Path, final: Path, old: Optional[Path] = None) -> None:
    """Put the complete folder ``new`` in place of ``final``: the old one is renamed aside (to ``old``,
    default :func:`staging_path` ``old``), ``new`` renamed in, the old one deleted last, so an interrupt
    leaves the old result or the new one, whole (the caller has checked that ``final`` may go)."""
    if not final.exists() and not final.is_symlink():
        os.replace(new, final)
        return
    old = old if old is not None else staging_path(final, "old")
    os.replace(final, old)
    try:
        os.replace(new, final)
    except BaseException:
        os.replace(old, final)
        raise
    shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def staged_folder(out: str | os.PathLike, command: str, settings: Optional[dict[str, Any]] = None,
                  create: bool = True, overwrite: bool = False) -> Iterator[Path]:
    """Yield a folder beside ``out`` to build the result in; on success mark it and swap it in for
    ``out`` (:func:`replace_folder`; ``out`` is checked again just before: it may only be replaced
    with ``overwrite`` and when ours); on any exception or Ctrl-C delete it and leave ``out`` whole.

    The yielded folder is ``.<name>.safnet-new-<pid>/<name>`` (hidden parent, same name as ``out``,
    so writers that name files after their folder, like rosbag2, name them as for ``out``).
    ``create`` False yields it not yet created (for writers that create their folder themselves).
    Call :func:`claim` first and hold :func:`output_lock` around it.
    """
    out = Path(out)
    holder = staging_path(out, "new")
    if holder.exists():
        shutil.rmtree(holder)
    holder.mkdir(parents=True)
    new = holder / Path(os.path.abspath(os.fspath(out))).name
    if create:
        new.mkdir()
    try:
        yield new
        if not new.is_dir():
            raise ConfigError(f"{out}: nothing was written")
        write_mark(new, command, settings)
        if (out.exists() or out.is_symlink()) and not is_empty(out):
            if not overwrite:
                raise ConfigError(f"{out}: appeared while this run was writing (another run?); not replaced")
            check_replaceable(out, command)
        replace_folder(new, out)
    finally:
        shutil.rmtree(holder, ignore_errors=True)
