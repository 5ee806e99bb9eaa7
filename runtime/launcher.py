"""Install `pinnace-oci`: a compiled front end, and a launcher of the Python runtime.

Engines run pinnace-oci once per verb (create, start, delete...), so its
start-up is paid by every container, three times.

The Python launcher (pinnace-oci.py beside PATH) is pip's console script
without `site`: pip's script starts the venv's Python normally, and `site`
then reads every .pth file in site-packages (~4 ms here; ~12 ms more with
setuptools' default editable finder). The launcher runs the same
`runtime.cli:main` under `python -I -S` and appends to sys.path what `site`
would have: site-packages, then the project directory (which a .pth file
names in an editable install). -I also keeps a root process's imports safe
from the caller's PYTHON* variables and working directory.

PATH itself is runtime/front_end.c, built here with the system's C compiler:
it does `start` and `delete` of a plain container without an interpreter
(CPython's ~8 ms start-up is most of those verbs) and execs the pinnace-oci.py
beside its own real path for everything else (docs/RUNTIME-DESIGN.md, "The
compiled front end"). Without a compiler, PATH is the Python launcher too:
the same runtime, slower to start and delete.

    python -m runtime.launcher [--prefer PYTHON] PATH

writes both (bin/setup does it after every install). The [project.scripts]
entry point stays the portable way in; this file only makes one installation
start faster.

--prefer names another interpreter to run it with when that one has the same
X.Y version (so the venv's compiled extensions fit its ABI) and really starts
the runtime with these paths: a distribution's Python is usually built with
optimisations a self-built one lacks (measured here: the create+start+delete
cycle 114 -> 95 ms with Debian's /usr/bin/python3 over pyenv's build).
"""

from __future__ import annotations

import os
import sys
import sysconfig

TEMPLATE = """\
#!{python} -IS
# pinnace-oci, written by `python -m runtime.launcher`: runtime.cli:main without `site`
# (see runtime/launcher.py). Re-run that command if this Python or its paths change.
import sys
sys.path += {paths!r}
from runtime.cli import main
sys.exit(main())
"""


PYTHON_LAUNCHER = "pinnace-oci.py"  # beside the front end, which execs it (front_end.c)
FRONT_END_SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "front_end.c")
CFLAGS = ("-O2", "-std=gnu11", "-Wall", "-Wextra")


def command() -> list[str]:
    """How a program on this Python runs pinnace-oci: the Python launcher beside the
    interpreter (bin/setup installs it into the venv), else `python -m runtime`. The CRI
    server's exec runs through it: one process per ExecSync, so its start-up is each
    exec's latency, and the front end would only add an exec (it does not do `exec`)."""
    bindir = os.path.dirname(sys.executable)
    for name in (PYTHON_LAUNCHER, "pinnace-oci"):
        script = os.path.join(bindir, name)
        if os.access(script, os.X_OK):
            return [script]
    return [sys.executable, "-m", "runtime"]


def search_path() -> list[str]:
    """site-packages, then the directory holding the `runtime` package: the sys.path
    entries `site` adds for this installation (editable or not), in its order."""
    paths: list[str] = []
    project = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for p in (sysconfig.get_path("purelib"), sysconfig.get_path("platlib"), project):
        if p not in paths:
            paths.append(p)
    return paths


def launcher_text(python: str | None = None) -> str:
    return TEMPLATE.format(python=python or sys.executable, paths=search_path())


def install(path: str, python: str | None = None) -> bool:
    """Write the Python launcher to `path` (atomically, mode 0755) unless it is there
    already. True if it changed."""
    return _replace(path, launcher_text(python).encode())


def _replace(path: str, content: bytes) -> bool:
    try:
        with open(path, "rb") as f:
            if f.read() == content:
                return False
    except FileNotFoundError:
        pass
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(content)
    os.chmod(tmp, 0o755)
    os.replace(tmp, path)
    return True


def build_front_end(path: str, cc: str | None = None) -> str | None:
    """Compile runtime/front_end.c to `path` (it hands over to PYTHON_LAUNCHER beside
    itself). None when done (or already there), else why not: no C compiler, or it
    failed."""
    import shutil
    import subprocess
    import tempfile

    compiler = cc or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        return "no C compiler (cc) on PATH"
    with tempfile.TemporaryDirectory() as scratch:
        out = os.path.join(scratch, "pinnace-oci")
        argv = [compiler, *CFLAGS, "-o", out, FRONT_END_SOURCE]
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
        except (OSError, subprocess.SubprocessError) as exc:
            return f"{compiler} failed: {exc}"
        if done.returncode != 0:
            return f"{compiler} failed: {done.stderr.strip()}"
        with open(out, "rb") as f:
            _replace(path, f.read())
    return None


def usable(python: str) -> bool:
    """`python` has our X.Y and starts runtime.cli with our search path."""
    import subprocess

    probe = (
        f"import sys; sys.path += {search_path()!r}; import runtime.cli; "
        f"sys.exit(sys.version_info[:2] != {tuple(sys.version_info[:2])!r})"
    )
    try:
        done = subprocess.run(
            [python, "-I", "-S", "-c", probe], capture_output=True, timeout=30, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return False
    return done.returncode == 0


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    prefer = None
    if len(args) == 3 and args[0] == "--prefer":
        prefer, args = args[1], args[2:]
    if len(args) != 1 or args[0].startswith("-"):
        print("usage: python -m runtime.launcher [--prefer PYTHON] PATH", file=sys.stderr)
        return 2
    python = (
        prefer
        if prefer
        and os.path.realpath(prefer) != os.path.realpath(sys.executable)
        and usable(prefer)
        else None
    )
    path = args[0]
    install(os.path.join(os.path.dirname(path), PYTHON_LAUNCHER), python)
    why_not = build_front_end(path)
    if why_not is not None:
        print(
            f"pinnace-oci: no compiled front end ({why_not}); {path} is the Python launcher",
            file=sys.stderr,
        )
        install(path, python)
    return 0


if __name__ == "__main__":
    sys.exit(main())
