"""/proc/PID/maps, parsed."""

import bisect
from dataclasses import dataclass

from hotpatch.errors import ProcessGone, TraceError
from hotpatch.process import procfs


@dataclass(frozen=True)
class Mapping:
    start: int
    end: int
    perms: str
    offset: int
    inode: int
    path: str

    @property
    def readable(self) -> bool:
        return self.perms[0] == "r"

    @property
    def executable(self) -> bool:
        return self.perms[2] == "x"

    @property
    def anonymous(self) -> bool:
        return self.inode == 0 and (not self.path or self.path.startswith("[anon:"))

    def __contains__(self, address: int) -> bool:
        return self.start <= address < self.end


def parse_maps(text: str) -> list[Mapping]:
    out = []
    for line in text.splitlines():
        parts = line.split(None, 5)
        if len(parts) < 5:
            continue
        span = parts[0]
        dash = span.find("-")
        out.append(Mapping(int(span[:dash], 16), int(span[dash + 1:], 16), parts[1], int(parts[2], 16),
                           int(parts[4]), parts[5].strip() if len(parts) > 5 else ""))
    return out


def read_maps(pid: int) -> list[Mapping]:
    try:
        return parse_maps(procfs.read(f"/proc/{pid}/maps").decode(errors="surrogateescape"))
    except FileNotFoundError as e:
        raise ProcessGone(f"process {pid} does not exist") from e
    except PermissionError as e:
        raise TraceError(f"cannot read /proc/{pid}/maps: permission denied",
                         "run as root or as the process's owner") from e


class MapIndex:
    """Mappings sorted by start, for lookups by address in O(log n)."""

    def __init__(self, maps: list[Mapping]):
        self.refresh(maps)

    def refresh(self, maps: list[Mapping]) -> None:
        self.maps = sorted(maps, key=lambda m: m.start)
        self.starts = [m.start for m in self.maps]

    def find(self, address: int) -> Mapping | None:
        i = bisect.bisect_right(self.starts, address) - 1
        return self.maps[i] if i >= 0 and address < self.maps[i].end else None
