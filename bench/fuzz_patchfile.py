#!/usr/bin/env python3
"""Fuzz the patch-file reader and the linker with hostile patch files.

The contract under test, for ANY bytes:

    patch = patchfile.decode(data); patch.obj
    plan = plan_layout(patch.obj, get_arch(patch.meta.arch), header_size=4096)
    plan.link(base, resolver)          # resolver as apply builds it: target symbols from the metadata

either succeeds or raises a HotpatchError with exit code 6 whose message is one line. Anything else is a
crash: another exception type, a hang (more than CASE_TIMEOUT), more than MEMORY_LIMIT of new memory (or a
MemoryError, even one wrapped in InvalidPatch), or an attempt to touch a process (/proc, kill, exec, ptrace).

Inputs are real gcc-compiled patches (fixtures/patch_target.c, fixtures/patch_work.c) mutated structurally:
ELF header, section header, symbol and relocation fields, section count, string tables, raw bytes, and the
JSON metadata (types, extreme numbers, missing keys). The container is re-encoded with a correct sha256
trailer, so mutations reach the parser instead of the checksum check (a few cases break the container on
purpose). A synthetic object calling many externals is a seed too, and in a few cases is scaled up to 16,000
externals, where work that grows faster than the input shows as a hang. Each case runs in a worker process
under an alarm, an address-space limit and an audit hook. Every case is derived from (--seed, case number)
alone: `--case N` reruns one.

    python3 bench/fuzz_patchfile.py [--cases N] [--seed S] [--jobs J]   # default 10,000 cases
    python3 bench/fuzz_patchfile.py --case N [--seed S]                # rerun one case, show its traceback
    python3 bench/fuzz_patchfile.py --replay FILE.hp                   # run a saved reproducer in-process

Exit status 1 if any crash was found; reproducers (.hp, with a .txt holding the traceback) go to
/tmp/hotpatch-fuzz.
"""

import argparse
import copy
import hashlib
import json
import multiprocessing
import os
import random
import re
import resource
import signal
import struct
import sys
import tempfile
import threading
import time
import traceback
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for _path in (ROOT, os.path.join(ROOT, "tests")):   # this checkout's hotpatch; the tests' harness
    if _path not in sys.path:
        sys.path.insert(0, _path)

from harness import FIXTURES, compiler_for  # noqa: E402

from hotpatch import patchfile  # noqa: E402
from hotpatch.arch import get_arch  # noqa: E402
from hotpatch.errors import EXIT_INVALID, HotpatchError  # noqa: E402
from hotpatch.link.linker import plan_layout  # noqa: E402

CASE_TIMEOUT = 2.0            # seconds one case may take
WORKER_GRACE = 10.0           # then the worker is killed: a hang the alarm could not interrupt
MEMORY_LIMIT = 256 << 20      # new resident memory one case may use
ADDRESS_SPACE_SLACK = 1 << 30  # larger allocations fail with MemoryError (also a crash) instead of swapping
REPRO_DIR = "/tmp/hotpatch-fuzz"
REPROS_PER_CRASH = 3

# ELF64 little-endian structures: field -> (offset, struct format)
EHDR = {"EI_CLASS": (4, "B"), "EI_DATA": (5, "B"), "EI_VERSION": (6, "B"), "EI_OSABI": (7, "B"),
        "e_type": (16, "H"), "e_machine": (18, "H"), "e_version": (20, "I"), "e_entry": (24, "Q"),
        "e_phoff": (32, "Q"), "e_shoff": (40, "Q"), "e_flags": (48, "I"), "e_ehsize": (52, "H"),
        "e_phentsize": (54, "H"), "e_phnum": (56, "H"), "e_shentsize": (58, "H"), "e_shnum": (60, "H"),
        "e_shstrndx": (62, "H")}
SHDR = {"sh_name": (0, "I"), "sh_type": (4, "I"), "sh_flags": (8, "Q"), "sh_addr": (16, "Q"),
        "sh_offset": (24, "Q"), "sh_size": (32, "Q"), "sh_link": (40, "I"), "sh_info": (44, "I"),
        "sh_addralign": (48, "Q"), "sh_entsize": (56, "Q")}
SYM = {"st_name": (0, "I"), "st_info": (4, "B"), "st_other": (5, "B"), "st_shndx": (6, "H"),
       "st_value": (8, "Q"), "st_size": (16, "Q")}
RELA = {"r_offset": (0, "Q"), "r_info": (8, "Q"), "r_addend": (16, "Q")}
SHDR_SIZE, SYM_SIZE, RELA_SIZE = 64, 24, 24
SHT_PROGBITS, SHT_SYMTAB, SHT_STRTAB, SHT_RELA, SHT_NOBITS, SHT_REL = 1, 2, 3, 4, 8, 9
SHF_WRITE, SHF_ALLOC, SHF_EXECINSTR, SHF_TLS = 0x1, 0x2, 0x4, 0x400
SH_TYPES = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 14, 15, 16, 17, 18, 0x6ffffff5, 0x6fff4c03, 0x70000001,
            0x60000000, 0x7fffffff, 0xffffffff]
SH_FLAGS = [0, SHF_ALLOC, SHF_ALLOC | SHF_WRITE, SHF_ALLOC | SHF_EXECINSTR, SHF_ALLOC | SHF_WRITE | SHF_EXECINSTR,
            SHF_ALLOC | SHF_WRITE | SHF_TLS, SHF_ALLOC | 0x30, 0x40, 0x200, 0x800, 1 << 63, (1 << 64) - 1]
R_TYPES = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 19, 20, 21, 22, 23, 24, 25, 26, 27, 29, 37, 41, 42, 43,
           0xff, 0xffffffff]
X86_MACHINE, AARCH64_MACHINE = 62, 183


# -- seeds ----------------------------------------------------------------------

@dataclass
class Seed:
    name: str
    meta: dict    # the metadata as JSON values
    obj: bytes


def _replaced(name: str, offset: int) -> "patchfile.ReplacedFunction":
    return patchfile.ReplacedFunction(name, offset, 32, "0" * 64, 4, 40, "f30f1efa", [])


SEED_SPECS = [
    # name, sources, cflags, replaced functions, target symbols, external names
    ("patch_target", ["patch_target.c"], [], ["compute", "fact", "version"],
     {"counter": ("object", 0x4010), "helper": ("func", 0x1200)}, ["snprintf"]),
    ("patch_target-O0", ["patch_target.c"], ["-O0"], ["compute", "fact", "version"],
     {"counter": ("object", 0x4010), "helper": ("func", 0x1200)}, ["snprintf"]),
    ("patch_work", ["patch_work.c"], [], ["work"], {}, []),
    ("patch_both", ["patch_target.c", "patch_work.c"], [], ["compute", "fact", "version", "work"],
     {"counter": ("object", 0x4010), "helper": ("func", 0x1200)}, ["snprintf"]),
]


def synthetic_object(n: int) -> bytes:
    """A relocatable object whose `entry` calls n undefined functions through R_X86_64_PLT32: the shape
    of a patch with many externals, at any size (gcc takes seconds for the large ones)."""
    text = b"\xe8\x00\x00\x00\x00" * n + b"\xc3"
    strtab = b"\0entry\0" + b"".join(b"ext%d\0" % i for i in range(n))
    symtab = bytes(SYM_SIZE) + struct.pack("<IBBHQQ", 1, 0x12, 0, 1, 0, len(text))   # entry: global func
    name = 7
    for i in range(n):
        symtab += struct.pack("<IBBHQQ", name, 0x10, 0, 0, 0, 0)                      # ext<i>: global, UND
        name += len(b"ext%d" % i) + 1
    rela = b"".join(struct.pack("<QQq", 5 * i + 1, ((i + 2) << 32) | 4, -4) for i in range(n))
    shstrtab = b"\0.text\0.rela.text\0.symtab\0.strtab\0.shstrtab\0"
    parts, offsets, pos = [text, rela, symtab, strtab, shstrtab], [], 64
    for part in parts:
        pos = (pos + 7) & ~7
        offsets.append(pos)
        pos += len(part)
    shoff = (pos + 7) & ~7
    body = bytearray(shoff)
    for part, off in zip(parts, offsets):
        body[off:off + len(part)] = part
    shdrs = bytes(SHDR_SIZE) + b"".join([
        _shdr_bytes(1, SHT_PROGBITS, SHF_ALLOC | SHF_EXECINSTR, offsets[0], len(text), 0, 0, 16, 0),
        _shdr_bytes(7, SHT_RELA, 0x40, offsets[1], len(rela), 3, 1, 8, RELA_SIZE),
        _shdr_bytes(18, SHT_SYMTAB, 0, offsets[2], len(symtab), 4, 1, 8, SYM_SIZE),
        _shdr_bytes(26, SHT_STRTAB, 0, offsets[3], len(strtab), 0, 0, 1, 0),
        _shdr_bytes(34, SHT_STRTAB, 0, offsets[4], len(shstrtab), 0, 0, 1, 0)])
    ehdr = struct.pack("<4sBBBB8sHHIQQQIHHHHHH", b"\x7fELF", 2, 1, 1, 0, bytes(8), 1, X86_MACHINE, 1, 0, 0,
                       shoff, 0, 64, 0, 0, SHDR_SIZE, 6, 5)
    body[:64] = ehdr
    return bytes(body) + shdrs


def synthetic_meta() -> dict:
    meta = patchfile.PatchMeta("x86_64", "/usr/bin/target", "ab" * 20, True, [_replaced("entry", 0x1100)], {},
                               [], [], ["synthetic.c"])
    return json.loads(meta.to_json())


SCALES = [1000, 4000, 16000]   # externals of a scaled case: parsing 16,000 takes ~0.4 s, linking must too


def build_seeds(cc: str | None = None) -> list[Seed]:
    """Real x86-64 patch objects compiled the way `hotpatch build` does, each with plausible metadata."""
    from hotpatch.ops.build import compile_sources
    cc = cc or compiler_for("x86_64")
    if cc is None:
        raise SystemExit("fuzz_patchfile: no x86-64 C compiler here (gcc, or x86_64-linux-gnu-gcc)")
    seeds = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, sources, cflags, replace, symbols, external) in enumerate(SEED_SPECS):
            workdir = os.path.join(tmp, str(i))
            os.mkdir(workdir)
            obj = compile_sources([os.path.join(FIXTURES, s) for s in sources], cc, cflags, workdir)
            meta = patchfile.PatchMeta(
                "x86_64", "/usr/bin/target", "ab" * 20, True,
                [_replaced(fn, 0x1100 + 0x40 * j) for j, fn in enumerate(replace)],
                {k: patchfile.TargetSymbol(off, kind) for k, (kind, off) in symbols.items()},
                external, [], sources)
            seeds.append(Seed(name, json.loads(meta.to_json()), obj))
    seeds.append(Seed("synthetic-64", synthetic_meta(), synthetic_object(64)))
    return seeds


# -- the contract ---------------------------------------------------------------

LIBRARY = {"snprintf": 0x7F00_1234_5670, "printf": 0x7F00_1234_9990, "memcpy": 0x7F00_1230_0040}


@dataclass(frozen=True)
class LinkParams:
    base: int      # where the image is linked (page-aligned user address)
    bias: int      # load bias of the target module: target symbols resolve to bias + offset
    missing: bool  # names neither in the metadata nor in LIBRARY: unresolved (True) or somewhere far


def make_resolver(meta: "patchfile.PatchMeta", params: LinkParams):
    """What apply resolves: the metadata's target symbols at bias + offset, then the libraries."""
    def resolve(name: str) -> int | None:
        target_sym = meta.target_symbols.get(name)
        if target_sym:
            return params.bias + target_sym.offset
        if name in LIBRARY:
            return LIBRARY[name]
        if params.missing:
            return None
        return 0x7E00_0000_0000 + (int.from_bytes(hashlib.sha256(name.encode(errors="replace")).digest()[:4],
                                                  "little") << 4)
    return resolve


def check_case(data: bytes, params: LinkParams) -> None:
    """Decode, parse, lay out and link: returns, or raises."""
    patch = patchfile.decode(data)
    obj = patch.obj
    plan = plan_layout(obj, get_arch(patch.meta.arch), header_size=4096)
    plan.link(params.base, make_resolver(patch.meta, params))


# -- mutation -------------------------------------------------------------------

class ElfLayout:
    """Where the seed's structures lie, computed once from the pristine object."""

    def __init__(self, obj: bytes):
        self.size = len(obj)
        self.e_shoff = struct.unpack_from("<Q", obj, 40)[0]
        self.e_shnum = struct.unpack_from("<H", obj, 60)[0]
        self.e_shstrndx = struct.unpack_from("<H", obj, 62)[0]
        self.shdrs = [self.e_shoff + SHDR_SIZE * i for i in range(self.e_shnum)]
        self.sections = [dict(zip(SHDR, struct.unpack_from("<IIQQQQIIQQ", obj, off))) for off in self.shdrs]
        self.symtab = next(i for i, s in enumerate(self.sections) if s["sh_type"] == SHT_SYMTAB)
        sym = self.sections[self.symtab]
        self.syms = [sym["sh_offset"] + SYM_SIZE * i for i in range(sym["sh_size"] // SYM_SIZE)]
        self.strtab = sym["sh_link"]
        self.relas = [(i, [s["sh_offset"] + RELA_SIZE * k for k in range(s["sh_size"] // RELA_SIZE)])
                      for i, s in enumerate(self.sections) if s["sh_type"] == SHT_RELA and s["sh_size"]]
        self.shdrs_at_end = self.e_shoff + SHDR_SIZE * self.e_shnum == len(obj)


INTERESTING = [0, 1, 2, 3, 4, 7, 8, 15, 16, 23, 24, 25, 63, 64, 0x7F, 0x80, 0xFF, 0x100, 0xFFF, 0x1000,
               0x7FFF, 0x8000, 0xFFFF, 0x10000, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 1 << 32, 1 << 30,
               (1 << 30) + 1, (1 << 30) - 1, 1 << 31, 1 << 40, 1 << 62, 1 << 63, (1 << 63) - 1, (1 << 64) - 1,
               (1 << 64) - 4, (1 << 64) - 8]
BITS = {"B": 8, "H": 16, "I": 32, "Q": 64}


def pick_int(rng: random.Random, bits: int, current: int, extra: list[int] = ()) -> int:
    mode = rng.random()
    if mode < 0.3:
        value = rng.choice(INTERESTING)
    elif mode < 0.55 and extra:
        value = rng.choice(extra)
    elif mode < 0.75:
        value = current + rng.choice([-64, -8, -4, -3, -2, -1, 1, 2, 3, 4, 8, 64, 4096])
    elif mode < 0.85:
        value = current ^ (1 << rng.randrange(bits))
    else:
        value = rng.getrandbits(rng.randint(1, bits))
    return value & ((1 << bits) - 1)


@dataclass
class Case:
    """One input being built: every mutation is recorded in `ops` for the reproducer."""
    seed: Seed
    layout: ElfLayout
    obj: bytearray
    meta: object
    meta_raw: bytes | None = None    # replaces the JSON encoding of `meta`
    version: int = patchfile.VERSION
    meta_len_delta: int = 0
    obj_len_field: int | None = None
    bad_trailer: bool = False
    whole: bytes | None = None       # replaces the whole file
    ops: list[str] = field(default_factory=list)

    def put(self, offset: int, fmt: str, value: int) -> bool:
        if offset < 0 or offset + struct.calcsize("<" + fmt) > len(self.obj):
            return False
        struct.pack_into("<" + fmt, self.obj, offset, value & ((1 << BITS[fmt]) - 1))
        return True

    def get(self, offset: int, fmt: str) -> int:
        if offset < 0 or offset + struct.calcsize("<" + fmt) > len(self.obj):
            return 0
        return struct.unpack_from("<" + fmt, self.obj, offset)[0]

    def encode(self) -> bytes:
        if self.whole is not None:
            return self.whole
        meta = self.meta_raw if self.meta_raw is not None else _dump_json(self.meta)
        obj = bytes(self.obj)
        obj_len = len(obj) if self.obj_len_field is None else self.obj_len_field
        body = struct.pack("<8sIIQ", patchfile.MAGIC, self.version & 0xFFFFFFFF,
                           (len(meta) + self.meta_len_delta) & 0xFFFFFFFF, obj_len & ((1 << 64) - 1)) + meta + obj
        digest = bytearray(hashlib.sha256(body).digest())
        if self.bad_trailer:
            digest[0] ^= 1
        return body + bytes(digest)


DEEP = "\x01DEEP\x01"


def _dump_json(value) -> bytes:
    text = json.dumps(value, sort_keys=True)
    return text.replace(json.dumps(DEEP), "[" * 100_000 + "]" * 100_000).encode()


def mut_ehdr(rng: random.Random, c: Case) -> None:
    name = rng.choice(list(EHDR))
    off, fmt = EHDR[name]
    extra = {"e_shoff": [c.layout.size, c.layout.size - 1, c.layout.size - SHDR_SIZE, c.layout.e_shoff + 1, 64],
             "e_shnum": [0, 1, c.layout.e_shnum - 1, c.layout.e_shnum + 1, 0xFF00, 0xFFFF],
             "e_shstrndx": [0, c.layout.e_shnum, c.layout.symtab, 0xFFFF, 0xFF00],
             "e_type": [0, 2, 3, 4, 0xFE00, 0xFFFF], "e_machine": [0, 3, X86_MACHINE, AARCH64_MACHINE, 0xFFFF],
             "e_shentsize": [0, 40, 63, 65, 128], "EI_CLASS": [0, 1, 3], "EI_DATA": [0, 2, 3]}.get(name, [])
    value = pick_int(rng, BITS[fmt], c.get(off, fmt), extra)
    c.put(off, fmt, value)
    c.ops.append(f"ehdr.{name}={value:#x}")


def _pick_section(rng: random.Random, c: Case) -> int:
    lay = c.layout
    favourites = [lay.symtab, lay.strtab, lay.e_shstrndx] + [i for i, _ in lay.relas]
    favourites += [i for i, s in enumerate(lay.sections) if s["sh_flags"] & SHF_ALLOC]
    return rng.choice(favourites) if rng.random() < 0.7 else rng.randrange(lay.e_shnum)


def mut_shdr(rng: random.Random, c: Case) -> None:
    lay = c.layout
    index = _pick_section(rng, c)
    sec = lay.sections[index]
    name = rng.choices(list(SHDR), weights=[2, 4, 3, 1, 5, 6, 3, 3, 3, 3])[0]
    off, fmt = SHDR[name]
    current = c.get(lay.shdrs[index] + off, fmt)
    if name == "sh_type" and rng.random() < 0.6:
        value = rng.choice(SH_TYPES)
    elif name == "sh_flags" and rng.random() < 0.6:
        value = rng.choice(SH_FLAGS)
    else:
        extra = {
            "sh_offset": [lay.size, lay.size - 1, lay.size + 1, lay.size - sec["sh_size"],
                          lay.size - sec["sh_size"] + 1, lay.e_shoff, 1 << 63, (1 << 64) - sec["sh_size"]]
            + [s["sh_offset"] for s in lay.sections],
            "sh_size": [0, 1, lay.size, lay.size - sec["sh_offset"], lay.size - sec["sh_offset"] + 1, 1 << 30,
                        (1 << 30) + 1, 1 << 28, 1 << 20, (1 << 64) - sec["sh_offset"], sec["sh_size"] - 1,
                        sec["sh_size"] + 1, sec["sh_size"] + RELA_SIZE] + [s["sh_size"] for s in lay.sections],
            "sh_link": [0, lay.e_shnum - 1, lay.e_shnum, lay.e_shnum + 1, lay.symtab, lay.strtab, 0xFFFFFFFF],
            "sh_info": [0, 1, lay.e_shnum - 1, lay.e_shnum, lay.e_shnum + 1, lay.symtab, index, 0xFFFFFFFF]
            + [i for i, s in enumerate(lay.sections) if s["sh_type"] == SHT_NOBITS],
            "sh_addralign": [0, 1, 2, 3, 6, 8, 16, 4096, 1 << 16, 1 << 17, 1 << 30, 1 << 63],
            "sh_entsize": [0, 1, 8, 16, 23, 24, 25, 48, (1 << 64) - 1],
            "sh_name": [0, lay.sections[lay.e_shstrndx]["sh_size"], lay.sections[lay.e_shstrndx]["sh_size"] - 1,
                        0xFFFFFFFF],
        }.get(name, [])
        value = pick_int(rng, BITS[fmt], current, extra)
    c.put(lay.shdrs[index] + off, fmt, value)
    c.ops.append(f"shdr[{index}].{name}={value:#x}")


def mut_sym(rng: random.Random, c: Case) -> None:
    lay = c.layout
    if not lay.syms:
        return
    i = rng.randrange(len(lay.syms))
    name = rng.choices(list(SYM), weights=[2, 4, 1, 5, 4, 1])[0]
    off, fmt = SYM[name]
    current = c.get(lay.syms[i] + off, fmt)
    if name == "st_info":
        value = (rng.choice([0, 1, 2, 10, 13, 15]) << 4) | rng.choice([0, 1, 2, 3, 4, 5, 6, 7, 10, 13, 15])
    elif name == "st_shndx" and rng.random() < 0.7:
        value = rng.choice([0, 0xFFF1, 0xFFF2, 0xFFFF, 0xFF00, 0xFF1F, lay.e_shnum - 1, lay.e_shnum,
                            lay.e_shnum + 1, lay.symtab, lay.strtab])
    else:
        extra = {"st_value": [(1 << 64) - 1, (1 << 63), (1 << 32), 0x7FFFFFFF, 0x80000000, 1 << 30,
                              (1 << 64) - 0x1000],
                 "st_name": [lay.sections[lay.strtab]["sh_size"], lay.sections[lay.strtab]["sh_size"] - 1,
                             0xFFFFFFFF]}.get(name, [])
        value = pick_int(rng, BITS[fmt], current, extra)
    c.put(lay.syms[i] + off, fmt, value)
    c.ops.append(f"sym[{i}].{name}={value:#x}")


def mut_rela(rng: random.Random, c: Case) -> None:
    lay = c.layout
    if not lay.relas:
        return
    sec_index, entries = rng.choice(lay.relas)
    k = rng.randrange(len(entries))
    entry = entries[k]
    target_size = lay.sections[lay.sections[sec_index]["sh_info"]]["sh_size"]
    name = rng.choice(["r_offset", "r_type", "r_sym", "r_addend", "r_info"])
    if name == "r_offset":
        value = pick_int(rng, 64, c.get(entry, "Q"),
                         [0, target_size, target_size - 1, target_size - 2, target_size - 3, target_size - 4,
                          target_size - 5, target_size - 7, target_size - 8, target_size + 1, 1 << 63])
        c.put(entry, "Q", value)
    elif name in ("r_type", "r_sym"):
        info = c.get(entry + 8, "Q")
        r_sym, r_type = info >> 32, info & 0xFFFFFFFF
        if name == "r_type":
            r_type = rng.choice(R_TYPES) if rng.random() < 0.7 else rng.getrandbits(32)
            value = r_type
        else:
            r_sym = rng.choice([0, 1, len(lay.syms) - 1, len(lay.syms), len(lay.syms) + 1, 0xFFFFFFFF,
                                rng.randrange(max(1, len(lay.syms)))])
            value = r_sym
        c.put(entry + 8, "Q", (r_sym << 32) | r_type)
    elif name == "r_addend":
        value = rng.choice([-(1 << 63), (1 << 63) - 1, -4, -5, 0, 1 << 31, -(1 << 31) - 1, (1 << 31) - 1,
                            1 << 32, -(1 << 32), rng.randrange(-(1 << 63), 1 << 63)])
        c.put(entry + 16, "Q", value)
    else:
        value = pick_int(rng, 64, c.get(entry + 8, "Q"))
        c.put(entry + 8, "Q", value)
    c.ops.append(f"rela[{sec_index}][{k}].{name}={value:#x}")


def _shdr_bytes(name: int, sh_type: int, flags: int, offset: int, size: int, link: int, info: int,
                align: int, entsize: int) -> bytes:
    return struct.pack("<IIQQQQIIQQ", name, sh_type, flags, 0, offset, size, link, info, align, entsize)


def mut_add_section(rng: random.Random, c: Case) -> None:
    """Append section headers: a huge bss, a second symbol table, SHT_REL, TLS, constructors..."""
    lay = c.layout
    shoff, shnum = c.get(40, "Q"), c.get(60, "H")
    if not lay.shdrs_at_end or len(c.obj) < 64 or shoff + SHDR_SIZE * shnum != len(c.obj):
        c.put(60, "H", shnum + 1)
        c.ops.append(f"ehdr.e_shnum={shnum + 1:#x}")
        return
    size = len(c.obj)
    kind = rng.choice(["bss", "bss", "many-bss", "symtab", "rel", "rela", "tls", "init", "text", "copy"])
    count = rng.randint(2, 8) if kind == "many-bss" else 1
    if kind in ("bss", "many-bss"):
        big = rng.choice([1 << 20, 1 << 26, 1 << 28, 1 << 29, 1 << 30, (1 << 30) - 1])
        new = _shdr_bytes(1, SHT_NOBITS, SHF_ALLOC | SHF_WRITE, 0, big, 0, 0, 8, 0)
        what = f"{count} x NOBITS alloc size {big:#x}"
    elif kind == "symtab":
        s = lay.sections[lay.symtab]
        new = _shdr_bytes(1, SHT_SYMTAB, 0, s["sh_offset"], s["sh_size"], s["sh_link"], s["sh_info"], 8, 24)
        what = "second SHT_SYMTAB"
    elif kind in ("rel", "rela"):
        rela = lay.sections[lay.relas[0][0]] if lay.relas else lay.sections[lay.symtab]
        target = rng.choice([0, 1, lay.symtab, shnum, rng.randrange(lay.e_shnum)])
        new = _shdr_bytes(1, SHT_REL if kind == "rel" else SHT_RELA, 0x40, rela["sh_offset"],
                          rng.choice([rela["sh_size"], 24, 48, size - rela["sh_offset"]]), lay.symtab,
                          target, 8, rng.choice([24, 24, 16, 0]))
        what = f"extra SHT_{kind.upper()} for section {target}"
    elif kind == "tls":
        new = _shdr_bytes(1, rng.choice([SHT_PROGBITS, SHT_NOBITS]), SHF_ALLOC | SHF_WRITE | SHF_TLS, 64, 8,
                          0, 0, 8, 0)
        what = "TLS section"
    elif kind == "init":
        new = _shdr_bytes(1, rng.choice([14, 15, 16]), SHF_ALLOC | SHF_WRITE, 64, 8, 0, 0, 8, 8)
        what = "constructor section"
    elif kind == "text":
        offset = rng.randrange(size)
        new = _shdr_bytes(1, SHT_PROGBITS, SHF_ALLOC | SHF_EXECINSTR, offset, rng.randrange(size - offset + 2),
                          0, 0, rng.choice([1, 16, 4096]), 0)
        what = f"code section over file bytes {offset:#x}.."
    else:
        src = rng.randrange(lay.e_shnum)
        new = bytes(c.obj[lay.shdrs[src]:lay.shdrs[src] + SHDR_SIZE])
        what = f"copy of section {src}"
    c.obj += new * count
    c.put(60, "H", shnum + count)
    c.ops.append(f"add section(s) [{shnum}..{shnum + count - 1}]: {what}")


def mut_strings(rng: random.Random, c: Case) -> None:
    lay = c.layout
    kind = rng.choice(["unterminate", "inject", "st_name", "sh_name", "fill"])
    table = rng.choice([lay.strtab, lay.e_shstrndx])
    sec = lay.sections[table]
    start, end = sec["sh_offset"], sec["sh_offset"] + sec["sh_size"]
    if kind == "unterminate":
        c.put(end - 1, "B", ord("A"))
        c.ops.append(f"string table {table}: last NUL replaced by 'A'")
    elif kind == "inject":
        pos = rng.randrange(start, max(end, start + 1))
        text = rng.choice([b"\n", b"\r", b"\x1b[31m", b"\xff\xfe", "é".encode(), b"%s%n", b"{}", b"\t",
                           "\u2028".encode(), "\u202e".encode()])
        c.obj[pos:pos + len(text)] = text[:max(0, min(len(text), len(c.obj) - pos))]
        c.ops.append(f"string table {table}+{pos - start:#x}: {text!r}")
    elif kind == "fill":
        byte = rng.choice([b"A", b"\n", b"\xff"])
        c.obj[start:end] = byte * (end - start)
        c.ops.append(f"string table {table} filled with {byte!r}")
    elif kind == "st_name" and lay.syms:
        i = rng.randrange(len(lay.syms))
        value = rng.choice([lay.sections[lay.strtab]["sh_size"], lay.sections[lay.strtab]["sh_size"] - 1,
                            lay.sections[lay.strtab]["sh_size"] + 100, 0xFFFFFFFF])
        c.put(lay.syms[i], "I", value)
        c.ops.append(f"sym[{i}].st_name={value:#x}")
    else:
        i = rng.randrange(lay.e_shnum)
        value = rng.choice([lay.sections[lay.e_shstrndx]["sh_size"], 0xFFFFFFFF, 0x7FFFFFFF])
        c.put(lay.shdrs[i], "I", value)
        c.ops.append(f"shdr[{i}].sh_name={value:#x}")


def mut_bytes(rng: random.Random, c: Case) -> None:
    kind = rng.choice(["flip", "flip", "int", "truncate", "insert", "delete"])
    n = len(c.obj)
    if n == 0:
        return
    if kind == "flip":
        for _ in range(rng.randint(1, 8)):
            pos = rng.randrange(n)
            c.obj[pos] ^= 1 << rng.randrange(8)
        c.ops.append("bit flips")
    elif kind == "int":
        fmt = rng.choice("BHIQ")
        pos = rng.randrange(n)
        value = rng.choice(INTERESTING)
        c.put(pos, fmt, value)
        c.ops.append(f"obj+{pos:#x} {fmt}={value & ((1 << BITS[fmt]) - 1):#x}")
    elif kind == "truncate":
        cut = rng.choice([0, 1, 4, 16, 63, 64, rng.randrange(n), n - 1, n - SHDR_SIZE])
        del c.obj[max(0, cut):]
        c.ops.append(f"obj truncated to {max(0, cut)} bytes")
    elif kind == "insert":
        pos = rng.randrange(n)
        c.obj[pos:pos] = bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 64)))
        c.ops.append(f"bytes inserted at obj+{pos:#x}")
    else:
        pos = rng.randrange(n)
        del c.obj[pos:pos + rng.randint(1, 64)]
        c.ops.append(f"bytes deleted at obj+{pos:#x}")


def _paths(value, prefix=()):
    yield prefix
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _paths(v, prefix + (i,))


WEIRD = [None, True, False, 0, -1, 1, 1 << 31, 1 << 32, (1 << 64) - 1, 1 << 64, 1 << 200, -(1 << 63) - 1,
         1.5, -0.0, float("inf"), float("nan"), "", "x", "\n", "a\nb", "\x1b[2J", "\u0000", "é" * 3, "\u2028",
         "x" * 5000, [], {}, [1], [[1, 2, 3]], [[-1, 4]], [[1.0, 2]], [[True, 1]], {"a": 1}, ["x"], DEEP]


def mut_meta(rng: random.Random, c: Case) -> None:
    paths = list(_paths(c.meta))
    path = rng.choice(paths)
    action = rng.choice(["replace", "replace", "replace", "delete", "add", "number", "number"])
    parent = c.meta
    for key in path[:-1]:
        parent = parent[key]
    label = "meta" + "".join(f"[{k!r}]" for k in path)
    if not path:
        c.meta = rng.choice([[], 1, "x", None, [c.meta]])
        c.ops.append(f"meta root = {json.dumps(c.meta)[:60]}")
        return
    key = path[-1]
    if action == "delete" and isinstance(parent, dict):
        del parent[key]
        c.ops.append(f"{label} deleted")
    elif action == "add" and isinstance(parent, dict):
        parent["unexpected"] = 1
        c.ops.append(f"{label}: extra key 'unexpected'")
    elif action == "add" and isinstance(parent, list):
        parent.append(copy.deepcopy(parent[key]))
        c.ops.append(f"{label}: duplicated")
    elif action == "number":
        value = rng.choice([-1, 0, 1, 8, 9, 63, 64, 65, (1 << 32) - 1, 1 << 32, 1 << 63, (1 << 64) - 1,
                            1 << 64, -(1 << 63), 10 ** 30, -4096, 0x7FFF_FFFF_F000])
        parent[key] = value
        c.ops.append(f"{label}={value}")
    else:
        value = copy.deepcopy(rng.choice(WEIRD))
        parent[key] = value
        c.ops.append(f"{label}={'<deep nesting>' if value == DEEP else repr(value)[:60]}")


def mut_meta_semantic(rng: random.Random, c: Case) -> None:
    """Values that pass the type checks but are hostile: they reach the resolver and the linker."""
    meta = c.meta
    if not isinstance(meta, dict):
        return
    kind = rng.choice(["symbol-offset", "symbol-offset", "new-symbol", "arch", "replace-name", "format"])
    symbols = meta.get("target_symbols")
    entries = [e for e in meta.get("replace", []) if isinstance(e, dict)] \
        if isinstance(meta.get("replace"), list) else []
    if kind == "symbol-offset" and isinstance(symbols, dict) and \
            any(isinstance(v, dict) for v in symbols.values()):
        name = rng.choice(sorted(k for k, v in symbols.items() if isinstance(v, dict)))
        value = rng.choice([-1, -(1 << 47), -(1 << 63), 1 << 63, (1 << 64) - 1, 1 << 64, 1 << 100,
                            (1 << 64) - 0x5555_5555_4000, 0x7FFF_FFFF_FFFF])
        meta["target_symbols"][name]["offset"] = value
        c.ops.append(f"meta target_symbols[{name!r}].offset={value}")
    elif kind == "new-symbol" and isinstance(symbols, dict):
        name = rng.choice(["snprintf", "printf", "_GLOBAL_OFFSET_TABLE_", "compute", ""])
        value = rng.choice([0, -1, 1 << 64, (1 << 64) - 1])
        meta["target_symbols"][name] = {"offset": value, "kind": "func"}
        c.ops.append(f"meta target_symbols[{name!r}]={{offset: {value}}}")
    elif kind == "arch":
        meta["arch"] = rng.choice(["aarch64", "X86_64", "", "riscv64", "x86_64\n", "i386"])
        if rng.random() < 0.5:
            c.put(18, "H", AARCH64_MACHINE if meta["arch"] == "aarch64" else 3)
        c.ops.append(f"meta arch={meta['arch']!r}, e_machine={c.get(18, 'H')}")
    elif kind == "replace-name" and entries:
        entry = rng.choice(entries)
        entry["name"] = rng.choice(["nothere", "", "calls", "helper", "a\nb"])
        c.ops.append(f"meta replace name={entry['name']!r}")
    else:
        meta["format"] = rng.choice([0, 2, -1, 1 << 64])
        c.ops.append(f"meta format={meta['format']}")


def mut_meta_raw(rng: random.Random, c: Case) -> None:
    raw = bytearray(_dump_json(c.meta))
    kind = rng.choice(["truncate", "utf8", "garbage", "tokens", "bigint", "dupkey", "empty"])
    if kind == "truncate":
        del raw[rng.randrange(len(raw) + 1):]
    elif kind == "utf8":
        raw[rng.randrange(len(raw))] = 0xFF
    elif kind == "garbage":
        raw += b"}garbage"
    elif kind == "tokens":
        raw = bytearray(raw.replace(b"true", rng.choice([b"NaN", b"Infinity", b"-Infinity", b"1e999"]), 1))
    elif kind == "bigint":
        raw = bytearray(re.sub(rb"\d+", b"9" * 5000, bytes(raw), count=1))
    elif kind == "dupkey":
        raw = bytearray(raw.replace(b'{"arch": ', b'{"arch": 5, "arch": ', 1))
    else:
        raw = bytearray()
    c.meta_raw = bytes(raw)
    c.ops.append(f"meta JSON text: {kind}")


def mut_container(rng: random.Random, c: Case) -> None:
    kind = rng.choice(["version", "meta_len", "obj_len", "trailer", "garbage", "short"])
    if kind == "version":
        c.version = rng.choice([0, 2, 0xFFFFFFFF])
        c.ops.append(f"container version={c.version}")
    elif kind == "meta_len":
        c.meta_len_delta = rng.choice([-1, 1, 1 << 31, -(1 << 20)])
        c.ops.append(f"container meta_len delta {c.meta_len_delta}")
    elif kind == "obj_len":
        c.obj_len_field = rng.choice([0, len(c.obj) - 1, len(c.obj) + 1, 1 << 30, (1 << 30) + 1, 1 << 63])
        c.ops.append(f"container obj_len={c.obj_len_field}")
    elif kind == "trailer":
        c.bad_trailer = True
        c.ops.append("container checksum wrong")
    elif kind == "garbage":
        c.whole = bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 200)))
        c.ops.append("whole file random bytes")
    else:
        c.whole = patchfile.MAGIC + bytes(rng.randint(0, 60))
        c.ops.append("whole file: magic and zeros")


MUTATORS = [(mut_ehdr, 6), (mut_shdr, 22), (mut_sym, 12), (mut_rela, 14), (mut_add_section, 6),
            (mut_strings, 4), (mut_bytes, 6), (mut_meta, 10), (mut_meta_semantic, 6), (mut_meta_raw, 2),
            (mut_container, 2)]


@dataclass(frozen=True)
class Generated:
    data: bytes
    params: LinkParams
    seed_name: str
    ops: tuple[str, ...]


def generate(seeds: list[Seed], layouts: list[ElfLayout], run_seed: int, number: int) -> Generated:
    """Case `number` of run `run_seed`: a function of these two alone."""
    rng = random.Random(f"hotpatch-fuzz:{run_seed}:{number}")
    funcs, weights = zip(*MUTATORS)
    if rng.random() < 0.002:     # a large object: quadratic work shows as a hang
        n = rng.choice(SCALES)
        seed = Seed(f"synthetic-{n}", synthetic_meta(), synthetic_object(n))
        case = Case(seed, ElfLayout(seed.obj), bytearray(seed.obj), seed.meta, ops=[f"{n} externals"])
        mutations = rng.choice([0, 0, 1])
    else:
        k = rng.randrange(len(seeds))
        seed = seeds[k]
        case = Case(seed, layouts[k], bytearray(seed.obj), copy.deepcopy(seed.meta))
        mutations = rng.choice([1, 1, 1, 2, 2, 3, 4])
    for _ in range(mutations):
        rng.choices(funcs, weights)[0](rng, case)
    params = LinkParams(base=rng.choice([0x5555_5560_0000, 0x7F00_0000_0000, 0x10_0000, 0x7FFF_FFFF_0000]),
                        bias=rng.choice([0x5555_5555_4000, 0, 0x40_0000]), missing=rng.random() < 0.3)
    return Generated(case.encode(), params, seed.name, tuple(case.ops))


# -- running one case, in a worker process --------------------------------------

class CaseTimeout(BaseException):
    """Raised by the alarm: a BaseException, so no `except Exception` on the way can swallow it."""


class ProcessAccess(BaseException):
    """An audit event showed the code under test reaching for a process or the system."""


@dataclass
class Outcome:
    verdict: str              # accepted, refused, or a crash: exception, hang, memory, exit-code, message, access
    kind: str = ""            # refusal kind, or exception type
    message: str = ""
    where: str = ""           # innermost hotpatch frame of a crash
    trace: str = ""
    seconds: float = 0.0
    rss_growth: int = 0

    @property
    def crashed(self) -> bool:
        return self.verdict not in ("accepted", "refused")


_FORBIDDEN_EVENTS = {"os.kill", "os.killpg", "os.system", "os.exec", "os.posix_spawn", "os.fork", "os.forkpty",
                     "subprocess.Popen", "socket.connect", "os.remove", "os.rename", "shutil.rmtree"}
_touched: list[str] = []
_armed = False      # the hook judges only the code under test, not the harness's own /proc reads


def _audit(event: str, args: tuple) -> None:
    if not _armed:
        return
    if event in _FORBIDDEN_EVENTS:
        _touched.append(f"{event}{args!r}"[:200])
        raise ProcessAccess(event)
    if event == "open" and args and isinstance(args[0], (str, bytes)):
        path = os.fsdecode(args[0])
        if path.startswith("/proc/") or (len(args) > 1 and args[1] not in (None, "r", "rb")):
            _touched.append(f"open{args!r}"[:200])
            raise ProcessAccess(f"open {path}")
    if event == "ctypes.dlsym" and len(args) > 1 and re.search(r"ptrace|process_vm", str(args[1])):
        _touched.append(f"{event}{args!r}"[:200])
        raise ProcessAccess(event)


def _reset_peak_rss() -> int:
    """Make the peak resident set (VmHWM) the current one; returns it."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass    # older kernel or no permission: the peak then only measures growth past earlier peaks
    return _peak_rss()


def _peak_rss() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _on_alarm(signum, frame):
    raise CaseTimeout(f"case ran longer than {CASE_TIMEOUT} s")


def _where(tb) -> str:
    """The innermost frame of hotpatch's code, else of the code under test (not the harness's)."""
    frames = []
    while tb is not None:
        code, line = tb.tb_frame.f_code, tb.tb_lineno
        if line is None:    # an instruction without a line of its own: the nearest line before it
            line = max((ln for start, _, ln in code.co_lines() if ln and start <= tb.tb_lasti), default=None)
        frames.append((code, line))
        tb = tb.tb_next
    tested = [f for f in frames if f[0].co_name not in ("run_one", "_on_alarm", "_audit")]
    ours = [f for f in tested if f"{os.sep}hotpatch{os.sep}" in f[0].co_filename] or tested
    if not ours:
        return "?"
    code, line = ours[-1]
    return f"{os.path.relpath(code.co_filename, ROOT)}:{line or '?'} in {code.co_name}"


def _memory_error_in(e: BaseException) -> bool:
    seen = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, MemoryError):
            return True
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return False


def run_one(data: bytes, params: LinkParams) -> Outcome:
    """Run the contract on one input and judge the result."""
    global _armed
    start_rss = _reset_peak_rss()
    started = time.perf_counter()
    _touched.clear()
    signal.setitimer(signal.ITIMER_REAL, CASE_TIMEOUT)
    try:
        try:
            _armed = True
            check_case(data, params)
        finally:
            _armed = False
            signal.setitimer(signal.ITIMER_REAL, 0)
        out = Outcome("accepted")
    except CaseTimeout as e:
        out = Outcome("hang", "CaseTimeout", str(e), _where(e.__traceback__), traceback.format_exc())
    except ProcessAccess as e:
        out = Outcome("access", "ProcessAccess", str(e), _where(e.__traceback__), traceback.format_exc())
    except HotpatchError as e:
        line = e.line()
        if _memory_error_in(e):
            out = Outcome("memory", "MemoryError", line, _where(e.__traceback__), traceback.format_exc())
        elif e.exit_code != EXIT_INVALID:
            out = Outcome("exit-code", type(e).__name__, f"exit {e.exit_code}: {line}", _where(e.__traceback__),
                          traceback.format_exc())
        elif not all(ch == " " or ch.isprintable() for ch in line):
            out = Outcome("message", type(e).__name__, f"refusal is not one printable line: {line[:200]!r}",
                          _where(e.__traceback__), traceback.format_exc())
        else:
            out = Outcome("refused", e.kind, line)
    except MemoryError as e:
        out = Outcome("memory", "MemoryError", str(e), _where(e.__traceback__), traceback.format_exc())
    except Exception as e:
        out = Outcome("exception", type(e).__name__, str(e)[:300], _where(e.__traceback__), traceback.format_exc())
    out.seconds = time.perf_counter() - started
    out.rss_growth = _peak_rss() - start_rss
    if _touched and not out.crashed:
        out = Outcome("access", "ProcessAccess", "; ".join(_touched), "", "")
    if out.rss_growth > MEMORY_LIMIT and out.verdict != "memory":
        out = Outcome("memory", "rss", f"case grew the resident set by {out.rss_growth >> 20} MiB "
                      f"(then: {out.verdict} {out.kind} {out.message[:150]})", out.where, out.trace,
                      out.seconds, out.rss_growth)
    return out


def _limit_memory() -> None:
    with open("/proc/self/statm") as f:
        vm_bytes = int(f.read().split()[0]) * resource.getpagesize()
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = vm_bytes + ADDRESS_SPACE_SLACK
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))


def _worker(conn) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)    # the parent handles ^C
    signal.signal(signal.SIGALRM, _on_alarm)
    _limit_memory()
    sys.addaudithook(_audit)
    while True:
        try:
            msg = conn.recv()
        except EOFError:
            return
        if msg is None:
            return
        try:
            out = run_one(*msg)
        except BaseException as e:   # the harness's own bug: shown, never mistaken for a verdict
            out = Outcome("harness-error", type(e).__name__, str(e)[:300], "", traceback.format_exc())
        conn.send(out)
        if out.verdict == "memory":
            return      # memory may stay fragmented or held: the parent starts a fresh worker


class Worker:
    """One child process running cases; replaced when it hangs, dies or used too much memory."""

    def __init__(self):
        self.ctx = multiprocessing.get_context("fork")
        self._start()

    def _start(self) -> None:
        self.conn, child = self.ctx.Pipe()
        self.proc = self.ctx.Process(target=_worker, args=(child,), daemon=True)
        self.proc.start()
        child.close()

    def run(self, data: bytes, params: LinkParams) -> Outcome:
        try:
            self.conn.send((data, params))
            if self.conn.poll(CASE_TIMEOUT + WORKER_GRACE):
                out = self.conn.recv()
                if out.verdict == "memory":
                    self._restart()
                return out
            self._restart()
            return Outcome("hang", "unresponsive", f"worker did not answer in {CASE_TIMEOUT + WORKER_GRACE:g} s "
                           "(stuck outside Python, where the alarm cannot interrupt)")
        except (EOFError, BrokenPipeError, ConnectionResetError):
            self.proc.join(1)
            code = self.proc.exitcode
            self._restart()
            what = f"signal {-code}" if code is not None and code < 0 else f"exit status {code}"
            return Outcome("died", "WorkerDied", f"worker process died ({what}): killed by the OOM killer, "
                           "a segfault in an extension, or os._exit")

    def _restart(self) -> None:
        self.close()
        self._start()

    def close(self) -> None:
        if self.proc.is_alive():
            try:
                self.conn.send(None)
            except (BrokenPipeError, OSError):
                pass
            self.proc.join(0.5)
        if self.proc.is_alive():
            self.proc.kill()      # our own worker, by its handle
            self.proc.join(5)
        self.conn.close()


# -- the campaign ---------------------------------------------------------------

@dataclass
class Crash:
    outcome: Outcome
    count: int = 0
    examples: list[str] = field(default_factory=list)    # reproducer paths
    first_case: int = -1
    ops: tuple[str, ...] = ()
    seed_name: str = ""


@dataclass
class Report:
    cases: int = 0
    accepted: int = 0
    refused: int = 0
    refusal_kinds: Counter = field(default_factory=Counter)
    crashes: dict[str, Crash] = field(default_factory=dict)
    elapsed: float = 0.0
    slowest: float = 0.0
    slowest_case: str = ""
    max_rss_growth: int = 0
    longest_message: int = 0

    @property
    def crash_count(self) -> int:
        return sum(c.count for c in self.crashes.values())


def normalise(message: str) -> str:
    """One refusal kind per message shape: names and numbers replaced."""
    message = re.sub(r"(metadata says|unsupported machine) .*", r"\1 X", message)
    message = re.sub(r"\(e_type [^)]*\)", "(e_type X)", message)
    message = re.sub(r"(corrupt ELF object: \w+):.*", r"\1", message)
    message = re.sub(r"('([^'\\]|\\.)*'|\"([^\"\\]|\\.)*\")", "'…'", message)
    message = re.sub(r"-?0x[0-9a-fA-F]+|-?\b\d+\b", "N", message)
    message = re.sub(r"(malformed: \w+):.*", r"\1", message)
    message = re.sub(r"(symbol|for|of|to|in|section|at|lies in section) [^\s;:,']+", r"\1 X", message)
    return message[:160]


def _save(number: int, gen: Generated, out: Outcome, run_seed: int) -> str:
    os.makedirs(REPRO_DIR, exist_ok=True)
    stem = os.path.join(REPRO_DIR, f"crash-{out.verdict}-s{run_seed}-c{number}")
    with open(stem + ".hp", "wb") as f:
        f.write(gen.data)
    with open(stem + ".txt", "w") as f:
        f.write(f"case {number} of --seed {run_seed}: rerun with "
                f"`python3 bench/fuzz_patchfile.py --case {number} --seed {run_seed}`\n"
                f"or `python3 bench/fuzz_patchfile.py --replay {stem}.hp --base {gen.params.base:#x} "
                f"--bias {gen.params.bias:#x}{' --missing' if gen.params.missing else ''}`\n"
                f"seed object: {gen.seed_name}\nmutations:\n" + "".join(f"  {op}\n" for op in gen.ops) +
                f"link params: {gen.params}\nverdict: {out.verdict} {out.kind}: {out.message}\n"
                f"where: {out.where}\n\n{out.trace}")
    return stem + ".hp"


def sanity_check(seeds: list[Seed]) -> None:
    """Every unmutated seed must link: otherwise the fuzzer only measures a broken harness."""
    for seed in seeds:
        case = Case(seed, ElfLayout(seed.obj), bytearray(seed.obj), copy.deepcopy(seed.meta))
        check_case(case.encode(), LinkParams(0x5555_5560_0000, 0x5555_5555_4000, False))


def fuzz(cases: int, run_seed: int = 0, jobs: int = 1, seeds: list[Seed] | None = None,
         progress=None) -> Report:
    seeds = seeds if seeds is not None else build_seeds()
    sanity_check(seeds)
    layouts = [ElfLayout(s.obj) for s in seeds]
    report = Report()
    workers = [Worker() for _ in range(max(1, jobs))]
    started = time.monotonic()
    try:
        if jobs <= 1:
            for number in range(cases):
                gen = generate(seeds, layouts, run_seed, number)
                _tally(report, number, gen, workers[0].run(gen.data, gen.params), run_seed)
                if progress and (number + 1) % 1000 == 0:
                    progress(report, number + 1, time.monotonic() - started)
        else:
            _fuzz_parallel(report, workers, seeds, layouts, cases, run_seed, progress, started)
    finally:
        for w in workers:
            w.close()
    report.elapsed = time.monotonic() - started
    return report


def _fuzz_parallel(report, workers, seeds, layouts, cases, run_seed, progress, started) -> None:
    """One thread per worker process; results are tallied in case order, so reports do not depend on --jobs."""
    free = list(workers)
    lock = threading.Lock()

    def task(number: int):
        gen = generate(seeds, layouts, run_seed, number)
        with lock:
            worker = free.pop()
        try:
            return number, gen, worker.run(gen.data, gen.params)
        finally:
            with lock:
                free.append(worker)

    with ThreadPoolExecutor(len(workers)) as pool:
        done = 0
        for number, gen, out in pool.map(task, range(cases)):
            _tally(report, number, gen, out, run_seed)
            done += 1
            if progress and done % 1000 == 0:
                progress(report, done, time.monotonic() - started)


def _tally(report: Report, number: int, gen: Generated, out: Outcome, run_seed: int) -> None:
    report.cases += 1
    if out.seconds > report.slowest:
        report.slowest = out.seconds
        report.slowest_case = f"case {number}: {out.verdict} {out.kind}"
    report.max_rss_growth = max(report.max_rss_growth, out.rss_growth)
    if out.verdict == "accepted":
        report.accepted += 1
    elif out.verdict == "refused":
        report.refused += 1
        report.refusal_kinds[f"{out.kind}: {normalise(out.message)}"] += 1
        report.longest_message = max(report.longest_message, len(out.message))
    else:
        key = "memory: resident set grew too much" if out.kind == "rss" else f"{out.verdict} {out.kind} at {out.where}"
        crash = report.crashes.setdefault(key, Crash(out, first_case=number, ops=gen.ops, seed_name=gen.seed_name))
        crash.count += 1
        if len(crash.examples) < REPROS_PER_CRASH:
            crash.examples.append(_save(number, gen, out, run_seed))


def print_report(report: Report, run_seed: int, file=sys.stdout, kinds: bool = True) -> None:
    p = lambda *a: print(*a, file=file)  # noqa: E731
    rate = report.elapsed / max(report.cases, 1) * 1000
    p(f"cases      {report.cases}  (--seed {run_seed})")
    p(f"accepted   {report.accepted}")
    p(f"refused    {report.refused}  (HotpatchError, exit {EXIT_INVALID}, one line)")
    p(f"crashes    {report.crash_count}  ({len(report.crashes)} distinct)")
    p(f"time       {report.elapsed:.1f} s  ({rate:.2f} ms a case, slowest {report.slowest * 1000:.0f} ms, "
      f"largest resident growth {report.max_rss_growth >> 20} MiB, longest message {report.longest_message} chars)")
    p(f"slowest    {report.slowest_case}")
    p(f"refusal kinds: {len(report.refusal_kinds)} distinct")
    for kind, n in report.refusal_kinds.most_common() if kinds else ():
        p(f"  {n:6d}  {kind}")
    for key, crash in report.crashes.items():
        o = crash.outcome
        p(f"\nCRASH x{crash.count}: {key}")
        p(f"  {o.kind}: {o.message[:300]}")
        p(f"  first: case {crash.first_case}, seed object {crash.seed_name}, mutations: {'; '.join(crash.ops)}")
        for path in crash.examples:
            p(f"  reproducer: {path}")


# -- command line ---------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jobs", type=int, default=1, help="worker processes (default 1)")
    parser.add_argument("--case", type=int, help="rerun this one case in-process and show its traceback")
    parser.add_argument("--replay", metavar="FILE", help="run a saved patch file in-process")
    parser.add_argument("--base", type=lambda s: int(s, 0), default=0x5555_5560_0000)
    parser.add_argument("--bias", type=lambda s: int(s, 0), default=0x5555_5555_4000)
    parser.add_argument("--missing", action="store_true", help="--replay: unknown names do not resolve")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)

    if args.case is not None or args.replay:
        if args.replay:
            with open(args.replay, "rb") as f:
                data, params = f.read(), LinkParams(args.base, args.bias, args.missing)
        else:
            seeds = build_seeds()
            gen = generate(seeds, [ElfLayout(s.obj) for s in seeds], args.seed, args.case)
            data, params = gen.data, gen.params
            print(f"case {args.case}: seed object {gen.seed_name}; {'; '.join(gen.ops)}; {params}")
        started = time.perf_counter()
        try:
            check_case(data, params)
        except HotpatchError as e:
            print(f"refused (exit {e.exit_code}, {e.kind}) in {time.perf_counter() - started:.2f} s: {e.line()!r}")
            return 0 if e.exit_code == EXIT_INVALID else 1
        print(f"accepted in {time.perf_counter() - started:.2f} s")
        return 0

    def progress(report: Report, done: int, elapsed: float) -> None:
        if not args.quiet:
            print(f"  {done} cases, {elapsed:.0f} s, {report.crash_count} crashes", file=sys.stderr, flush=True)

    print(f"hotpatch fuzz: {args.cases} cases, seed {args.seed}, {CASE_TIMEOUT:g} s and "
          f"{MEMORY_LIMIT >> 20} MiB a case, {args.jobs} worker(s)")
    report = fuzz(args.cases, args.seed, args.jobs, progress=progress)
    print_report(report, args.seed)
    return 1 if report.crashes else 0


if __name__ == "__main__":
    sys.exit(main())
