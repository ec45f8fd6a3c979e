"""The seccomp policy (hotpatch/live/sandbox.py) on hand-built filters, for both architectures:
the calls apply and revert make, the pc a filter sees, refusals and their messages, and
naming the image's mappings only when allowed. No process: filters are given, not read."""

import errno
import os

import pytest

from hotpatch.arch import get_arch
from hotpatch.errors import EXIT_TRACE, SeccompForbidden, SeccompUnverifiable, TraceError
from hotpatch.live import sandbox
from hotpatch.safety.seccomp import (
    BPF_ABS,
    BPF_ALU,
    BPF_AND,
    BPF_JEQ,
    BPF_JGE,
    BPF_JMP,
    BPF_JSET,
    BPF_K,
    BPF_LD,
    BPF_RET,
    BPF_W,
    SECCOMP_RET_ALLOW,
    SECCOMP_RET_ERRNO,
    SECCOMP_RET_KILL_PROCESS,
    SECCOMP_RET_TRAP,
)

ARCHS = ["x86_64", "aarch64"]
GADGET = 0x7FFF_F7FC_1000
SELF = os.getpid()         # a thread id for messages ("process N ...")
PAGE = 4096
PROT_READ, PROT_WRITE, PROT_EXEC = 1, 2, 4
# Hand-copied from the kernel's headers: (AUDIT_ARCH_*, mmap, mprotect, munmap, prctl, bytes of the
# syscall instruction).
ABI = {"x86_64": (0xC000003E, 9, 10, 11, 157, 2), "aarch64": (0xC00000B7, 222, 226, 215, 167, 4)}


def stmt(code, k=0):
    return (code, 0, 0, k)


def jump(code, k, jt=0, jf=0):
    return (code, jt, jf, k)


def ld(offset):
    return stmt(BPF_LD | BPF_W | BPF_ABS, offset)


def ret(action):
    return stmt(BPF_RET | BPF_K, action)


ALLOW = ret(SECCOMP_RET_ALLOW)


def on_call(nr, action):
    """`action` for system call `nr`, ALLOW for the others."""
    return [ld(0), jump(BPF_JMP | BPF_JEQ | BPF_K, nr, 0, 1), ret(action), ALLOW]


def only_arch(audit_arch):
    return [ld(4), jump(BPF_JMP | BPF_JEQ | BPF_K, audit_arch, 1, 0), ret(SECCOMP_RET_KILL_PROCESS), ALLOW]


def mdwe_filter(audit_arch, nr_mmap, nr_mprotect):
    """Like systemd's MemoryDenyWriteExecute=: no mmap W+X, no mprotect adding X (EPERM)."""
    return [
        ld(4), jump(BPF_JMP | BPF_JEQ | BPF_K, audit_arch, 1, 0), ret(SECCOMP_RET_KILL_PROCESS),
        ld(0), jump(BPF_JMP | BPF_JEQ | BPF_K, nr_mmap, 0, 3),
        ld(32), stmt(BPF_ALU | BPF_AND | BPF_K, PROT_WRITE | PROT_EXEC),       # args[2] = prot
        jump(BPF_JMP | BPF_JEQ | BPF_K, PROT_WRITE | PROT_EXEC, 3, 4),
        jump(BPF_JMP | BPF_JEQ | BPF_K, nr_mprotect, 0, 3),
        ld(32), jump(BPF_JMP | BPF_JSET | BPF_K, PROT_EXEC, 0, 1),
        ret(SECCOMP_RET_ERRNO | errno.EPERM), ALLOW,
    ]


def pc_filter(low, high):
    """Allow system calls only from pcs in [low, high); low and high share their upper 32 bits."""
    return [ld(12), jump(BPF_JMP | BPF_JEQ | BPF_K, low >> 32, 0, 4),
            ld(8), jump(BPF_JMP | BPF_JGE | BPF_K, low & 0xFFFF_FFFF, 0, 2),
            jump(BPF_JMP | BPF_JGE | BPF_K, high & 0xFFFF_FFFF, 1, 0), ALLOW, ret(SECCOMP_RET_KILL_PROCESS)]


class FakeProcess:
    """What check_process uses of a Process: its filters and gadget, its system-call thread, arch, page."""

    def __init__(self, arch, filters, gadget=GADGET):
        self.arch, self.page_size = arch, PAGE
        self._filters, self._gadget = filters, gadget

    def seccomp_filters(self):
        return self._filters, (self._gadget if self._filters else 0)

    def syscall_thread(self):
        return SELF


@pytest.mark.parametrize("name", ARCHS)
def test_needed_calls_are_those_apply_and_revert_make(name):
    _, mmap, mprotect, munmap, _, _ = ABI[name]
    anon, fixed_noreplace, no_fd = 0x22, 0x100000, (1 << 64) - 1
    assert sandbox.needed_calls(get_arch(name), PAGE) == [
        ("mmap", mmap, [0, PAGE, PROT_READ | PROT_EXEC, anon | fixed_noreplace, no_fd, 0]),
        ("mmap", mmap, [0, PAGE, PROT_READ | PROT_EXEC, anon, no_fd, 0]),
        ("mprotect", mprotect, [0, PAGE, PROT_READ]),
        ("mprotect", mprotect, [0, PAGE, PROT_READ | PROT_WRITE]),
        ("munmap", munmap, [0, PAGE]),
    ]


@pytest.mark.parametrize("name", ARCHS)
def test_the_pc_a_filter_sees_is_after_the_syscall_instruction(name):
    arch, size = get_arch(name), ABI[name][5]
    calls = sandbox.needed_calls(arch, PAGE)
    exactly = [pc_filter(GADGET + size, GADGET + size + 1)]
    assert sandbox.first_forbidden(SELF, arch, exactly, GADGET, calls) is None
    assert sandbox.first_forbidden(SELF, arch, exactly, GADGET + 1, calls) == ("mmap", SECCOMP_RET_KILL_PROCESS)
    at_gadget = [pc_filter(GADGET, GADGET + 1)]
    assert sandbox.first_forbidden(SELF, arch, at_gadget, GADGET, calls) == ("mmap", SECCOMP_RET_KILL_PROCESS)


@pytest.mark.parametrize("name", ARCHS)
def test_verdicts_follow_the_arguments_and_the_architecture(name):
    arch = get_arch(name)
    audit, mmap, mprotect, _, _, _ = ABI[name]
    calls = sandbox.needed_calls(arch, PAGE)
    assert sandbox.first_forbidden(SELF, arch, [mdwe_filter(audit, mmap, mprotect)], GADGET, calls) is None
    adding_exec = [("mprotect", mprotect, [0, PAGE, PROT_READ | PROT_EXEC])]
    assert sandbox.first_forbidden(SELF, arch, [mdwe_filter(audit, mmap, mprotect)], GADGET, adding_exec) == \
        ("mprotect", SECCOMP_RET_ERRNO | errno.EPERM)
    other = ABI["aarch64" if name == "x86_64" else "x86_64"][0]
    assert sandbox.first_forbidden(SELF, arch, [only_arch(other)], GADGET, calls) == \
        ("mmap", SECCOMP_RET_KILL_PROCESS)
    assert sandbox.first_forbidden(SELF, arch, [only_arch(audit)], GADGET, calls) is None
    assert sandbox.first_forbidden(SELF, arch, [], GADGET, calls) is None


@pytest.mark.parametrize("name", ARCHS)
def test_refusal_names_the_call_and_stacked_filters_all_decide(name):
    arch = get_arch(name)
    _, mmap, _, munmap, _, _ = ABI[name]
    kill_mmap = on_call(mmap, SECCOMP_RET_KILL_PROCESS)
    calls = sandbox.needed_calls(arch, PAGE)
    without_mmap = [c for c in calls if c[0] != "mmap"]
    assert [c[0] for c in without_mmap] == ["mprotect", "mprotect", "munmap"]
    assert sandbox.first_forbidden(SELF, arch, [kill_mmap], GADGET, without_mmap) is None
    with pytest.raises(TraceError) as e:
        sandbox.require_allowed(SELF, arch, [[ALLOW], kill_mmap], GADGET, calls)
    assert isinstance(e.value, SeccompForbidden) and e.value.exit_code == EXIT_TRACE
    assert e.value.message == f"process {SELF} runs under a seccomp filter that forbids mmap (action KILL_PROCESS)"
    assert "\n" not in e.value.line() and "nothing was changed" in e.value.line()
    with pytest.raises(SeccompForbidden, match=r"forbids munmap \(action ERRNO\(1\)\)"):
        sandbox.require_allowed(SELF, arch, [on_call(munmap, SECCOMP_RET_ERRNO | errno.EPERM)], GADGET, calls)


def test_an_uninterpretable_filter_refuses():
    arch = get_arch("x86_64")
    with pytest.raises(SeccompUnverifiable, match="cannot interpret") as e:
        sandbox.require_allowed(SELF, arch, [[ld(1), ALLOW]], GADGET, sandbox.needed_calls(arch, PAGE))
    assert e.value.exit_code == EXIT_TRACE


@pytest.mark.parametrize("name", ARCHS)
def test_check_process_names_vmas_only_where_allowed(name):
    arch = get_arch(name)
    audit, mmap, mprotect, _, prctl, _ = ABI[name]
    check = sandbox.check_process
    assert check(FakeProcess(arch, [])) == sandbox.SyscallPolicy(name_vmas=True)
    assert check(FakeProcess(arch, [mdwe_filter(audit, mmap, mprotect)])) == sandbox.SyscallPolicy(name_vmas=True)
    # naming is optional: an errno for prctl means "skip it" ...
    no_prctl = on_call(prctl, SECCOMP_RET_ERRNO | errno.EINVAL)
    assert check(FakeProcess(arch, [no_prctl])) == sandbox.SyscallPolicy(name_vmas=False)
    # ... anything harsher is refused like a needed call
    with pytest.raises(SeccompForbidden, match=r"forbids prctl \(action TRAP\)"):
        check(FakeProcess(arch, [on_call(prctl, SECCOMP_RET_TRAP)]))
    with pytest.raises(SeccompForbidden, match="forbids mmap"):
        check(FakeProcess(arch, [no_prctl, on_call(mmap, SECCOMP_RET_KILL_PROCESS)]))
