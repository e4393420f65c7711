"""What identifies a file's current content without reading it.

Memos keyed on a file (image identities for the feature cache, checkpoint digests,
weights already checked) must miss when the file is rewritten. Size and modification
time alone do not ensure that: a rewrite of the same size within the modification
time's resolution (one or two seconds on some file systems), or a copy that keeps
the old modification time, leaves both unchanged. The status-change time cannot be
set back from user space, and a file replaced by renaming another over it (how
checkpoints and downloads are written) has a new inode.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import socket
from collections.abc import Callable
from pathlib import Path


def file_state(path: str | os.PathLike) -> tuple[int, int, int, int]:
    """A file's size, modification and status-change times (ns) and inode.

    Parameters
    ----------
    path : str or path-like

    Returns
    -------
    tuple of int
        ``(size, mtime_ns, ctime_ns, inode)``; it changes when the file is rewritten.

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> from skfmcib._files import file_state
    >>> p = Path(tempfile.mkdtemp()) / "a.bin"
    >>> _ = p.write_bytes(b"abc")
    >>> file_state(p)[0]
    3
    """
    st = os.stat(path)
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)


_HOST = re.sub(r"[^\w.-]", "_", socket.gethostname()) or "host"


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Write ``path`` through a temporary file beside it, flushed to disk, then renamed.

    A reader never sees half a file: ``path`` holds the old content until the rename.
    Temporary files for the same path that a process of this machine left when it was
    killed are removed first (a checkpoint's can be gigabytes).

    Parameters
    ----------
    path : pathlib.Path
        Destination; its folder is created if needed.
    write : callable
        Writes the content to the temporary path it is given.

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> from skfmcib._files import atomic_write
    >>> p = Path(tempfile.mkdtemp()) / "out.txt"
    >>> atomic_write(p, lambda tmp: tmp.write_text("done"))
    >>> p.read_text(), sorted(q.name for q in p.parent.iterdir())
    ('done', ['out.txt'])
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{path.name}.{_HOST}."
    _remove_abandoned(path.parent, prefix)
    tmp = path.with_name(f"{prefix}{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        write(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _remove_abandoned(folder: Path, prefix: str) -> None:
    """Remove ``prefix<pid>.<hex>.tmp`` files whose process no longer runs."""
    try:
        with os.scandir(folder) as entries:
            names = [e.name for e in entries if e.name.startswith(prefix)]
    except OSError:
        return
    for name in names:
        pid, _, rest = name[len(prefix) :].partition(".")
        if not (pid.isdigit() and rest.endswith(".tmp")) or _running(int(pid)):
            continue
        with contextlib.suppress(OSError):
            (folder / name).unlink()


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # another user's process
        return True
    return True
