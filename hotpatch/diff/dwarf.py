"""What `build --diff` reads from an object's DWARF: where each function is written, what it inlined, and
the layout of each named struct.

pyelftools applies an ET_REL object's relocations to its debug sections, so
names, files and lines read as in a linked file. Absent or unreadable debug
information gives None: the comparison itself never needs it.
"""

import io
from dataclasses import dataclass, field

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile


@dataclass
class Function:
    name: str                     # the symbol's name (linkage name for C++)
    file: str
    line: int
    inlined: list[str] = field(default_factory=list)   # functions inlined into it, by name


@dataclass
class Debug:
    producer: str
    functions: dict[str, Function]                     # by symbol name
    declared: dict[str, list[int]]                     # file -> sorted declaration lines of its functions
    structs: dict[str, tuple]                          # name -> (size, ((member, offset), ...))

    def span(self, fn: Function) -> tuple[int, int]:
        """The lines of `fn`'s file up to the next function declared after it there."""
        lines = self.declared.get(fn.file, [])
        after = [n for n in lines if n > fn.line]
        return fn.line, (min(after) - 1 if after else 1 << 30)


def read_debug(data: bytes) -> Debug | None:
    try:
        return _read(data)
    except (ELFError, KeyError, IndexError, ValueError, TypeError, AttributeError, AssertionError):
        return None
    except Exception:   # construct's stream errors on odd DWARF: pyelftools raises a zoo of them
        return None


def producers(path: str) -> list[str]:
    """DW_AT_producer of each compilation unit of an ELF file (its compiler and options); [] without DWARF."""
    try:
        with open(path, "rb") as f:
            elf = ELFFile(f)
            if not elf.has_dwarf_info():
                return []
            out = []
            for cu in elf.get_dwarf_info().iter_CUs():
                top = cu.get_top_DIE()
                if "DW_AT_producer" in top.attributes:
                    out.append(_text(top.attributes["DW_AT_producer"].value))
            return out
    except (OSError, ELFError, KeyError, IndexError, ValueError, TypeError, AttributeError, AssertionError):
        return []
    except Exception:   # construct's stream errors on odd DWARF
        return []


def _text(value) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def _read(data: bytes) -> Debug | None:
    elf = ELFFile(io.BytesIO(data))
    if not elf.has_dwarf_info():
        return None
    dwarf = elf.get_dwarf_info()
    functions: dict[str, Function] = {}
    by_offset: dict[int, Function] = {}
    declared: dict[str, set[int]] = {}
    structs: dict[str, tuple] = {}
    producer = ""
    pending: list[tuple[Function, int]] = []
    unnamed: dict[int, tuple] = {}
    typedefs: list[tuple[str, int]] = []
    for cu in dwarf.iter_CUs():
        top = cu.get_top_DIE()
        producer = producer or _text(top.attributes["DW_AT_producer"].value) \
            if "DW_AT_producer" in top.attributes else producer
        program = dwarf.line_program_for_CU(cu)
        files = [_text(f.name).rsplit("/", 1)[-1] for f in program["file_entry"]] if program else []
        base = 0 if program is not None and program.header.version >= 5 else 1
        for die in cu.iter_DIEs():
            a = die.attributes
            if die.tag == "DW_TAG_subprogram" and "DW_AT_decl_line" in a and "DW_AT_decl_file" in a:
                index = a["DW_AT_decl_file"].value - base
                file = files[index] if 0 <= index < len(files) else "?"
                name = a.get("DW_AT_linkage_name") or a.get("DW_AT_MIPS_linkage_name") or a.get("DW_AT_name")
                if name is None:
                    continue
                fn = Function(_text(name.value), file, a["DW_AT_decl_line"].value)
                functions.setdefault(fn.name, fn)
                by_offset[die.offset] = fn
                declared.setdefault(file, set()).add(fn.line)
            elif die.tag == "DW_TAG_subprogram" and "DW_AT_specification" in a:
                spec = a["DW_AT_specification"].value + cu.cu_offset
                if spec in by_offset:
                    by_offset[die.offset] = by_offset[spec]
            elif die.tag == "DW_TAG_inlined_subroutine" and "DW_AT_abstract_origin" in a:
                owner = die.get_parent()
                while owner is not None and owner.tag != "DW_TAG_subprogram":
                    owner = owner.get_parent()
                if owner is not None and owner.offset in by_offset:
                    pending.append((by_offset[owner.offset], a["DW_AT_abstract_origin"].value + cu.cu_offset))
            elif die.tag in ("DW_TAG_structure_type", "DW_TAG_union_type", "DW_TAG_class_type") \
                    and "DW_AT_byte_size" in a:
                members = tuple((_text(c.attributes["DW_AT_name"].value) if "DW_AT_name" in c.attributes else "",
                                 _member_offset(c)) for c in die.iter_children() if c.tag == "DW_TAG_member")
                if "DW_AT_name" in a:
                    structs.setdefault(_text(a["DW_AT_name"].value), (a["DW_AT_byte_size"].value, members))
                else:   # typedef struct { ... } name_t: known by its typedef
                    unnamed[die.offset] = (a["DW_AT_byte_size"].value, members)
            elif die.tag == "DW_TAG_typedef" and "DW_AT_name" in a and "DW_AT_type" in a:
                typedefs.append((_text(a["DW_AT_name"].value), a["DW_AT_type"].value + cu.cu_offset))
    for name, target in typedefs:
        if target in unnamed:
            structs.setdefault(name, unnamed[target])
    for fn, origin in pending:
        callee = by_offset.get(origin)
        if callee is not None and callee.name not in fn.inlined:
            fn.inlined.append(callee.name)
    return Debug(producer, functions, {f: sorted(lines) for f, lines in declared.items()}, structs)


def _member_offset(die) -> int:
    a = die.attributes
    if "DW_AT_data_bit_offset" in a:
        return a["DW_AT_data_bit_offset"].value
    location = a.get("DW_AT_data_member_location")
    return location.value * 8 if location is not None and isinstance(location.value, int) else -1
