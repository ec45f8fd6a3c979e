#!/usr/bin/python
"""Ansible module: a hotpatch live patch present or absent on a host's running processes."""

DOCUMENTATION = r"""
module: hotpatch
short_description: Apply or revert a hotpatch live patch on the running processes of a host
description:
  - With I(state=present), applies the patch to every process that maps its binary (or to I(pid) only);
    processes that carry it already are left alone, so a second run reports no change.
  - With I(state=absent), reverts it from every process that carries it (or from I(pid) only).
  - Check mode reports what would change and changes nothing.
options:
  patch:
    description: The patch file on the managed host (its .sig beside it when a trust file is in force).
    required: true
    type: path
  state:
    description: Whether the patch should be applied or not.
    choices: [present, absent]
    default: present
    type: str
  pid:
    description: Only this process (default every process mapping the patch's binary).
    type: int
  name:
    description: Only the processes of this name (as ps shows it) among those mapping the patch's binary.
    type: str
  timeout:
    description: Seconds to wait for threads to leave the functions, per process.
    default: 10
    type: float
  trust:
    description: OpenSSH allowed-signers file (default hotpatch's, /etc/hotpatch/allowed_signers).
    type: path
  executable:
    description: How to run hotpatch on the host.
    default: hotpatch
    type: str
author: hotpatch developers
"""

EXAMPLES = r"""
- name: CVE fix live in every process of the service
  hotpatch.live.hotpatch:
    patch: /var/lib/hotpatch/lua-cve-2022-28805.hp
    state: present
"""

RETURN = r"""
processes:
  description: What happened in each process (pid, outcome, message), from hotpatch's --json report.
  type: list
  returned: changed
"""

import json
import shlex

from ansible.module_utils.basic import AnsibleModule


def run(module, args):
    cmd = shlex.split(module.params["executable"]) + args + ["--json"]
    rc, out, err = module.run_command(cmd)
    try:
        report = json.loads(out) if out.strip() else {}
    except ValueError:
        report = {}
    return rc, report, err


def comm(pid):
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return ""


def main():
    module = AnsibleModule(
        argument_spec=dict(patch=dict(type="path", required=True),
                           state=dict(type="str", default="present", choices=["present", "absent"]),
                           pid=dict(type="int"), name=dict(type="str"), timeout=dict(type="float", default=10.0),
                           trust=dict(type="path"), executable=dict(type="str", default="hotpatch")),
        supports_check_mode=True)
    p = module.params
    rc, status, err = run(module, ["status", "--patch", p["patch"]])
    if rc != 0:
        module.fail_json(msg=status.get("message") or err.strip() or "hotpatch status failed", rc=rc)
    def chosen(pid):
        return (p["pid"] is None or pid == p["pid"]) and (p["name"] is None or comm(pid) == p["name"])

    carried = [c for c in status["carried"] if chosen(c["pid"])]
    missing = [m for m in status["missing"] if chosen(m["pid"])]
    if p["state"] == "present":
        todo = [m["pid"] for m in missing]
        if not todo:
            module.exit_json(changed=False, processes=[], msg="every process carries the patch")
        if module.check_mode:
            module.exit_json(changed=True, processes=[{"pid": pid, "outcome": "would patch"} for pid in todo])
        trust = ["--trust", p["trust"]] if p["trust"] else []
        timeout = ["--timeout", str(p["timeout"])]
        if p["pid"] is not None:
            rc, report, err = run(module, ["apply", str(p["pid"]), p["patch"]] + timeout + trust)
            processes = [{"pid": p["pid"], "outcome": "patched" if rc == 0 else "failed",
                          "message": report.get("message", "")}]
        else:
            name = ["--name", p["name"]] if p["name"] else []
            rc, report, err = run(module, ["apply", "--all-processes", p["patch"]] + name + timeout + trust)
            processes = report.get("processes", [])
    else:
        if not carried:
            module.exit_json(changed=False, processes=[], msg="no process carries the patch")
        if module.check_mode:
            module.exit_json(changed=True, processes=[{"pid": c["pid"], "outcome": "would revert"} for c in carried])
        if p["pid"] is not None:
            rc, report, err = run(module, ["revert", str(p["pid"]), str(carried[0]["id"])])
            processes = [{"pid": p["pid"], "outcome": "reverted" if rc == 0 else "failed",
                          "message": report.get("message", "")}]
        else:
            rc, report, err = run(module, ["revert", "--all-processes", p["patch"]])
            processes = report.get("processes", [])
    if rc != 0:
        module.fail_json(msg=report.get("message") or err.strip() or f"hotpatch exited {rc}", rc=rc,
                         processes=processes)
    module.exit_json(changed=True, processes=processes)


if __name__ == "__main__":
    main()
