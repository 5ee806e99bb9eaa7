"""The verbs an engine runs for every container import only what they need.

Each `pinnace-oci` verb is a new process, so its imports are most of its
cost (docs/RUNTIME-DESIGN.md, "Start-up cost"): these modules cost 2-13 ms
each on the development VM and none of them is needed to create, start,
kill or delete a container. The check runs the real verbs on a real
container and reads the runtime process's sys.modules as it exits.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from tests.fixtures.oci import OCIRuntime, run_captured

# stdlib modules that cost milliseconds to import; argparse is the slow CLI path,
# grpc and pyroute2 belong to the CRI server.
FORBIDDEN = frozenset(
    {
        "argparse",
        "collections",
        "contextlib",
        "ctypes",
        "dataclasses",
        "enum",
        "functools",
        "grpc",
        "inspect",
        "json",
        "pathlib",
        "pyroute2",
        "re",
        "selectors",
        "signal",
        "socket",
        "subprocess",
        "tempfile",
        "threading",
        "typing",
    }
)

# Run a verb as pinnace-oci would, then report the modules loaded by the time it exits.
DRIVER = """
import os, sys
report, paths, argv = sys.argv[1], sys.argv[2], sys.argv[3:]
sys.path[:0] = paths.split(os.pathsep)
from runtime.cli import main
try:
    main(argv)
finally:
    with open(report, "w") as f:
        f.write("\\n".join(sorted(sys.modules)))
"""


def loaded_by(oci: OCIRuntime, tmp_path: Path, *args: str) -> set[str]:
    report = tmp_path / "modules"
    top = Path(__file__).resolve().parents[2]
    # As the installed launcher runs it (runtime/launcher.py): -I -S, paths added by hand.
    paths = os.pathsep.join([str(top), sysconfig.get_paths()["purelib"]])
    argv = [sys.executable, "-I", "-S", "-c", DRIVER, str(report), paths]
    argv += ["--root", str(oci.root), *args]
    # output to files, not pipes: a created container's init inherits them (run_captured)
    run_captured(argv, label=f"pinnace-oci {args[0]}", cwd=top, stdin=subprocess.DEVNULL)
    return set(report.read_text().split())


@pytest.mark.parametrize(
    "verb", ["create", "start", "exec", "state", "kill", "delete", "delete a running one"]
)
def test_engine_verbs_stay_off_the_expensive_imports(verb, oci, make_bundle, tmp_path):
    bundle = make_bundle(["sleep", "100"])
    process_file = tmp_path / "process.json"
    process = {"args": ["true"], "env": ["PATH=/bin"], "cwd": "/", "user": {"uid": 0, "gid": 0}}
    process_file.write_text(json.dumps(process))
    steps = {
        "create": ["create", "--bundle", str(bundle), "b1"],
        "start": ["start", "b1"],
        # as containerd's shim and conmon run it: the process as a file
        "exec": ["exec", "--process", str(process_file), "--pid-file", str(tmp_path / "p"), "b1"],
        "state": ["state", "b1"],
        "kill": ["kill", "b1", "KILL"],
        "delete": ["delete", "--force", "b1"],
    }
    if verb == "delete a running one":  # kills, waits for the cgroup to empty, removes it
        del steps["kill"]
        verb = "delete"
    for name, args in steps.items():
        if name == verb:
            modules = loaded_by(oci, tmp_path, *args)
            assert not modules & FORBIDDEN, sorted(modules & FORBIDDEN)
            break
        oci(*args)
    if verb == "state":
        assert json.loads(oci("state", "b1").stdout)["status"] == "running"


def test_run_stays_off_the_expensive_imports(oci, make_bundle, tmp_path):
    """`run` is create, start, a wait and delete in one process."""
    modules = loaded_by(oci, tmp_path, "run", "--bundle", str(make_bundle(["true"])), "r1")
    assert not modules & FORBIDDEN, sorted(modules & FORBIDDEN)
    assert oci.ids() == []


def test_a_cached_seccomp_filter_costs_no_ctypes(oci, make_bundle, tmp_path):
    """Engines pass a profile with every container: once its filter is compiled
    (libseccomp through ctypes), later creates find it in --root/@seccomp and only
    resolve names, through namespaces.ctypes_lite."""
    from runtime.defaults import default_config

    bundle = make_bundle(["sleep", "100"])
    config = json.loads((bundle / "config.json").read_text())
    config["linux"]["seccomp"] = default_config()["linux"]["seccomp"]
    (bundle / "config.json").write_text(json.dumps(config))
    first = loaded_by(oci, tmp_path, "create", "--bundle", str(bundle), "s1")
    assert "ctypes" in first  # compiled: this is the check's control
    second = loaded_by(oci, tmp_path, "create", "--bundle", str(bundle), "s2")
    assert not second & FORBIDDEN, sorted(second & FORBIDDEN)
    for cid in ("s1", "s2"):
        oci("delete", "--force", cid)
