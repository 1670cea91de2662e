"""Our I/O boundary: third-party reader errors become one error naming the file (docs/reliability.md,
section 6). :func:`reading` turns the malformed-file errors of readers we do not own (a fixed list, not
``Exception``) into a :class:`~safnet_ros.errors.DataFormatError`; :func:`load_torch_file` is the one
place that unpickles torch files, always with ``weights_only=True``.
"""
from __future__ import annotations

import contextlib
import json
import os
import pickle
import re
import sqlite3
import struct
import sys
import warnings
import zipfile
from typing import Any, Iterator, Optional

import yaml

from safnet_ros.errors import DataFormatError, SafnetError

#: Raised by the standard library's readers on malformed content.
_STDLIB_READER_ERRORS: tuple[type[BaseException], ...] = (
    UnicodeDecodeError, json.JSONDecodeError, struct.error, EOFError, pickle.UnpicklingError,
    zipfile.BadZipFile, sqlite3.DatabaseError,
)


def reader_errors(*extra: type[BaseException]) -> tuple[type[BaseException], ...]:
    """The exception types that mean "this file is malformed" for the readers loaded so far.

    rosbags and yaml are only consulted when already imported (nothing heavy is
    imported here); ``extra`` adds types a caller knows its reader raises on bad
    content (e.g. ``OverflowError`` from rosbags' mcap index of a garbage file).
    """
    types: list[type[BaseException]] = list(_STDLIB_READER_ERRORS) + list(extra)
    yaml = sys.modules.get("yaml")
    if yaml is not None:
        types.append(yaml.YAMLError)
    for name, attr in (("rosbags.rosbag2", "ReaderError"), ("rosbags.rosbag2", "WriterError"),
                       ("rosbags.serde", "SerdeError"), ("rosbags.typesys", "TypesysError")):
        mod = sys.modules.get(name)
        if mod is not None and hasattr(mod, attr):
            types.append(getattr(mod, attr))
    return tuple(types)


def first_line(exc: BaseException, limit: int = 200) -> str:
    """The first non-empty line of an exception's message, shortened (torch's messages run to pages)."""
    text = next((ln.strip() for ln in str(exc).splitlines() if ln.strip()), "") or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


@contextlib.contextmanager
def reading(path: str | os.PathLike, what: str = "file", *extra: type[BaseException]) -> Iterator[None]:
    """Inside the block, a reader's malformed-content error (see :func:`reader_errors`) or an
    OSError becomes ``DataFormatError(path, "<what> is not readable: ...")``.

    Our own :class:`SafnetError` passes unchanged; other exceptions (bugs) too.
    """
    try:
        yield
    except SafnetError:
        raise
    except (OSError, *reader_errors(*extra)) as exc:
        raise as_data_error(path, what, exc) from exc


def as_data_error(path: str | os.PathLike, what: str, exc: BaseException) -> DataFormatError:
    """The one-line DataFormatError for a reader's ``exc`` on ``path`` (see :func:`reading`)."""
    if isinstance(exc, OSError):
        return DataFormatError(path, f"{what} cannot be read: {exc.strerror or first_line(exc)}")
    return DataFormatError(path, f"{what} is not readable: {type(exc).__name__}: {first_line(exc)}")


def read_text(path: str | os.PathLike, what: str = "text file") -> str:
    """UTF-8 text of ``path``; DataFormatError naming it when it is binary or unreadable."""
    with reading(path, what), open(path, encoding="utf-8") as f:
        return f.read()


def load_json(path: str | os.PathLike, what: str = "JSON file") -> Any:
    """Parsed JSON of ``path``; DataFormatError naming it when it is not UTF-8 JSON."""
    text = read_text(path, what)
    with reading(path, what):
        return json.loads(text)


def load_yaml(path: str | os.PathLike, what: str = "YAML file") -> Any:
    """``yaml.safe_load`` of ``path``; DataFormatError naming it when it is not UTF-8 YAML."""
    text = read_text(path, what)
    with reading(path, what):
        return yaml.safe_load(text)


#: The first bytes of every file torch.save writes (a zip archive), and of legacy pickles.
_TORCH_MAGICS = (b"PK\x03\x04", b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05")


#: What torch.load raises on a malformed file (besides UnpicklingError, handled apart).
_TORCH_LOAD_ERRORS: tuple[type[BaseException], ...] = (
    RuntimeError, EOFError, zipfile.BadZipFile, ValueError, struct.error, OSError, KeyError, IndexError,
    TypeError, AttributeError, OverflowError, UnicodeDecodeError, AssertionError,
)


def load_torch_file(path: str | os.PathLike, map_location: Any = "cpu", what: str = "safnet checkpoint",
                    error: Optional[type[SafnetError]] = None) -> Any:
    """``torch.load(path, weights_only=True)``: tensors, numbers, strings, lists and dicts
    only, so a hostile file cannot execute code. A file that is not such a torch file
    raises ``error`` (default DataFormatError) with one line: "not a <what>".
    """
    import torch  # noqa: PLC0415 - torch only for checkpoints: the ScanNet and bag readers that import this module stay torch-free

    def fail(problem: str, cause: Optional[BaseException] = None):
        p = os.fspath(path)
        exc = error(f"{p}: {problem}") if error is not None else DataFormatError(p, problem)
        raise exc from cause

    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as exc:
        fail(f"cannot be read: {exc.strerror or exc}", exc)
    if not any(head.startswith(m[: len(head)]) and len(head) >= 2 for m in _TORCH_MAGICS):
        fail(f"not a {what} (not a file written by torch.save)")
    try:
        with warnings.catch_warnings():  # torch's "unusual pickle protocol, please file an issue" on garbage
            warnings.simplefilter("ignore", UserWarning)
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:  # weights_only refused an object: not ours, maybe hostile
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(exc))
        which = f" ({found.group(1)})" if found else ""
        fail(f"not a {what}: it holds Python objects{which} besides tensors and plain data; "
             "refused without running them", exc)
    except _TORCH_LOAD_ERRORS as exc:
        # torch reports a truncated or corrupt archive as RuntimeError("PytorchStreamReader failed ...");
        # its legacy-format unpickler raises assorted types on garbage. Only torch.load runs in this
        # try block, so these are all "the file is malformed", never a bug of ours.
        fail(f"not a {what}, or truncated/corrupt ({type(exc).__name__}: {first_line(exc, 120)})", exc)
