"""`hotpatch build --diff`: a fix as a unified diff against a multi-file project (fixtures/project, built
with its own Makefile) becomes a patch in one command; applied to the running service, the fix shows and
the old behaviour is gone; reverted, the old comes back. What the compiler did with the fix (a static
function inlined into its caller, a header function inlined into callers in two files, a changed string)
is found by comparing objects; references to unchanged data bind to the running program's copies, a
file-local static to its own file's even when another file has one of the same name."""

import difflib
import json
import os
import shutil
import subprocess

import pytest
from harness import ROOT, host_only, hotpatch

from hotpatch.diff.dwarf import read_debug

pytestmark = host_only("build --diff compiles the project with its Makefile (the guest has no compiler)")

PROJECT = os.path.join(ROOT, "fixtures", "project")


def make_diff(src: str, edits: dict[str, list[tuple[str, str]]]) -> str:
    """A unified diff (a/ b/ prefixes, as git and diff -ru write) of textual edits to files of `src`."""
    out = []
    for name, replacements in edits.items():
        path = os.path.join(src, name)
        before = open(path).read() if os.path.exists(path) else ""
        after = before
        for old, new in replacements:
            assert old in after, (name, old)
            after = after.replace(old, new, 1)
        out += difflib.unified_diff(before.splitlines(True), after.splitlines(True), f"a/{name}", f"b/{name}")
    return "".join(out)


def copy_and_make(tmp_path, directory: str, *make: str):
    """(the source under tmp_path/src, a built copy of it under tmp_path/built, `make` run there)."""
    src = tmp_path / "src"
    shutil.copytree(os.path.join(ROOT, "fixtures", directory), src)
    built = tmp_path / "built"
    shutil.copytree(src, built)
    subprocess.run(["make", "-s", *make], cwd=built, check=True, capture_output=True)
    return str(src), built


@pytest.fixture
def project(tmp_path):
    """The project's source, and the service built from it by its Makefile (the running binary)."""
    src, built = copy_and_make(tmp_path, "project")
    return src, str(built / "service")


def build(tmp_path, src: str, binary: str, edits) -> subprocess.CompletedProcess:
    fix = tmp_path / "fix.patch"
    fix.write_text(make_diff(src, edits))
    return hotpatch("build", "--diff", str(fix), "--source", src, "--target", binary,
                    "-o", str(tmp_path / "fix.hp"))


FIX = {"limits.c": [("n <= 100", "n <= 10"), ("x * 3", "x * 4")], "greet.c": [('"hello"', '"hi"')]}


def test_fix_in_two_files(tmp_path, project, spawn):
    src, binary = project
    r = build(tmp_path, src, binary, FIX)
    assert r.returncode == 0, r.stderr
    # scale() is inlined into scaled() and salute() into greet(): their callers are what changed
    assert all(f in r.stdout for f in ("limit_ok", "greet", "scaled")), r.stdout
    info = hotpatch("info", str(tmp_path / "fix.hp"))
    assert "calls (greet.c)" in info.stdout and "calls (limits.c)" in info.stdout, info.stdout
    assert "greet.c: greet (inlines changed salute)" in info.stdout, info.stdout
    assert "limit_ok (changed)" in info.stdout and "scaled_seven (no line of it changed: a callee folded" in info.stdout
    assert "diff:      fix.patch" in info.stdout
    t = spawn(binary)
    assert t.ask("greet bob") == "hello, bob (greeting 1)"
    assert t.ask("ok 50") == "1" and t.ask("scaled 2") == "8" and t.ask("seven") == "21"
    r = hotpatch(str(t.pid), str(tmp_path / "fix.hp"))
    assert r.returncode == 0, r.stderr
    assert t.ask("greet bob") == "hi, bob (greeting 2)"     # greet.c's counter, not limits.c's
    assert t.ask("ok 50") == "0" and t.ask("ok 5") == "1"
    assert t.ask("scaled 2") == "10"
    assert t.ask("seven") == "28"                            # scale(7) was folded into a constant: 21
    assert t.ask("calls") == "3"                             # limits.c's counter went on
    r = hotpatch("revert", str(t.pid))
    assert r.returncode == 0, r.stderr
    assert t.ask("greet bob") == "hello, bob (greeting 3)"
    assert t.ask("ok 50") == "1" and t.ask("scaled 2") == "8" and t.ask("calls") == "4"
    assert t.ask("seven") == "21"


def test_header_function_inlined_into_two_files(tmp_path, project, spawn):
    src, binary = project
    r = build(tmp_path, src, binary, {"util.h": [("n > 16 ? 16 : n", "n > 3 ? 3 : n")]})
    assert r.returncode == 0, r.stderr
    assert "greet" in r.stdout and "scaled" in r.stdout and "limit_ok" not in r.stdout, r.stdout
    t = spawn(binary)
    assert t.ask("greet robert") == "hello, robert (greeting 1)"
    assert hotpatch(str(t.pid), str(tmp_path / "fix.hp")).returncode == 0
    assert t.ask("greet robert") == "hello, rob (greeting 2)"
    assert t.ask("scaled 5") == "18"                          # 5 * 3 + min(5, 3)


def test_new_function_and_new_global(tmp_path, project, spawn):
    src, binary = project
    r = build(tmp_path, src, binary, {"limits.c": [
        ("int version = 1;\n", "int version = 1;\nint limit_max = 20;\n\n"
         "__attribute__((noinline)) static int within(int n)\n{\n    return n <= limit_max;\n}\n"),
        ("return n >= 0 && n <= 100;", "return n >= 0 && within(n);")]})
    assert r.returncode == 0, r.stderr
    t = spawn(binary)
    assert hotpatch(str(t.pid), str(tmp_path / "fix.hp")).returncode == 0
    assert t.ask("ok 20") == "1" and t.ask("ok 21") == "0" and t.ask("calls") == "2"


def test_changed_initial_value_is_refused(tmp_path, project):
    src, binary = project
    r = build(tmp_path, src, binary, {"limits.c": [("int version = 1;", "int version = 2;")]})
    assert r.returncode == 6, r.stderr
    assert "limits.c: the initial value of version changed" in r.stderr
    assert "Traceback" not in r.stderr and not os.path.exists(tmp_path / "fix.hp")


def test_struct_layout_change_is_refused(tmp_path, project):
    src, binary = project
    r = build(tmp_path, src, binary, {"limits.c": [("    long checks;\n    long refused;\n",
                                                    "    long refused;\n    long checks;\n")]})
    assert r.returncode == 6, r.stderr
    assert "limits.c: struct tally changed layout (members moved)" in r.stderr, r.stderr


def test_failures_say_why(tmp_path, project):
    src, binary = project
    fix = tmp_path / "stale.patch"
    fix.write_text(make_diff(src, {"limits.c": [("n <= 100", "n <= 10")]}).replace("n <= 100", "n <= 99"))
    r = hotpatch("build", "--diff", str(fix), "--source", src, "--target", binary, "-o", str(tmp_path / "x.hp"))
    assert r.returncode == 6 and "diff stale.patch does not apply" in r.stderr, r.stderr
    r = build(tmp_path, src, binary, {"limits.c": [("calls++;", "calls++ +;")]})
    assert r.returncode == 6 and "the patched build failed" in r.stderr, r.stderr
    r = build(tmp_path, src, binary, {"limits.c": [("/* gcc folds scale(7) into a constant here */",
                                                    "/* a constant */")]})   # a comment, no line moved
    assert r.returncode == 6 and "changes no function" in r.stderr, r.stderr
    fix = tmp_path / "fix.patch"
    fix.write_text(make_diff(src, FIX))
    r = hotpatch("build", "--diff", str(fix), "--source", src, "--target", binary, "-o", str(tmp_path / "x.hp"),
                 "--build", "make CFLAGS='-O2 -flto'")
    assert r.returncode == 6 and "link-time optimisation (-flto)" in r.stderr, r.stderr
    assert src and open(os.path.join(src, "limits.c")).read() == open(os.path.join(PROJECT, "limits.c")).read()


def test_binary_of_another_build_is_refused(tmp_path, project):
    src, _ = project
    other = tmp_path / "other"
    shutil.copytree(PROJECT, other)
    subprocess.run(["make", "-s", "CFLAGS=-O0 -g"], cwd=other, check=True, capture_output=True)
    r = build(tmp_path, src, str(other / "service"), FIX)
    assert r.returncode == 4, r.stderr
    assert "is not the build of this source" in r.stderr


def test_cpp_method_changed(tmp_path, spawn):
    """A C++ class method, whose new version throws an exception the unchanged caller catches."""
    src, built = copy_and_make(tmp_path, "project_cpp")
    binary = str(built / "service")
    r = build(tmp_path, src, binary, {"account.cc": [("balance_ + 100", "balance_"),
                                                     ('"refused: "', '"no overdraft: "')]})
    assert r.returncode == 0, r.stderr
    assert "_ZN7Account8withdrawEl" in r.stdout, r.stdout
    t = spawn(binary)
    assert t.ask("withdraw 1050") == "-50" and t.ask("withdraw 100") == "refused: 100"
    assert hotpatch(str(t.pid), str(tmp_path / "fix.hp")).returncode == 0
    assert t.ask("withdraw 10") == "no overdraft: 10"      # thrown in patch code, caught in main()
    assert t.ask("withdraw 1") == "no overdraft: 1"
    assert hotpatch("revert", str(t.pid)).returncode == 0
    assert t.ask("withdraw 100") == "refused: 100" and t.ask("withdraw 50") == "-100"


def test_cmake_project(tmp_path, spawn):
    """The same project built by CMake (no Makefile): recognised and driven without --build."""
    src = str(tmp_path / "src")
    shutil.copytree(PROJECT, src)
    os.remove(os.path.join(src, "Makefile"))
    built = tmp_path / "built"
    shutil.copytree(src, built)
    subprocess.run("cmake -S . -B _build -DCMAKE_BUILD_TYPE=RelWithDebInfo && cmake --build _build",
                   shell=True, cwd=built, check=True, capture_output=True)
    binary = str(built / "_build" / "service")
    r = build(tmp_path, src, binary, FIX)
    assert r.returncode == 0, r.stderr
    t = spawn(binary)
    assert t.ask("ok 50") == "1"
    assert hotpatch(str(t.pid), str(tmp_path / "fix.hp")).returncode == 0
    assert t.ask("ok 50") == "0" and t.ask("greet al") == "hi, al (greeting 1)"


def test_two_trees_instead_of_diffs(tmp_path, project, spawn):
    """--orig OLDDIR --patched NEWDIR: the fix as the fixed tree itself; --json; --cflags reach every compile."""
    src, binary = project
    new = tmp_path / "new"
    shutil.copytree(src, new)
    (new / "limits.c").write_text((new / "limits.c").read_text().replace("n <= 100", "n <= 10"))
    kept = tmp_path / "kept"
    r = hotpatch("build", "--orig", src, "--patched", str(new), "--target", binary, "-o",
                 str(tmp_path / "fix.hp"), "--cflags", "-fno-plt", "--keep-tree", str(kept), "--json")
    assert r.returncode == 0, r.stderr
    for build in ("original", "patched"):                       # both compiles of limits.c had it
        (obj,) = (kept / "compiles" / build).glob("*.o")
        assert "-fno-plt" in read_debug(obj.read_bytes()).producer
    report = json.loads(r.stdout)
    assert report["status"] == "built" and report["replaces"] == ["limit_ok"], report
    info = hotpatch("info", str(tmp_path / "fix.hp"))
    assert "limits.c: limit_ok (changed)" in info.stdout and "diff:      src -> new" in info.stdout
    t = spawn(binary)
    assert hotpatch(str(t.pid), str(tmp_path / "fix.hp")).returncode == 0
    assert t.ask("ok 50") == "0" and t.ask("ok 5") == "1"


def test_stripped_binary_with_a_debug_file(tmp_path, project, spawn):
    """The running binary has no .symtab; its debug file is found by build-id (file-local symbols too)."""
    src, binary = project
    debug_dir = tmp_path / "debug"
    build_id = subprocess.run(["readelf", "-n", binary], capture_output=True, text=True).stdout
    build_id = build_id.split("Build ID: ")[1].split()[0]
    target = debug_dir / ".build-id" / build_id[:2] / f"{build_id[2:]}.debug"
    target.parent.mkdir(parents=True)
    subprocess.run(["objcopy", "--only-keep-debug", binary, str(target)], check=True)
    subprocess.run(["strip", "--strip-all", binary], check=True)
    fix = tmp_path / "fix.patch"
    fix.write_text(make_diff(src, FIX))
    r = hotpatch("build", "--diff", str(fix), "--source", src, "--target", binary, "-o", str(tmp_path / "fix.hp"),
                 env={"HOTPATCH_DEBUG_DIRS": str(debug_dir)})
    assert r.returncode == 0, r.stderr
    t = spawn(binary)
    assert hotpatch(str(t.pid), str(tmp_path / "fix.hp"), env={"HOTPATCH_DEBUG_DIRS": str(debug_dir)}).returncode == 0
    assert t.ask("greet al") == "hi, al (greeting 1)" and t.ask("ok 50") == "0"


def test_shared_library_of_the_project(tmp_path, spawn):
    """BINARY is the project's shared library (libcalc.so): the fix lands in it, in the running service."""
    src, built = copy_and_make(tmp_path, "project_lib")
    r = build(tmp_path, src, str(built / "libcalc.so"), {"calc.c": [("cents * rate / 100", "cents * rate / 50")]})
    assert r.returncode == 0, r.stderr
    t = spawn(str(built / "service"))
    assert t.ask("price 100") == "120"
    assert hotpatch(str(t.pid), str(tmp_path / "fix.hp")).returncode == 0
    assert t.ask("price 100") == "140"           # `rate` bound to the library's own static


def test_function_static_and_line_numbers(tmp_path, project, spawn):
    """A function's own static (ticket.0) binds to the running one; a line added above a function that
    uses __LINE__ changes it although none of its lines did: it is replaced and said so."""
    src, binary = project
    r = build(tmp_path, src, binary, {"limits.c": [("return ++ticket;", "ticket += 10;\n    return ticket;"),
                                                   ("int where(void)", "/* moved down a line */\nint where(void)")]})
    assert r.returncode == 0, r.stderr
    info = hotpatch("info", str(tmp_path / "fix.hp")).stdout
    assert "next_ticket (changed)" in info and "ticket.0 (limits.c)" in info, info
    assert "where (no line of it changed" in info, info
    t = spawn(binary)
    line = int(t.ask("where"))
    assert t.ask("ticket") == "1" and t.ask("ticket") == "2"
    assert hotpatch(str(t.pid), str(tmp_path / "fix.hp")).returncode == 0
    assert t.ask("ticket") == "12"                 # the running counter, not a copy starting at 0
    assert int(t.ask("where")) == line + 2         # the function's line moved by the two added lines


def test_non_pie_program(tmp_path, spawn):
    """A non-PIE build: the project's objects address data with absolute 32-bit relocations, so the image
    is mapped in the low 2 GiB, near the program."""
    src = str(tmp_path / "src")
    shutil.copytree(PROJECT, src)
    built = tmp_path / "built"
    shutil.copytree(src, built)
    make = "make CFLAGS='-O2 -g -fno-pie -no-pie'"
    subprocess.run(make, shell=True, cwd=built, check=True, capture_output=True)
    fix = tmp_path / "fix.patch"
    fix.write_text(make_diff(src, FIX))
    out = str(tmp_path / "fix.hp")
    r = hotpatch("build", "--diff", str(fix), "--source", src, "--target", str(built / "service"), "--build", make,
                 "-o", out)
    assert r.returncode == 0, r.stderr
    t = spawn(str(built / "service"))
    r = hotpatch(str(t.pid), out, "--json")
    assert r.returncode == 0, r.stderr
    assert int(json.loads(r.stdout)["image"]["base"], 16) < 1 << 31
    assert t.ask("greet al") == "hi, al (greeting 1)" and t.ask("ok 50") == "0" and t.ask("seven") == "28"


CONFIGURE = """#!/bin/sh
# A configure as autoconf writes them, reduced: probe the compiler (a conftest.c compiled and removed),
# then write the Makefile.
: "${CC:=gcc}"
echo 'int main(void) { return 0; }' > conftest.c
$CC -c conftest.c -o conftest.o && rm -f conftest.c conftest.o || exit 1
sed "s|@CC@|$CC|" Makefile.in > Makefile
"""


def test_configure_project(tmp_path, spawn):
    """A project with a configure script (no Makefile until it runs): recognised and driven without
    --build; the compiler probes configure makes are not taken for the build's compiles."""
    src = tmp_path / "src"
    shutil.copytree(PROJECT, src)
    (src / "Makefile.in").write_text((src / "Makefile").read_text().replace("CC ?= gcc", "CC = @CC@"))
    os.remove(src / "Makefile")
    os.remove(src / "CMakeLists.txt")
    (src / "configure").write_text(CONFIGURE)
    os.chmod(src / "configure", 0o755)
    built = tmp_path / "built"
    shutil.copytree(src, built)
    subprocess.run("./configure && make", shell=True, cwd=built, check=True, capture_output=True)
    r = build(tmp_path, str(src), str(built / "service"), FIX)
    assert r.returncode == 0, r.stderr
    assert all(f in r.stdout for f in ("limit_ok", "greet", "scaled")), r.stdout
    t = spawn(str(built / "service"))
    assert hotpatch(str(t.pid), str(tmp_path / "fix.hp")).returncode == 0
    assert t.ask("ok 50") == "0" and t.ask("greet al") == "hi, al (greeting 1)"


@pytest.mark.skipif(shutil.which("meson") is None, reason="meson is not installed (.ci/run installs it)")
def test_meson_project(tmp_path, spawn):
    """The same project built by Meson and ninja (no Makefile, no CMakeLists.txt)."""
    src = tmp_path / "src"
    shutil.copytree(PROJECT, src)
    os.remove(src / "Makefile")
    os.remove(src / "CMakeLists.txt")
    built = tmp_path / "built"
    shutil.copytree(src, built)
    subprocess.run("meson setup _build --buildtype=debugoptimized && ninja -C _build", shell=True, cwd=built,
                   check=True, capture_output=True)
    r = build(tmp_path, str(src), str(built / "_build" / "service"), FIX)
    assert r.returncode == 0, r.stderr
    t = spawn(str(built / "_build" / "service"))
    assert hotpatch(str(t.pid), str(tmp_path / "fix.hp")).returncode == 0
    assert t.ask("ok 50") == "0" and t.ask("greet al") == "hi, al (greeting 1)"


GENERATED = """CC ?= gcc
CFLAGS ?= -O2 -g
OBJS = main.o greet.o limits.o

service: $(OBJS)
\t$(CC) $(CFLAGS) -Wl,--build-id -o $@ $(OBJS)

# limits.c is generated from limits.c.in; objects are written under a temporary name, then renamed
limits.c: limits.c.in
\tcp limits.c.in limits.c

%.o: %.c util.h
\t$(CC) $(CFLAGS) -c -o $@.tmp $< && mv $@.tmp $@
"""


def test_generated_source_and_renamed_objects(tmp_path, spawn):
    """The fix changes the input a source file is generated from, and the build writes each object under a
    temporary name: the originals come from the build itself with the diff taken back (the generated file
    regenerated), and each object is kept as the compiler wrote it."""
    src = tmp_path / "src"
    shutil.copytree(PROJECT, src)
    os.rename(src / "limits.c", src / "limits.c.in")
    (src / "Makefile").write_text(GENERATED)
    built = tmp_path / "built"
    shutil.copytree(src, built)
    subprocess.run(["make", "-s"], cwd=built, check=True, capture_output=True)
    edits = {"limits.c.in": FIX["limits.c"], "greet.c": FIX["greet.c"]}
    r = build(tmp_path, str(src), str(built / "service"), edits)
    assert r.returncode == 0, r.stderr
    assert all(f in r.stdout for f in ("limit_ok", "greet", "scaled")), r.stdout
    t = spawn(str(built / "service"))
    assert hotpatch(str(t.pid), str(tmp_path / "fix.hp")).returncode == 0
    assert t.ask("ok 50") == "0" and t.ask("greet al") == "hi, al (greeting 1)"


def test_compiler_with_options_in_cc(tmp_path, spawn):
    """CC="gcc -DTALLY_STEP=5": the words after the compiler reach every compile the wrapper makes."""
    src = tmp_path / "src"
    shutil.copytree(PROJECT, src)
    built = tmp_path / "built"
    shutil.copytree(src, built)
    cc = "gcc -DTALLY_STEP=5"
    subprocess.run(["make", "-s", f"CC={cc}"], cwd=built, check=True, capture_output=True)
    fix = tmp_path / "fix.patch"
    fix.write_text(make_diff(str(src), {"limits.c": [("if (n < 0)", "if (n < 1)")]}))
    r = hotpatch("build", "--diff", str(fix), "--source", str(src), "--target", str(built / "service"),
                 "-o", str(tmp_path / "fix.hp"), env={"CC": cc})
    assert r.returncode == 0, r.stderr
    t = spawn(str(built / "service"))
    assert t.ask("tally 3") == "5"
    assert hotpatch(str(t.pid), str(tmp_path / "fix.hp")).returncode == 0
    assert t.ask("tally 3") == "10"                 # still steps of 5: the patch was compiled with -DTALLY_STEP=5
