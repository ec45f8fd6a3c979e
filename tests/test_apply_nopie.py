"""A non-PIE executable (fixed addresses, copy-relocated libc data): apply and revert."""

from conftest import hotpatch


def test_apply_revert_non_pie(cc, spawn):
    binary = cc.program("target.c", "-fno-PIE", "-no-pie")
    patch = cc.patch("patch_target.c", binary)
    t = spawn(binary)
    assert t.symbol_address(binary, "compute") < 0x1000000   # really linked at a fixed low address
    before = t.read_mem(t.symbol_address(binary, "compute"), 32)
    assert t.ask("compute 5") == "11"
    r = hotpatch(str(t.pid), patch)
    assert r.returncode == 0, r.stderr
    assert "near jump" in r.stdout
    assert t.ask("compute 5") == "51"
    assert t.ask("fact 3") == "6000"
    assert t.ask("version") == "v2-patched-calls=1"
    assert hotpatch("revert", str(t.pid)).returncode == 0
    assert t.ask("compute 5") == "11"
    assert t.read_mem(t.symbol_address(binary, "compute"), 32) == before
