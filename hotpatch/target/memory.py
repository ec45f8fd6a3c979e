"""Target memory through /proc/PID/mem.

pwrite to /proc/PID/mem writes even read-only and r-x private mappings (the
kernel makes a private copy), so code is written without ever making a
mapping writable and executable.
"""

import ctypes
import errno
import os

from hotpatch.errors import TargetGone, TraceError


class _iovec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


_libc = ctypes.CDLL(None, use_errno=True)
_process_vm_readv = _libc.process_vm_readv
_process_vm_readv.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_ulong, ctypes.c_void_p,
                              ctypes.c_ulong, ctypes.c_ulong]
_process_vm_readv.restype = ctypes.c_ssize_t
IOV_MAX = 1024


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

    def read_many(self, ranges: list[tuple[int, int]]) -> list[bytes]:
        """Several ranges in as few system calls as possible (process_vm_readv, 1024 at a time).

        Falls back to one pread per range when a batch comes back short (a
        range not mapped), so each range gets what is readable of it.
        """
        out: list[bytes] = []
        for first in range(0, len(ranges), IOV_MAX):
            batch = ranges[first:first + IOV_MAX]
            total = sum(size for _, size in batch)
            buf = ctypes.create_string_buffer(total)
            local = (_iovec * len(batch))()
            remote = (_iovec * len(batch))()
            base, pos = ctypes.addressof(buf), 0
            for i, (address, size) in enumerate(batch):
                local[i].iov_base, local[i].iov_len = base + pos, size
                remote[i].iov_base, remote[i].iov_len = address, size
                pos += size
            got = _process_vm_readv(self.pid, local, len(batch), remote, len(batch), 0)
            if got != total:
                out.extend(self.read_upto(address, size) for address, size in batch)
                continue
            raw, pos = buf.raw, 0
            for _, size in batch:
                out.append(raw[pos:pos + size])
                pos += size
        return out

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
