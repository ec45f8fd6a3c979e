"""The daemon's systemd unit: it runs `hotpatch daemon` with the trust file required, keeps the capability
that ptrace needs (and the two for map_files and exec events) and nothing more, and the hardening that
live patching leaves possible."""

import configparser
import os

UNIT = os.path.join(os.path.dirname(__file__), "..", "..", "hotpatch", "data", "hotpatch-daemon.service")


def test_unit():
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str
    unit.read(UNIT)
    service = unit["Service"]
    assert service["ExecStart"].split()[1:3] == ["daemon", "--patch-dir"]
    assert "--trust /etc/hotpatch/allowed_signers" in service["ExecStart"]
    assert set(service["CapabilityBoundingSet"].split()) == {
        "CAP_SYS_PTRACE", "CAP_SYS_ADMIN", "CAP_NET_ADMIN", "CAP_DAC_READ_SEARCH", "CAP_SYS_RESOURCE"}
    assert service["NoNewPrivileges"] == "yes" and service["ProtectSystem"] == "strict"
    assert "@debug" in service["SystemCallFilter"]      # ptrace, process_vm_readv
    assert unit["Unit"]["ConditionPathExists"] == "/etc/hotpatch/allowed_signers"
