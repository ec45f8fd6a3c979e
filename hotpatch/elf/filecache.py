"""Parsed views of a file, kept while the file stays the same.

One run that patches many processes of one binary (`apply --all-processes`, the daemon) reads libc's
dynamic symbols, dynamic section and call frame information once, not once per process: that parsing is
most of what a single apply costs. A file is the same while its device, inode, size, modification time
and change time are (the change time cannot be set back: a file rewritten in place with its old size and
mtime restored still differs); a package upgrade writes a new inode, so a replaced file is parsed afresh.
Failures are not kept: each caller sees the error of its own attempt.
"""

import os
from collections import OrderedDict
from typing import Callable, TypeVar

T = TypeVar("T")
LIMIT = 256   # views kept (a process maps tens of files; a host's processes, a few hundred distinct ones)

_views: "OrderedDict[tuple, object]" = OrderedDict()


def parsed(path: str, parse: Callable[[str], T]) -> T:
    """parse(path), or what it returned for the same file before."""
    try:
        st = os.stat(path)
    except OSError:
        return parse(path)   # it reports the failure in its own words
    key = (parse, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    if key in _views:
        _views.move_to_end(key)
        return _views[key]   # type: ignore[return-value]
    value = parse(path)
    _views[key] = value
    if len(_views) > LIMIT:
        _views.popitem(last=False)
    return value


def clear() -> None:
    _views.clear()
