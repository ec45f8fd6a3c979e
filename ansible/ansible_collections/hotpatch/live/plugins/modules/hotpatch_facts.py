#!/usr/bin/python
"""Ansible module: the host's hotpatch status as facts."""

DOCUMENTATION = r"""
module: hotpatch_facts
short_description: Which processes of a host carry which hotpatch live patches
description:
  - Sets the fact C(hotpatch) to C(hotpatch status --json): the processes carrying each patch, and those
    that map a patched binary without the patch.
options:
  executable:
    description: How to run hotpatch on the host.
    default: hotpatch
    type: str
author: hotpatch developers
"""

import json
import shlex

from ansible.module_utils.basic import AnsibleModule


def main():
    module = AnsibleModule(argument_spec=dict(executable=dict(type="str", default="hotpatch")),
                           supports_check_mode=True)
    rc, out, err = module.run_command(shlex.split(module.params["executable"]) + ["status", "--json"])
    if rc != 0:
        module.fail_json(msg=err.strip() or f"hotpatch status exited {rc}", rc=rc)
    module.exit_json(changed=False, ansible_facts={"hotpatch": json.loads(out)})


if __name__ == "__main__":
    main()
