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

import os


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
