"""The lines a unified diff touches in the files it produces (the patched side), per file."""

import re

_HUNK = re.compile(r"@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@")


def touched_lines(text: str, strip: int) -> dict[str, set[int]]:
    """{path after removing `strip` leading components: new-file line numbers added, changed, or next to a
    removal}. Files the diff deletes are left out."""
    out: dict[str, set[int]] = {}
    current: set[int] | None = None
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        i += 1
        if line.startswith("+++ "):
            path = line[4:].split("\t")[0].strip()
            current = None if path == "/dev/null" else out.setdefault(_strip(path, strip), set())
            continue
        m = _HUNK.match(line)
        if not m or current is None:
            continue
        old_left = int(m[2]) if m[2] is not None else 1
        new_left = int(m[4]) if m[4] is not None else 1
        n = int(m[3])
        while (old_left > 0 or new_left > 0) and i < len(lines):
            body = lines[i]
            i += 1
            if body.startswith("\\"):
                continue
            kind = body[:1] or " "
            if kind == "+":
                current.add(n)
                n += 1
                new_left -= 1
            elif kind == "-":
                current.add(n)
                old_left -= 1
            else:
                n += 1
                old_left -= 1
                new_left -= 1
    return out


def _strip(path: str, strip: int) -> str:
    parts = path.split("/")
    return "/".join(parts[strip:]) if len(parts) > strip else parts[-1]
