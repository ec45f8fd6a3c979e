"""Target memory through /proc/PID/mem.

pwrite to /proc/PID/mem writes even read-only and r-x private mappings (the
kernel makes a private copy), so code is written without ever making a
mapping writable and executable.
"""

import errno
import os

from hotpatch.errors import TargetGone, TraceError


class Memory:
    def __init__(self, pid: int, writable: bool = True):
        self.pid = pid
        try:
            self.fd = os.open(f"/proc/{pid}/mem", os.O_RDWR if writable else os.O_RDONLY)
        except FileNotFoundError as e:
            raise TargetGone(f"process {pid} does not exist") from e
        except PermissionError as e:
            raise TraceError(f"cannot open the memory of process {pid}: permission denied",
                             "run as root or as the process's owner") from e

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def read(self, address: int, size: int) -> bytes:
        try:
            data = os.pread(self.fd, size, address)
        except OSError as e:
            raise self._error("read", address, size, e) from e
        if len(data) != size:
            raise TraceError(f"short read of {size} bytes at {address:#x} in process {self.pid}")
        return data

    def read_upto(self, address: int, size: int) -> bytes:
        try:
            return os.pread(self.fd, size, address)
        except OSError:
            return b""

    def write(self, address: int, data: bytes) -> None:
        try:
            written = os.pwrite(self.fd, data, address)
        except OSError as e:
            raise self._error("write", address, len(data), e) from e
        if written != len(data):
            raise TraceError(f"short write of {len(data)} bytes at {address:#x} in process {self.pid}")

    def _error(self, what: str, address: int, size: int, e: OSError) -> Exception:
        if e.errno == errno.ESRCH or not os.path.exists(f"/proc/{self.pid}"):
            return TargetGone(f"process {self.pid} exited")
        if e.errno in (errno.EPERM, errno.EACCES):
            return TraceError(f"cannot {what} memory of process {self.pid} (kernel proc_mem.force_override?)")
        return TraceError(f"cannot {what} {size} bytes at {address:#x} in process {self.pid}: {e.strerror}")
