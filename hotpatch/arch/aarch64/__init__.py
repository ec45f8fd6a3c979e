"""AArch64: the architecture's modules wired into one Arch."""

from hotpatch.arch.aarch64 import call, debug, insn, jumps, registers, syscall, unwind
from hotpatch.arch.aarch64 import relocations as relocation_table
from hotpatch.arch.base import Arch


class AArch64(Arch):
    name = "aarch64"
    e_machine = 183                    # EM_AARCH64
    audit_arch = syscall.AUDIT_ARCH
    regs_type = registers.user_pt_regs
    syscall_insn = syscall.SYSCALL_INSN
    syscall_insn_align = syscall.SYSCALL_INSN_ALIGN
    syscall_numbers = syscall.SYSCALL_NUMBERS
    returning_syscall = syscall.RETURNING_SYSCALL
    park_insn = syscall.PARK_INSN
    relocations = relocation_table.RELOCATIONS
    got_reloc_types = relocation_table.GOT_RELOC_TYPES
    dtpmod_reloc_types = relocation_table.DTPMOD_RELOC_TYPES
    tlsdesc_reloc_types = relocation_table.TLSDESC_RELOC_TYPES
    tlsdesc_return = bytes.fromhex("000440f9c0035fd6")   # ldr x0, [x0, #8]; ret: a static TLS descriptor's entry
    stub_size = jumps.STUB_SIZE
    branch_reach = jumps.REACH
    fallback_reach = jumps.FALLBACK_REACH
    near_branch_size = jumps.NEAR_SIZE
    far_branch_size = jumps.FAR_SIZE
    cross_compiler = "aarch64-linux-gnu-gcc"
    library_dirs = ("/lib/aarch64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/aarch64-linux-gnu/lib")
    dwarf_registers = unwind.REGISTERS
    dwarf_sp = unwind.SP
    dwarf_pc = unwind.PC
    sigreturn_code = unwind.SIGRETURN
    sigreturn_align = unwind.SIGRETURN_ALIGN

    pc = staticmethod(registers.pc)
    sp = staticmethod(registers.sp)
    thread_view = staticmethod(registers.thread_view)
    hijack_for_syscall = staticmethod(syscall.hijack)
    syscall_result = staticmethod(syscall.result)
    hijack_parked = staticmethod(syscall.hijack_parked)
    parked_journal = staticmethod(syscall.parked_journal)
    landing_pad = staticmethod(jumps.landing_pad)
    entry_rewrite = staticmethod(jumps.entry_rewrite)
    padding_length = staticmethod(insn.padding_length)
    in_branch_reach = staticmethod(jumps.in_branch_reach)
    branch = staticmethod(jumps.branch)
    stub = staticmethod(jumps.stub)
    trap_insn = call.TRAP_INSN
    return_loop = call.RETURN_LOOP
    breakpoint_writes = staticmethod(debug.breakpoint_writes)
    clear_writes = staticmethod(debug.clear_writes)
    hijack_for_call = staticmethod(call.hijack_for_call)
    hijack_parked_call = staticmethod(call.hijack_parked_call)
    returned_at = staticmethod(call.returned_at)
    call_result = staticmethod(call.call_result)
    unwind_registers = staticmethod(unwind.registers)
    code_address = staticmethod(unwind.code_address)
    sigframe_registers = staticmethod(unwind.sigframe_registers)
