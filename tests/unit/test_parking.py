"""The journal a borrowed thread carries (process/parking.py) and the registers that park it, on both
architectures: a journal decodes only as written, and a parked thread's journal sits where its stack
pointer will be once the system call has returned into the loop."""

import pytest

from hotpatch.arch import arch_for_machine
from hotpatch.process import parking

X86, A64 = arch_for_machine(62), arch_for_machine(183)


def journal(registers: bytes) -> parking.Journal:
    return parking.Journal(tid=4242, nr=9, args=(0, 4096, 5, 0x22, (1 << 64) - 1, 0), gadget=0x7F00_0000_1000,
                           park=0x7F00_0000_2000, registers=registers)


@pytest.mark.parametrize("size", [216, 272])   # x86-64 user_regs_struct, AArch64 user_pt_regs
def test_round_trip_and_size(size):
    j = journal(bytes(range(256)) * 2)
    j = parking.Journal(j.tid, j.nr, j.args, j.gadget, j.park, j.registers[:size])
    data = parking.encode(j)
    assert len(data) == parking.size(size) and len(data) % 16 == 0
    assert parking.decode(data + b"tail", size) == j


def test_anything_else_is_no_journal():
    data = bytearray(parking.encode(journal(bytes(216))))
    assert parking.decode(bytes(data), 272) is None              # another architecture's length
    assert parking.decode(bytes(data[:100]), 216) is None        # cut short
    for offset in (0, 9, 40, 100, len(data) - 20):               # magic, tid, arguments, registers, checksum
        flipped = bytearray(data)
        flipped[offset] ^= 1
        assert parking.decode(bytes(flipped), 216) is None


def test_x86_64_parked_call_returns_into_the_loop_onto_its_journal():
    regs = X86.regs_type()
    regs.rsp, regs.rip, regs.rax = 0x7FFD_0000_1008, 0x5555_0000_1234, 0xFFFF_FFFF_FFFF_FE00   # -ERESTARTSYS
    new, address, prefix = X86.hijack_parked(regs, 0x7F00_0000_1000, 0x7F00_0000_2000, 9, [1, 2, 3, 4, 5, 6], 320)
    assert (new.rip, new.rax, new.orig_rax, new.rdi, new.r10) == (0x7F00_0000_1000, 9, (1 << 64) - 1, 1, 4)
    assert address == new.rsp and prefix == (0x7F00_0000_2000).to_bytes(8, "little")   # what `ret` pops
    journal_at = new.rsp + 8
    assert journal_at % 16 == 0 and journal_at + 320 <= regs.rsp - 128     # below the red zone
    after_ret = X86.regs_type.from_buffer_copy(new)
    after_ret.rsp, after_ret.rip = journal_at, 0x7F00_0000_2000
    assert X86.parked_journal(after_ret) == journal_at


def test_aarch64_parked_call_returns_to_itself_onto_its_journal():
    regs = A64.regs_type()
    regs.sp, regs.pc = 0x7FFF_F000_1010, 0x5555_0000_1234
    new, address, prefix = A64.hijack_parked(regs, 0x7F00_0000_1000, 0x7F00_0000_1004, 222, [1, 2, 3, 4, 5, 6], 336)
    assert (new.pc, new.regs[8], new.regs[0], new.regs[30]) == (0x7F00_0000_1000, 222, 1, 0x7F00_0000_1004)
    assert prefix == b"" and address == new.sp and new.sp % 16 == 0 and new.sp + 336 <= regs.sp - 128
    assert A64.parked_journal(new) == new.sp
    assert A64.returning_syscall[4:] == (0xD65F03C0).to_bytes(4, "little")   # ret: x30 = itself loops
