"""Reading a /proc file whole: open, read until the end, close.

Python's open() also asks each file for its status, whether it is a terminal and where it is: three more
system calls for each read, and an apply reads /proc dozens of times (maps, status, each thread's stat).
Errors are those of open(): FileNotFoundError for a process gone, PermissionError, OSError.
"""

import os

CHUNK = 1 << 16


def read(path: str) -> bytes:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        chunks = []
        while True:
            chunk = os.read(fd, CHUNK)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)
    finally:
        os.close(fd)
