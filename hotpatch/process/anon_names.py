"""Can this kernel name anonymous mappings (PR_SET_VMA_ANON_NAME, CONFIG_ANON_VMA_NAME)?

Asked once, of a page of our own: every process on the host runs on the same
kernel, and a remote prctl that the kernel is bound to refuse costs each
apply two round trips through the target (0.2 ms of the 1.4 ms the image's
mapping took on the kernel that showed it).
"""

import ctypes
import errno
import functools
import mmap

from hotpatch.linux import PR_SET_VMA, PR_SET_VMA_ANON_NAME


@functools.cache
def kernel_names_anonymous_mappings() -> bool:
    """False only when the kernel lacks the feature (EINVAL for a well-formed request on a private
    anonymous page). Any other refusal (a seccomp filter of our own: EPERM) says nothing about the
    kernel, so the answer is then True and each process is asked, as before."""
    page = mmap.mmap(-1, mmap.PAGESIZE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    try:
        anchor = ctypes.c_char.from_buffer(page)
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            result = libc.prctl(ctypes.c_int(PR_SET_VMA), ctypes.c_ulong(PR_SET_VMA_ANON_NAME),
                                ctypes.c_ulong(ctypes.addressof(anchor)), ctypes.c_ulong(mmap.PAGESIZE),
                                ctypes.c_char_p(b"hotpatch-probe"))
            return result == 0 or ctypes.get_errno() != errno.EINVAL
        finally:
            del anchor   # the buffer export must end before the page can be unmapped
    finally:
        page.close()
