"""The pure parts of build --diff: unified diff lines, names without compiler numbering, the ELF writer
read back by the object parser, and patch metadata with and without its build --diff fields."""

from hotpatch import patchfile
from hotpatch.diff.compare import normal_name
from hotpatch.diff.unified import touched_lines
from hotpatch.elf.relocatable import parse_relocatable
from hotpatch.elf.writer import SHT_NOBITS, SHT_PROGBITS, OutSection, OutSymbol, write_relocatable

DIFF = """diff --git a/src/x.c b/src/x.c
--- a/src/x.c\t2024-01-01
+++ b/src/x.c\t2024-01-01
@@ -10,3 +10,4 @@ int f(void)
 a
-b
+B
+C
 d
@@ -30,2 +31,1 @@
 e
-f
\\ No newline at end of file
--- /dev/null
+++ b/new.c
@@ -0,0 +1,2 @@
+int g;
+int h;
--- a/gone.c
+++ /dev/null
@@ -1 +0,0 @@
-x
"""


def test_touched_lines():
    assert touched_lines(DIFF, 1) == {"src/x.c": {11, 12, 32}, "new.c": {1, 2}}
    assert touched_lines(DIFF, 2) == {"x.c": {11, 12, 32}, "new.c": {1, 2}}


def test_normal_name():
    assert normal_name("f.constprop.3") == "f.constprop"
    assert normal_name("f.isra.0") == normal_name("f.isra.1")
    assert normal_name("counter.1") == "counter"
    assert normal_name("luaV_concat.part.0") == "luaV_concat.part"
    assert normal_name("main") == "main"


def test_writer_reads_back():
    code = bytes.fromhex("e800000000c3")          # call rel32; ret
    sections = [OutSection(".text.f", SHT_PROGBITS, 0x6, 16, code, relocations=[(1, 4, 1, -4)]),
                OutSection(".bss.v", SHT_NOBITS, 0x3, 8, size=24)]
    symbols = [OutSymbol("f", "func", "global", 0, 0, len(code)), OutSymbol("g", "notype", "global", None),
               OutSymbol("v", "object", "local", 1, 0, 24), OutSymbol("", "section", "local", 0)]
    obj = parse_relocatable(write_relocatable(62, sections, symbols))
    assert obj.machine == "x86_64"
    by_name = {s.name: s for s in obj.symbols if s.name}
    assert by_name["f"].kind == "func" and by_name["f"].bind == "global" and by_name["f"].size == 6
    assert by_name["g"].shndx == "UND" and by_name["v"].bind == "local"
    assert [s.bind for s in obj.symbols[1:]] == sorted((s.bind for s in obj.symbols[1:]),
                                                       key=lambda b: b != "local")   # locals first
    text = next(s for s in obj.sections.values() if s.name == ".text.f")
    bss = next(s for s in obj.sections.values() if s.name == ".bss.v")
    assert text.data == code and bss.sh_size == 24 and bss.data == b""
    (reloc,) = obj.relocations[text.index]
    assert (reloc.r_offset, reloc.r_type, reloc.r_addend) == (1, 4, -4)
    assert obj.symbols[reloc.r_sym].name == "g"


def test_meta_origin_round_trip_and_old_files():
    meta = patchfile.PatchMeta("x86_64", "/bin/x", "ab" * 20, True, [], {}, [], [], ["x.c"],
                               origin={"f": {"file": "x.c", "why": "changed"}},
                               diffs=[{"name": "fix.patch", "sha256": "00" * 32, "text": "+x\n"}])
    again = patchfile.PatchMeta.from_json(meta.to_json())
    assert again.origin == meta.origin and again.diffs == meta.diffs
    old = meta.to_json().replace(b', "origin": {"f": {"file": "x.c", "why": "changed"}}', b"")
    old = patchfile.PatchMeta.from_json(old.replace(b'"diffs": [{"name": "fix.patch", "sha256": "'
                                                    + b"00" * 32 + b'", "text": "+x\\n"}], ', b""))
    assert old.origin == {} and old.diffs == []
