"""The patch file: metadata (JSON) and the patch's relocatable object, checksummed.

Layout:  "HOTPATCH" | u32 version | u32 meta_len | u64 obj_len | meta | obj | sha256(all before)
Every field is checked on read; any defect is an InvalidPatch before a target is touched.
"""

import hashlib
import json
import os
import stat
import struct
from dataclasses import asdict, dataclass, field

from hotpatch.elf.relocatable import RelocatableObject, parse_relocatable
from hotpatch.errors import ELFFormatError, InvalidPatch

MAGIC = b"HOTPATCH"
VERSION = 1
_HEADER = struct.Struct("<8sIIQ")
MAX_META = 64 << 20
MAX_OBJ = 64 << 20


@dataclass
class ReplacedFunction:
    name: str
    offset: int          # st_value in the target binary (link-time address)
    size: int            # bytes of the original function
    sha256: str          # of the original bytes [offset, offset+room)
    pad: int             # landing pad kept at the entry (endbr64 / bti c)
    room: int            # bytes from the entry a jump may cover: size plus trailing alignment padding
    head: str            # first bytes, hex: shown when the process differs
    cold: list[list[int]] = field(default_factory=list)  # [offset, size] of .cold parts
    hop: int = 0         # bytes of padding before the entry the jump starts in (a function too short)


IFUNC_SLOT = "ifunc-slot"   # TargetSymbol.kind: `offset` is the GOT slot holding an IFUNC's implementation


@dataclass
class TargetSymbol:
    offset: int
    kind: str


@dataclass
class PatchMeta:
    arch: str
    target_path: str
    target_build_id: str
    target_pie: bool
    replace: list[ReplacedFunction]
    target_symbols: dict[str, TargetSymbol]
    external: list[str]
    new_functions: list[str]
    sources: list[str]
    format: int = VERSION
    # build --diff: each replaced or new function's source file and why it is in; the diffs themselves
    origin: dict[str, dict[str, str]] = field(default_factory=dict)
    diffs: list[dict[str, str]] = field(default_factory=list)
    target_library: bool = False     # a shared library (no PT_INTERP): it may be loaded later, by dlopen
    ifuncs: dict[str, str] = field(default_factory=dict)   # replaced IFUNC -> the implementation replaced

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes) -> "PatchMeta":
        try:
            raw = json.loads(data)
            replace = [ReplacedFunction(**_checked({"hop": 0, **r} if isinstance(r, dict) else r, _REPLACED_TYPES))
                       for r in raw["replace"]]
            symbols = {str(k): TargetSymbol(**_checked(v, {"offset": int, "kind": str}))
                       for k, v in raw["target_symbols"].items()}
            meta = cls(arch=_typed(raw["arch"], str), target_path=_typed(raw["target_path"], str),
                       target_build_id=_typed(raw["target_build_id"], str),
                       target_pie=_typed(raw["target_pie"], bool), replace=replace,
                       target_symbols=symbols,
                       external=[_typed(x, str) for x in raw["external"]],
                       new_functions=[_typed(x, str) for x in raw["new_functions"]],
                       sources=[_typed(x, str) for x in raw["sources"]],
                       format=_typed(raw["format"], int),
                       origin={_typed(k, str): _checked(v, {"file": str, "why": str})
                               for k, v in _typed(raw.get("origin", {}), dict).items()},
                       diffs=[_checked(d, {"name": str, "sha256": str, "text": str})
                              for d in _typed(raw.get("diffs", []), list)],
                       target_library=_typed(raw.get("target_library", False), bool),
                       ifuncs={_typed(k, str): _typed(v, str) for k, v in _typed(raw.get("ifuncs", {}), dict).items()})
        except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as e:
            raise InvalidPatch(f"patch metadata is malformed: {type(e).__name__}: {e}") from e
        for r in meta.replace:
            if not 0 <= r.offset < 1 << 64 or not 0 < r.size < 1 << 32 or not 0 <= r.pad <= 8 \
                    or len(r.sha256) != 64 or not r.size <= r.room <= r.size + 64 or not 0 <= r.hop <= 16:
                raise InvalidPatch(f"patch metadata is malformed: bad entry for {r.name}")
            for c in r.cold:
                if not isinstance(c, list) or len(c) != 2 or \
                        not all(isinstance(x, int) and 0 <= x < 1 << 64 for x in c):
                    raise InvalidPatch(f"patch metadata is malformed: bad .cold range of {r.name}")
        for name, sym in meta.target_symbols.items():
            if not 0 <= sym.offset < 1 << 64:
                raise InvalidPatch(f"patch metadata is malformed: bad offset of {name}")
        return meta


_REPLACED_TYPES = {"name": str, "offset": int, "size": int, "sha256": str, "pad": int,
                   "room": int, "head": str, "cold": list, "hop": int}


def _typed(value, kind):
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise TypeError(f"expected {kind.__name__}, got {type(value).__name__}")
    return value


def _checked(raw: dict, types: dict) -> dict:
    if not isinstance(raw, dict) or set(raw) != set(types):
        raise KeyError(f"fields {sorted(raw) if isinstance(raw, dict) else raw!r}")
    return {k: _typed(raw[k], t) for k, t in types.items()}


@dataclass
class PatchFile:
    meta: PatchMeta
    obj_bytes: bytes
    sha256: str

    _obj: RelocatableObject | None = None

    @property
    def obj(self) -> RelocatableObject:
        if self._obj is None:
            try:
                self._obj = parse_relocatable(self.obj_bytes)
            except ELFFormatError as e:
                raise InvalidPatch(f"patch code is not a valid object: {e}") from e
            if self._obj.machine != self.meta.arch:
                raise InvalidPatch(f"patch code is for {self._obj.machine}, metadata says {self.meta.arch}")
            defined = {s.name for s in self._obj.defined_functions() if s.bind != "local"}
            missing = [r.name for r in self.meta.replace if r.name not in defined]
            if missing:
                raise InvalidPatch(f"patch metadata replaces {missing[0]}, which its code does not define")
        return self._obj


def encode(meta: PatchMeta, obj_bytes: bytes) -> bytes:
    meta_bytes = meta.to_json()
    body = _HEADER.pack(MAGIC, VERSION, len(meta_bytes), len(obj_bytes)) + meta_bytes + obj_bytes
    return body + hashlib.sha256(body).digest()


def decode(data: bytes, name: str = "patch") -> PatchFile:
    if len(data) < _HEADER.size + 32 or data[:8] != MAGIC:
        raise InvalidPatch(f"{name} is not a hotpatch patch file", "build one with `hotpatch build`")
    _, version, meta_len, obj_len = _HEADER.unpack_from(data)
    if version != VERSION:
        raise InvalidPatch(f"{name} has format version {version}; this hotpatch reads version {VERSION}")
    if meta_len > MAX_META or obj_len > MAX_OBJ or _HEADER.size + meta_len + obj_len + 32 != len(data):
        raise InvalidPatch(f"{name} is truncated or has bad section lengths")
    body, digest = data[:-32], data[-32:]
    if hashlib.sha256(body).digest() != digest:
        raise InvalidPatch(f"{name} is corrupt (checksum mismatch)")
    meta = PatchMeta.from_json(data[_HEADER.size:_HEADER.size + meta_len])
    obj = data[_HEADER.size + meta_len:_HEADER.size + meta_len + obj_len]
    return PatchFile(meta, obj, hashlib.sha256(data).hexdigest())


def read(path: str) -> PatchFile:
    return decode(read_bytes(path), path)


def read_bytes(path: str) -> bytes:
    """A patch file's bytes: a regular file, opened without blocking (a FIFO or a device would hang or lie)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except OSError as e:
        raise InvalidPatch(f"cannot read patch file {path}: {e.strerror}") from e
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise InvalidPatch(f"{path} is not a regular file",
                               "give the path of a patch file built by `hotpatch build`")
        if st.st_size > MAX_META + MAX_OBJ + 64:
            raise InvalidPatch(f"{path} is {st.st_size} bytes: too large for a patch file")
        with os.fdopen(fd, "rb", closefd=False) as f:
            return f.read(MAX_META + MAX_OBJ + 64)
    except OSError as e:
        raise InvalidPatch(f"cannot read patch file {path}: {e.strerror}") from e
    finally:
        os.close(fd)
