"""Threads blocked in read() and nanosleep() keep working across apply and revert:
the read returns the bytes sent later, the sleep lasts its full time."""

from conftest import hotpatch


def test_blocked_read_and_nanosleep(cc, spawn):
    binary = cc.program("blocking.c", "-fPIE", "-pie")
    patch = cc.patch("patch_work.c", binary)
    t = spawn(binary)
    assert t.ask("hello") == "echo hello 8"
    t.send("sleep 1500")
    assert t.readline() == "sleeping"       # the sleeper is inside nanosleep, main inside read
    r = hotpatch(str(t.pid), patch)
    assert r.returncode == 0, r.stderr
    rc, elapsed = t.readline().split()[1:]
    assert rc == "0" and 1500 <= int(elapsed) < 3000, (rc, elapsed)
    assert t.ask("after") == "echo after 1007"   # read() restarted and got the new line

    t.send("sleep 1000")
    assert t.readline() == "sleeping"
    assert hotpatch("revert", str(t.pid)).returncode == 0
    rc, elapsed = t.readline().split()[1:]
    assert rc == "0" and 1000 <= int(elapsed) < 2500, (rc, elapsed)
    assert t.ask("reverted") == "echo reverted 8"
