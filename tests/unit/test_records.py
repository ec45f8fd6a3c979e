"""Records read back from a process are not trusted: a malformed, oversized or deeply nested record is no
record (never an exception), and a well-formed one round-trips with its flags."""

import json

import pytest

from hotpatch.live import hostkey
from hotpatch.live import records as R

KEY = bytes(range(32))


def record(**changes) -> R.PatchRecord:
    fields = dict(id=1, patch="fix.hp", patch_sha256="a" * 64, applied_at="2026-12-01T00:00:00+00:00",
                  hotpatch_version="0.1.0", build_id="b" * 40, module="/usr/sbin/x", bias=0x5555_0000_0000,
                  base=0x5555_1000_0000, size=16384, code=[0x5555_1000_1000, 0x5555_1000_2000],
                  functions=[R.SwitchedFunction("f", 0x5555_0000_1000, 0x5555_0000_1004, 0x5555_1000_1000,
                                                "f30f1efa55", "e9f7ff0f10", 48)],
                  eh_frame=[0x5555_1000_0100, 0x5555_1000_0200], trap=0x5555_1000_1ff0,
                  frame_object=0x5555_1000_3000)
    fields.update(changes)
    return R.PatchRecord(**fields)


def header_with(body: bytes, length: int | None = None) -> bytes:
    head = bytearray(R.record_header_prefix(1))
    R._LEN.pack_into(head, R.LENGTH_OFFSET, len(body) if length is None else length)
    return bytes(head) + body


def test_round_trip_with_flags():
    r = record()
    data = bytearray(r.header_bytes(4096, KEY, 42))
    assert R.PatchRecord.from_header(bytes(data)) == r
    R._LEN.pack_into(data, R.FLAGS_OFFSET, R.FLAG_RETIRED | R.FLAG_FRAMES_REGISTERED)
    back = R.PatchRecord.from_header(bytes(data))
    assert back.retired and back.frames_registered


@pytest.mark.parametrize("body", [
    b"[" * 100_000 + b"]" * 100_000,                                     # RecursionError once
    json.dumps({"id": 1}).encode(),                                      # fields missing
    b"\xff\xfe not json",
    json.dumps({**json.loads(json.dumps(R._json_fields(record()))), "id": 1e400}).encode(),   # a float
    json.dumps({**R._json_fields(record()), "base": -1}).encode(),       # out of range
    json.dumps({**R._json_fields(record()), "code": [5, 1]}).encode(),   # backwards
    json.dumps({**R._json_fields(record()), "functions": [
        {**R._json_fields(record())["functions"][0], "saved": "00" * 100, "written": "00" * 100}]}).encode(),
    json.dumps({**R._json_fields(record()), "module": 7}).encode(),
], ids=["nested", "missing", "garbage", "float", "negative", "backwards", "200 saved bytes", "type"])
def test_hostile_records_are_no_records(body):
    assert R.PatchRecord.from_header(header_with(body)) is None


def test_a_claimed_length_beyond_the_bound_reads_nothing():
    body = json.dumps(R._json_fields(record())).encode()
    assert R.PatchRecord.from_header(header_with(body, length=0xFFFF_FFFF)) is None
    assert R.PatchRecord.from_header(header_with(body)) == record()


def test_journal_flags_round_trip_and_leave_the_json_alone():
    r = record(committing=True)
    data = r.header_bytes(4096, KEY, 42)
    back = R.PatchRecord.from_header(data)
    assert back.committing and not back.reverting and R.interrupted(back)
    back.committing, back.reverting = False, True
    assert back.flags() == R.FLAG_REVERTING
    assert data[R.JSON_OFFSET:] == record(committing=False).header_bytes(4096, KEY, 42)[R.JSON_OFFSET:]


def test_a_pending_header_is_no_record():
    head = R.pending_header(3, 8192)
    assert head.startswith(R.MAGIC) and len(head) == R.JSON_OFFSET and b"hotpatch:3" in head
    assert R.PatchRecord.from_header(head + bytes(64)) is None


def test_the_authentication_code_binds_body_image_process_and_key():
    r = record()
    data = r.header_bytes(4096, KEY, 42)
    (length,) = R._LEN.unpack_from(data, R.LENGTH_OFFSET)
    body, code = data[R.JSON_OFFSET:R.JSON_OFFSET + length], data[R.JSON_OFFSET + length:][:hostkey.TAG_SIZE]
    assert hostkey.matches(KEY, 42, r.base, body, code)
    altered = body.replace(b'"saved": "f30f1efa55"', b'"saved": "cccccccccc"')
    assert altered != body and not hostkey.matches(KEY, 42, r.base, altered, code)   # saved bytes changed
    assert not hostkey.matches(KEY, 43, r.base, body, code)                          # another process
    assert not hostkey.matches(KEY, 42, r.base + 4096, body, code)                   # moved
    assert not hostkey.matches(bytes(32), 42, r.base, body, code)                    # another host
    assert not hostkey.matches(None, 42, r.base, body, code)                         # no key here


def test_the_key_is_made_once_and_readable_by_its_owner_only(tmp_path, monkeypatch):
    monkeypatch.setenv("HOTPATCH_KEY_FILE", str(tmp_path / "sub" / "record.key"))
    assert hostkey.load() is None
    key = hostkey.load(create=True)
    assert len(key) == 32 and hostkey.load() == key and hostkey.load(create=True) == key
    assert (tmp_path / "sub" / "record.key").stat().st_mode & 0o777 == 0o600
