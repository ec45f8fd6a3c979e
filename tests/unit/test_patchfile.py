"""The patch file reader refuses every truncation and corruption with InvalidPatch, for patches
of both architectures (objects compiled by each one's gcc)."""

import os
import tempfile

import pytest
from harness import FIXTURES, compiler_for

from hotpatch import patchfile
from hotpatch.errors import InvalidPatch
from hotpatch.ops.build import compile_sources


@pytest.fixture(scope="module", params=["x86_64", "aarch64"])
def good(request):
    cc = compiler_for(request.param)
    if cc is None:
        pytest.skip(f"no C compiler for {request.param} here")
    with tempfile.TemporaryDirectory() as d:
        obj = compile_sources([os.path.join(FIXTURES, "patch_work.c")], cc, [], d)
    meta = patchfile.PatchMeta(request.param, "/bin/t", "ab" * 20, True,
                               [patchfile.ReplacedFunction("work", 0x1000, 16, "0" * 64, 0, 16, "", [])],
                               {"counter": patchfile.TargetSymbol(0x4000, "object")}, ["printf"], [], ["p.c"])
    return patchfile.encode(meta, obj)


def test_roundtrip(good):
    p = patchfile.decode(good)
    assert p.meta.replace[0].name == "work" and p.meta.target_symbols["counter"].offset == 0x4000
    assert p.obj.machine == p.meta.arch in ("x86_64", "aarch64")
    assert [f.name for f in p.obj.defined_functions()] == ["work"]


def test_every_truncation_refused(good):
    for n in range(0, len(good), max(1, len(good) // 300)):
        with pytest.raises(InvalidPatch):
            patchfile.decode(good[:n])


def test_corruption_refused(good):
    for pos in range(0, len(good), max(1, len(good) // 200)):
        data = bytearray(good)
        data[pos] ^= 0x01
        with pytest.raises(InvalidPatch):
            patchfile.decode(bytes(data))


def test_bad_metadata_refused(good):
    import hashlib
    import json
    import struct
    p = patchfile.decode(good)
    raw = json.loads(p.meta.to_json())
    for mutate in (lambda m: m["replace"][0].update(size=-1), lambda m: m.update(arch=5),
                   lambda m: m["replace"][0].pop("sha256"), lambda m: m.update(target_symbols=[1])):
        m = json.loads(json.dumps(raw))
        mutate(m)
        meta = json.dumps(m).encode()
        body = struct.pack("<8sIIQ", b"HOTPATCH", 1, len(meta), len(p.obj_bytes)) + meta + p.obj_bytes
        with pytest.raises(InvalidPatch, match="metadata"):
            patchfile.decode(body + hashlib.sha256(body).digest())
