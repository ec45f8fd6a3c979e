"""elf/filecache.py: a file's parsed view is reused while the file is the same, and parsed again once it is
not (rewritten in place, or replaced by another file as a package upgrade does); failures are never kept."""

import os

import pytest

from hotpatch.elf import filecache


@pytest.fixture(autouse=True)
def empty():
    filecache.clear()
    yield
    filecache.clear()


def counting():
    calls = []

    def parse(path: str) -> bytes:
        calls.append(path)
        with open(path, "rb") as f:
            return f.read()
    return parse, calls


def test_same_file_parsed_once(tmp_path):
    path = tmp_path / "lib.so"
    path.write_bytes(b"one")
    parse, calls = counting()
    assert filecache.parsed(str(path), parse) == b"one"
    assert filecache.parsed(str(path), parse) == b"one"
    assert len(calls) == 1
    link = tmp_path / "link"   # another name for the same file (as /proc/PID/map_files is): the same view
    os.symlink(path, link)
    assert filecache.parsed(str(link), parse) == b"one" and len(calls) == 1


def test_changed_file_parsed_again(tmp_path):
    path = tmp_path / "lib.so"
    path.write_bytes(b"one")
    parse, calls = counting()
    filecache.parsed(str(path), parse)
    path.write_bytes(b"three")                    # rewritten in place: size and mtime differ
    assert filecache.parsed(str(path), parse) == b"three"
    before = os.stat(path)
    path.write_bytes(b"seven")                   # same size, and the mtime set back: the ctime tells
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert filecache.parsed(str(path), parse) == b"seven"
    new = tmp_path / "new"
    new.write_bytes(b"other")
    os.replace(new, path)                        # replaced: another inode
    assert filecache.parsed(str(path), parse) == b"other"
    assert len(calls) == 4


def test_each_parser_its_own_view(tmp_path):
    path = tmp_path / "lib.so"
    path.write_bytes(b"one")
    first, first_calls = counting()
    second, second_calls = counting()
    filecache.parsed(str(path), first)
    filecache.parsed(str(path), second)
    assert len(first_calls) == len(second_calls) == 1


def test_failures_not_kept(tmp_path):
    path = tmp_path / "lib.so"
    path.write_bytes(b"bad")
    attempts = []

    def parse(p: str) -> str:
        attempts.append(p)
        raise ValueError("corrupt")
    for _ in range(2):
        with pytest.raises(ValueError):
            filecache.parsed(str(path), parse)
    assert len(attempts) == 2
    with pytest.raises(FileNotFoundError):   # a missing file: the parser's own error
        filecache.parsed(str(tmp_path / "missing"), lambda p: open(p).read())


def test_bounded(tmp_path):
    parse, calls = counting()
    for i in range(filecache.LIMIT + 10):
        p = tmp_path / f"f{i}"
        p.write_bytes(b"x")
        filecache.parsed(str(p), parse)
    assert len(filecache._views) == filecache.LIMIT
