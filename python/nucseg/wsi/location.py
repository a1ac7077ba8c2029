"""Where an output store lives: a local folder, or a URL of any filesystem fsspec knows.

The runner writes its store through zarr (arrays, ``zarr.json``) and through this module
(completion records, table parts, spill files, the nucleus table under ``nucseg/``).
Both understand local paths and fsspec URLs (``s3://``, ``gs://``, ``az://``,
``memory://``...), so a store may live on an object store.

Files that a reader must see whole or not at all are committed differently:

* on a local filesystem, written under a temporary name in the same folder, then
  renamed into place (``os.replace``, atomic on POSIX);
* at a URL, written as one object with one request (a PUT is atomic on object stores:
  readers see the old state or the whole new object, never a part), or, for the
  nucleus table, first to a local temporary file that is then uploaded whole.

There is no rename on object stores, so nothing under ``nucseg/`` is renamed there:
records and parts are write-once objects. Directory listings are re-read from the
filesystem each time (fsspec caches listings per process; another worker may have
written since).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

#: A URL: ``protocol://...``, or a chain like ``simplecache::s3://...``.
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*(::[A-Za-z][A-Za-z0-9+.\-]*)*://")


class LocationError(ValueError):
    """An output URL that cannot be used (unknown protocol, backend not installed)."""


def is_url(target: str | os.PathLike[str]) -> bool:
    """Whether ``target`` is a URL (``s3://bucket/x``), not a local path.

    Examples
    --------
    >>> is_url("s3://bucket/out.zarr"), is_url("/data/out.zarr"), is_url("file:///data/out.zarr")
    (True, False, True)
    """
    return isinstance(target, str) and _URL.match(target) is not None


def check_protocols(url: str) -> None:
    """Raise :class:`LocationError` unless fsspec can open every protocol of ``url``.

    Raises
    ------
    LocationError
        An unknown protocol, or one whose backend package is missing (the message
        names the package to install).
    """
    try:
        import fsspec
        from fsspec.registry import known_implementations
    except ImportError:
        raise LocationError(f"output {url}: URLs need the package fsspec (pip install fsspec)") from None

    for part in url.split("::"):
        protocol = part.split("://", 1)[0] if "://" in part else part
        try:
            fsspec.get_filesystem_class(protocol)
        except ImportError:
            spec = known_implementations.get(protocol, {})
            package = spec.get("class", protocol).split(".")[0]
            raise LocationError(
                f"output {url}: the {protocol}:// filesystem needs the package {package}, which is not "
                f"installed (pip install {package})"
            ) from None
        except ValueError:
            raise LocationError(
                f"output {url}: unknown protocol {protocol}:// (use a local path, or a URL fsspec knows, "
                "such as s3://bucket/out.zarr, gs://bucket/out.zarr or memory://out.zarr)"
            ) from None


@dataclass(frozen=True)
class Location:
    """A file or folder of a store: a local path, or a URL of an fsspec filesystem.

    Build it with :meth:`of`. Small and picklable (it holds the string only; the
    filesystem is looked up in fsspec's instance cache on each use).

    Attributes
    ----------
    url : str
        The local path as given (``file://`` removed), or the URL.
    local : bool
        True for a local path: writes are committed by rename.
    """

    url: str
    local: bool

    @classmethod
    def of(cls, target: str | os.PathLike[str] | Location) -> Location:
        """The location of ``target`` (a path, a URL or a Location), its protocol checked.

        Raises
        ------
        LocationError
            An unknown protocol or a missing fsspec backend (see :func:`check_protocols`).
        TypeError
            ``target`` is neither a path nor a string.
        """
        if isinstance(target, Location):
            return target
        if not isinstance(target, (str, os.PathLike)):
            raise TypeError(f"output must be a path or a URL, got {target!r}")
        if isinstance(target, str) and target.startswith("file://"):
            target = target[len("file://") :]
        if not is_url(target):
            return cls(str(Path(target)), True)
        check_protocols(str(target))
        return cls(str(target).rstrip("/"), False)

    def __truediv__(self, name: str) -> Location:
        if self.local:
            return Location(str(Path(self.url) / name), True)
        return Location(f"{self.url}/{name}", False)

    def __str__(self) -> str:
        return self.url

    @property
    def name(self) -> str:
        """The last component."""
        return Path(self.url).name if self.local else self.url.rsplit("/", 1)[-1]

    @property
    def parent(self) -> Location:
        """The folder holding this location (``s3://b/x`` -> ``s3://b``, ``memory://x`` -> ``memory://``)."""
        if self.local:
            return Location(str(Path(self.url).parent), True)
        head = self.url.rpartition("/")[0]
        return Location(head + "/" if head.endswith(":/") else head, False)

    @property
    def public(self) -> Path | str:
        """What the API returns: a :class:`~pathlib.Path` for a local store, the URL otherwise."""
        return Path(self.url) if self.local else self.url

    def fs(self) -> tuple[Any, str]:
        """The fsspec filesystem and the path on it."""
        from fsspec.core import url_to_fs

        return url_to_fs(self.url)

    # -- reading ---------------------------------------------------------------------------
    def exists(self) -> bool:
        """Whether a file, a folder or (on an object store) any object under this prefix exists."""
        if self.local:
            return Path(self.url).exists()
        fs, path = self.fs()
        fs.invalidate_cache(path)
        try:
            return bool(fs.exists(path))
        except OSError:
            raise
        except Exception as exc:  # noqa: BLE001 - e.g. botocore's NoCredentialsError: one OSError line
            raise OSError(f"cannot reach {self.url}: {type(exc).__name__}: {exc}") from exc

    def isdir(self) -> bool:
        """Whether this is a folder (on an object store: a prefix with objects under it)."""
        if self.local:
            return Path(self.url).is_dir()
        fs, path = self.fs()
        fs.invalidate_cache(path)
        return bool(fs.isdir(path))

    def entries(self) -> dict[str, bool]:
        """``{name: is_folder}`` of the folder's direct members, read afresh; empty when
        the folder does not exist."""
        if self.local:
            p = Path(self.url)
            return {c.name: c.is_dir() for c in p.iterdir()} if p.is_dir() else {}
        fs, path = self.fs()
        fs.invalidate_cache(path)
        try:
            listing = fs.ls(path, detail=True)
        except FileNotFoundError:
            return {}
        return {e["name"].rstrip("/").rsplit("/", 1)[-1]: e["type"] == "directory" for e in listing}

    def files(self, suffix: str) -> list[Location]:
        """The folder's files whose name ends with ``suffix``, sorted by name."""
        return [self / n for n, folder in sorted(self.entries().items()) if not folder and n.endswith(suffix)]

    def read_bytes(self) -> bytes:
        """The whole file."""
        if self.local:
            return Path(self.url).read_bytes()
        fs, path = self.fs()
        return fs.cat_file(path)

    def read_all(self, files: list[Location]) -> list[bytes]:
        """The contents of ``files`` (fetched concurrently from an object store)."""
        if self.local or not files:
            return [f.read_bytes() for f in files]
        fs, _ = self.fs()
        paths = [f.fs()[1] for f in files]
        got = fs.cat(paths, on_error="raise")
        return [got[p] for p in paths]

    @contextlib.contextmanager
    def open_read(self) -> Iterator[IO[bytes]]:
        """A binary file object to read from."""
        if self.local:
            with open(self.url, "rb") as fh:
                yield fh
            return
        fs, path = self.fs()
        with fs.open(path, "rb") as fh:
            yield fh

    # -- writing ---------------------------------------------------------------------------
    def makedirs(self) -> None:
        """Create the folder and its parents (nothing to do at a URL: object stores have no folders)."""
        if self.local:
            Path(self.url).mkdir(parents=True, exist_ok=True)

    def write_bytes(self, data: bytes) -> None:
        """Write the file so that a reader sees it whole or not at all.

        Local: a temporary file in the same folder (``NAME.PID.THREAD.tmp``), renamed into
        place; its folder is created. URL: one object, one request.
        """
        if not self.local:
            fs, path = self.fs()
            fs.pipe_file(path, data)
            return
        p = Path(self.url)
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_name(f"{p.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, p)  # atomic: a reader sees the whole file or none

    @contextlib.contextmanager
    def open_write(self) -> Iterator[IO[bytes]]:
        """A binary file object whose content replaces this file, whole, when the block ends
        without an exception (for files too large to hold in memory).

        Local: a temporary file beside it, renamed into place. URL: a local temporary
        file, uploaded in one go at the end. On an exception nothing is committed.
        """
        if self.local:
            p = Path(self.url)
            tmp = p.with_name(f"{p.name}.{os.getpid()}.{threading.get_ident()}.tmp")
            try:
                with open(tmp, "wb") as fh:
                    yield fh
                os.replace(tmp, p)
            finally:
                tmp.unlink(missing_ok=True)
            return
        fs, path = self.fs()
        with tempfile.TemporaryDirectory(prefix="nucseg-") as d:
            tmp = Path(d) / "upload"
            with open(tmp, "wb") as fh:
                yield fh
            fs.put_file(str(tmp), path)

    def remove(self) -> None:
        """Delete the file; nothing happens when it does not exist."""
        if self.local:
            Path(self.url).unlink(missing_ok=True)
            return
        fs, path = self.fs()
        with contextlib.suppress(FileNotFoundError):
            fs.rm_file(path)

    def remove_tree(self) -> None:
        """Delete the folder and all it holds; nothing happens when it does not exist."""
        if self.local:
            if Path(self.url).exists():
                shutil.rmtree(self.url)
            return
        fs, path = self.fs()
        fs.invalidate_cache(path)
        with contextlib.suppress(FileNotFoundError):
            fs.rm(path, recursive=True)


def probe_write(folder: Location, tag: str = "") -> str | None:
    """Write, read back and delete a small file in ``folder`` (created when local).

    Returns None when that works, else one line saying what failed (never raises for
    a filesystem error: the caller words the message).
    """
    probe = folder / f".nucseg-probe{tag}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        folder.makedirs()
        probe.write_bytes(b"nucseg")
        if probe.read_bytes() != b"nucseg":
            return f"wrote {probe} but read something else back"
    except Exception as exc:  # noqa: BLE001 - fsspec backends raise many types (botocore, aiohttp...)
        return f"cannot write to the output folder {folder}: {getattr(exc, 'strerror', None) or exc}"
    finally:
        with contextlib.suppress(Exception):
            probe.remove()
    return None
