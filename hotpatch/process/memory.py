"""A process's memory through /proc/PID/mem.

pwrite to /proc/PID/mem writes even read-only and r-x private mappings (the
kernel makes a private copy), so code is written without ever making a
mapping writable and executable.
"""

import array
import ctypes
import errno
import itertools
import os

from hotpatch.errors import ProcessGone, TraceError

_libc = ctypes.CDLL(None, use_errno=True)
_process_vm_readv = _libc.process_vm_readv
_process_vm_readv.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_ulong, ctypes.c_void_p,
                              ctypes.c_ulong, ctypes.c_ulong]
_process_vm_readv.restype = ctypes.c_ssize_t
IOV_MAX = 1024
UNMAPPED_ERRNOS = (errno.EIO, errno.EFAULT)


class Memory:
    def __init__(self, pid: int, writable: bool = True):
        self.pid = pid
        try:
            self.fd = os.open(f"/proc/{pid}/mem", os.O_RDWR if writable else os.O_RDONLY)
        except FileNotFoundError as e:
            raise ProcessGone(f"process {pid} does not exist") from e
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

    def read_available(self, address: int, size: int) -> bytes:
        """What is readable of [address, address+size): up to the first unmapped byte, maybe b"".

        Only "not mapped here" (EIO, EFAULT) gives a short answer; any other
        failure (the process gone, permission) raises.
        """
        try:
            return os.pread(self.fd, size, address)
        except OSError as e:
            if e.errno in UNMAPPED_ERRNOS and os.path.exists(f"/proc/{self.pid}"):
                return b""
            raise self._error("read", address, size, e) from e

    def read_joined(self, ranges: list[tuple[int, int]], into: bytearray | None = None) -> tuple[bytearray, list[int]]:
        """Several ranges one after another in one buffer, and where each begins in it.

        process_vm_readv, IOV_MAX ranges a call. A batch that comes back short
        (a range not mapped) is read again one pread per range, each getting
        what is readable of it, zero-filled: the layout never depends on what
        could be read. `into`, when large enough, is filled instead of a new
        buffer (the commit stop reuses one whose pages are already faulted in);
        only its first sum(sizes) bytes are meaningful.
        """
        starts, pos = [], 0
        for _, size in ranges:
            starts.append(pos)
            pos += size
        buf = into if into is not None and len(into) >= pos else bytearray(pos)
        base = ctypes.addressof((ctypes.c_char * len(buf)).from_buffer(buf)) if buf else 0
        # iovec arrays built as flat word arrays: a thousand ctypes field
        # assignments would cost more than the system call.
        local = array.array("Q", itertools.chain.from_iterable(
            (base + start, size) for start, (_, size) in zip(starts, ranges)))
        remote = array.array("Q", itertools.chain.from_iterable(ranges))
        for first in range(0, len(ranges), IOV_MAX):
            count = min(IOV_MAX, len(ranges) - first)
            want = sum(size for _, size in ranges[first:first + count])
            local_addr = local.buffer_info()[0] + 16 * first
            remote_addr = remote.buffer_info()[0] + 16 * first
            if _process_vm_readv(self.pid, local_addr, count, remote_addr, count, 0) == want:
                continue
            for i in range(first, first + count):
                address, size = ranges[i]
                buf[starts[i]:starts[i] + size] = self.read_available(address, size).ljust(size, b"\0")
        return buf, starts

    def write(self, address: int, data: bytes) -> None:
        try:
            written = os.pwrite(self.fd, data, address)
        except OSError as e:
            raise self._error("write", address, len(data), e) from e
        if written != len(data):
            raise TraceError(f"short write of {len(data)} bytes at {address:#x} in process {self.pid}")

    def _error(self, what: str, address: int, size: int, e: OSError) -> Exception:
        if e.errno == errno.ESRCH or not os.path.exists(f"/proc/{self.pid}"):
            return ProcessGone(f"process {self.pid} exited")
        if e.errno in (errno.EPERM, errno.EACCES):
            return TraceError(f"cannot {what} memory of process {self.pid} (kernel proc_mem.force_override?)")
        return TraceError(f"cannot {what} {size} bytes at {address:#x} in process {self.pid}: {e.strerror}")
