"""`ps`: the processes of a container (its cgroup, recursively), as runc shows them."""

from __future__ import annotations

import json
import subprocess

from runtime.state import RuntimeRoot


def container_pids(root: RuntimeRoot, cid: str) -> list[int]:
    from cgroups.manager import CgroupV2Manager

    state = root.get(cid).load()
    m = CgroupV2Manager(state.cgroup)
    return sorted(m.pids(recursive=True)) if m.exists() else []


def ps(root: RuntimeRoot, cid: str, fmt: str, ps_args: list[str]) -> str:
    """`--format json`: a JSON list of PIDs; `table`: the host's ps(1) output for them."""
    pids = container_pids(root, cid)
    if fmt == "json":
        return json.dumps(pids) + "\n"
    out = subprocess.run(["ps", *(ps_args or ["-ef"])], capture_output=True, text=True, check=True)
    lines = out.stdout.splitlines()
    if not lines:
        return ""
    header = lines[0]
    try:
        col = header.split().index("PID")
    except ValueError:
        raise ValueError("the ps options must keep the PID column") from None
    wanted = {str(p) for p in pids}
    keep = [ln for ln in lines[1:] if len(ln.split()) > col and ln.split()[col] in wanted]
    return "\n".join([header, *keep]) + "\n"
