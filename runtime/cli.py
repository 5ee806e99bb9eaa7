"""`pinnace-oci`: runc's command grammar, so containerd, CRI-O, podman and conmon can drive it.

Global options come before the verb, as with runc:
  pinnace-oci [--root DIR] [--log FILE] [--log-format text|json] [--debug] VERB ...

This is the hot path of every container start (one process per verb). The
installed `pinnace-oci` is the compiled front end (runtime/front_end.c): it
does `start` and `delete` of a plain container itself, with this grammar for
them, and execs this module's launcher for everything else. Here each verb's
module is imported only when that verb runs, and the verbs an engine runs
for every container (create, start, state, kill, delete, run) are parsed by
`fast_parse` from the tables below: building the argparse parser costs
~7 ms, as much as the verb's own work. argparse (`_parser`) stays the
grammar: anything the fast path does not recognise exactly (help,
abbreviations, clustered flags, errors...) goes to argparse, and
tests/unit/test_cli_fast_path.py checks that both agree.
"""

from __future__ import annotations

import gc
import os
import sys

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (~3 ms)
if TYPE_CHECKING:
    import argparse
    from collections.abc import Sequence
    from typing import Any, NoReturn

SPEC_VERSION = "1.2.0"

# --- the fast path ---------------------------------------------------------------------
# option -> attribute; "values" take an argument, "flags" are store_true.
GLOBAL_VALUES = {
    "--root": "root",
    "--log": "log",
    "--log-format": "log_format",
    "--criu": "criu",
    "--rootless": "rootless",
}
GLOBAL_FLAGS = {"--debug": "debug", "--systemd-cgroup": "systemd_cgroup"}
GLOBAL_DEFAULTS: dict[str, object] = {
    "version": False,
    "root": "/run/pinnace-oci",
    "log": None,
    "log_format": "text",
    "debug": False,
    "systemd_cgroup": False,
    "criu": None,
    "rootless": None,
}
CREATE_VALUES = {
    "-b": "bundle",
    "--bundle": "bundle",
    "--console-socket": "console_socket",
    "--pid-file": "pid_file",
    "--preserve-fds": "preserve_fds",
}
CREATE_FLAGS = {"--no-pivot": "no_pivot", "--no-new-keyring": "no_new_keyring"}
CREATE_DEFAULTS: dict[str, object] = {
    "bundle": ".",
    "console_socket": None,
    "pid_file": None,
    "no_pivot": False,
    "no_new_keyring": False,
    "preserve_fds": 0,
}


class FastVerb:
    """One verb's options and positionals; a trailing "?" marks an optional positional.
    `remainder`: argparse gives everything after the positionals to a REMAINDER argument
    (exec's command), options included, so the fast path declines when anything follows."""

    def __init__(
        self,
        values: dict[str, str],
        flags: dict[str, str],
        positionals: tuple[str, ...],
        defaults: dict[str, object],
        remainder: bool = False,
    ) -> None:
        self.values = values
        self.flags = flags
        self.positionals = positionals
        self.defaults = defaults
        self.remainder = remainder


RUN_FLAGS = {
    "-d": "detach",
    "--detach": "detach",
    "--keep": "keep",
    "--no-subreaper": "no_subreaper",
}
# exec as engines run it: `exec --process FILE [--detach] [--pid-file F] [--console-socket S]
# ID`; the repeatable -e/-g/-c and a command after the id go to argparse.
EXEC_VALUES = {
    "-p": "process",
    "--process": "process",
    "--pid-file": "pid_file",
    "--console-socket": "console_socket",
    "--cwd": "cwd",
    "-u": "user",
    "--user": "user",
    "--preserve-fds": "preserve_fds",
    "--process-label": "process_label",
    "--apparmor": "apparmor",
    "--cgroup": "cgroup",
}
# The repeatable (action="append") options: the fast path leaves them to argparse.
EXEC_REPEATED = frozenset({"-e", "--env", "-g", "--additional-gids", "-c", "--cap"})
EXEC_FLAGS = {
    "-t": "tty",
    "--tty": "tty",
    "-d": "detach",
    "--detach": "detach",
    "--no-new-privs": "no_new_privs",
    "--ignore-paused": "ignore_paused",
}
EXEC_DEFAULTS: dict[str, object] = {
    "process": None,
    "tty": False,
    "detach": False,
    "pid_file": None,
    "console_socket": None,
    "env": [],
    "cwd": None,
    "user": None,
    "additional_gids": [],
    "cap": [],
    "no_new_privs": False,
    "preserve_fds": 0,
    "process_label": None,
    "apparmor": None,
    "ignore_paused": False,
    "cgroup": None,
    "command": [],
}
FAST_VERBS = {
    "create": FastVerb(CREATE_VALUES, CREATE_FLAGS, ("id",), CREATE_DEFAULTS),
    "exec": FastVerb(EXEC_VALUES, EXEC_FLAGS, ("id",), EXEC_DEFAULTS, remainder=True),
    "run": FastVerb(
        CREATE_VALUES,
        CREATE_FLAGS | RUN_FLAGS,
        ("id",),
        CREATE_DEFAULTS | {"detach": False, "keep": False, "no_subreaper": False},
    ),
    "start": FastVerb({}, {}, ("id",), {}),
    "state": FastVerb({}, {}, ("id",), {}),
    "delete": FastVerb({}, {"-f": "force", "--force": "force"}, ("id",), {"force": False}),
    "kill": FastVerb(
        {}, {"-a": "all", "--all": "all"}, ("id", "signal?"), {"all": False, "signal": "SIGTERM"}
    ),
}
INT_VALUES = frozenset({"preserve_fds"})
CHOICES = {"log_format": ("text", "json")}


class ParsedArgs:
    """fast_parse's result: an attribute per option and positional, as on argparse's
    Namespace (types.SimpleNamespace would cost every verb an import)."""

    def __init__(self, values: dict[str, object]) -> None:
        self.__dict__.update(values)

    if TYPE_CHECKING:

        def __getattr__(self, name: str) -> Any: ...


if TYPE_CHECKING:
    Args = argparse.Namespace | ParsedArgs


def fast_parse(argv: Sequence[str]) -> ParsedArgs | None:
    """argv parsed as argparse would, or None for anything beyond the plain forms
    (the caller then asks argparse, which also owns every error message)."""
    out: dict[str, object] = dict(GLOBAL_DEFAULTS)
    i = 0
    while i < len(argv) and argv[i].startswith("-"):
        i = _option(argv, i, GLOBAL_VALUES, GLOBAL_FLAGS, out)
        if i < 0:
            return None
    if i == len(argv) or argv[i] not in FAST_VERBS:
        return None
    verb = FAST_VERBS[argv[i]]
    out["verb"] = argv[i]
    out.update({k: list(v) if isinstance(v, list) else v for k, v in verb.defaults.items()})
    positionals: list[str] = []
    i += 1
    while i < len(argv):
        if verb.remainder and len(positionals) == len(verb.positionals):
            return None
        if argv[i].startswith("-"):
            i = _option(argv, i, verb.values, verb.flags, out)
            if i < 0:
                return None
        else:
            positionals.append(argv[i])
            i += 1
    required = [p for p in verb.positionals if not p.endswith("?")]
    if not len(required) <= len(positionals) <= len(verb.positionals):
        return None
    for name, value in zip(verb.positionals, positionals, strict=False):
        out[name.rstrip("?")] = value
    return ParsedArgs(out)


def _option(
    argv: Sequence[str],
    i: int,
    values: dict[str, str],
    flags: dict[str, str],
    out: dict[str, object],
) -> int:
    """Store the option at argv[i]; the index after it, or -1 if it is not a plain known one."""
    name, eq, value = argv[i].partition("=")
    if name in flags and not eq:
        out[flags[name]] = True
        return i + 1
    if name not in values:
        return -1
    if not eq:
        if i + 1 == len(argv) or argv[i + 1].startswith("-"):
            return -1
        value = argv[i + 1]
        i += 1
    dest = values[name]
    if dest in CHOICES and value not in CHOICES[dest]:
        return -1
    if dest in INT_VALUES:
        if not value.isdigit():
            return -1
        out[dest] = int(value)
    else:
        out[dest] = value
    return i + 1


# --- the full grammar --------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    import argparse

    p = argparse.ArgumentParser(
        prog="pinnace-oci",
        description="Pinnace's OCI runtime: runs OCI bundles as containers, driven like runc.",
    )
    p.add_argument("-v", "--version", action="store_true", help="print the version")
    p.add_argument(
        "--root", default="/run/pinnace-oci", help="state directory (default %(default)s)"
    )
    p.add_argument("--log", help="also write messages to this file (engines read errors there)")
    p.add_argument("--log-format", choices=("text", "json"), default="text")
    p.add_argument("--debug", action="store_true", help="debug output (tracebacks of setup errors)")
    p.add_argument(
        "--systemd-cgroup", action="store_true", help="not supported: cgroupfs paths only"
    )
    p.add_argument("--criu", help=argparse.SUPPRESS)
    p.add_argument("--rootless", help=argparse.SUPPRESS)
    sub = p.add_subparsers(dest="verb", metavar="COMMAND")

    def verb(name: str, help_: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help_, description=help_)

    def create_flags(c: argparse.ArgumentParser) -> None:
        c.add_argument("-b", "--bundle", default=".", help="bundle directory (default: .)")
        c.add_argument("--console-socket", help="unix socket to send the pty master to")
        c.add_argument("--pid-file", help="write the init's PID here")
        c.add_argument("--no-pivot", action="store_true", help="MS_MOVE + chroot, no pivot_root")
        c.add_argument("--no-new-keyring", action="store_true", help="accepted; no keyring is made")
        c.add_argument("--preserve-fds", type=int, default=0, help="pass fds 3..3+N-1 through")
        c.add_argument("id")

    create_flags(verb("create", "create a container (its process waits for `start`)"))
    r = verb("run", "create and start a container, wait for it, delete it")
    create_flags(r)
    r.add_argument("-d", "--detach", action="store_true")
    r.add_argument("--keep", action="store_true", help="do not delete the container after it exits")
    r.add_argument("--no-subreaper", action="store_true", help="accepted for runc compatibility")
    for name, help_ in (
        ("start", "start a created container"),
        ("state", "print the state of a container (JSON)"),
        ("pause", "freeze every process of a container"),
        ("resume", "thaw a paused container"),
    ):
        verb(name, help_).add_argument("id")
    ls = verb("list", "list containers")
    ls.add_argument("-f", "--format", choices=("table", "json"), default="table")
    ls.add_argument("-q", "--quiet", action="store_true", help="ids only")
    k = verb("kill", "send a signal (default SIGTERM) to the container's init")
    k.add_argument("-a", "--all", action="store_true", help="to every process of the container")
    k.add_argument("id")
    k.add_argument("signal", nargs="?", default="SIGTERM")
    d = verb("delete", "delete a stopped container (and with --force, any container)")
    d.add_argument("-f", "--force", action="store_true")
    d.add_argument("id")
    e = verb("exec", "run a process in a running container")
    e.add_argument("-p", "--process", help="process.json (the OCI process object)")
    e.add_argument("-t", "--tty", action="store_true")
    e.add_argument("-d", "--detach", action="store_true")
    e.add_argument("--pid-file")
    e.add_argument("--console-socket")
    e.add_argument("-e", "--env", action="append", default=[])
    e.add_argument("--cwd")
    e.add_argument("-u", "--user", help="UID[:GID]")
    e.add_argument("-g", "--additional-gids", action="append", type=int, default=[])
    e.add_argument("-c", "--cap", action="append", default=[])
    e.add_argument("--no-new-privs", action="store_true")
    e.add_argument("--preserve-fds", type=int, default=0)
    e.add_argument("--process-label", help=argparse.SUPPRESS)
    e.add_argument("--apparmor", help=argparse.SUPPRESS)
    e.add_argument("--ignore-paused", action="store_true", help=argparse.SUPPRESS)
    e.add_argument("--cgroup", help=argparse.SUPPRESS)
    e.add_argument("id")
    e.add_argument("command", nargs=argparse.REMAINDER)
    ps = verb("ps", "list the processes of a container")
    ps.add_argument("-f", "--format", choices=("table", "json"), default="table")
    ps.add_argument("id")
    ps.add_argument("ps_args", nargs=argparse.REMAINDER)
    ev = verb("events", "container statistics and OOM events (JSON lines)")
    ev.add_argument("--interval", default="5s", help="between stats events (default 5s)")
    ev.add_argument("--stats", action="store_true", help="one stats event, then exit")
    ev.add_argument("id")
    u = verb("update", "change a container's resources")
    u.add_argument("-r", "--resources", help='linux.resources JSON file ("-" for stdin)')
    for flag in (
        "blkio-weight",
        "cpu-period",
        "cpu-quota",
        "cpu-shares",
        "cpu-rt-period",
        "cpu-rt-runtime",
        "cpuset-cpus",
        "cpuset-mems",
        "memory",
        "memory-reservation",
        "memory-swap",
        "pids-limit",
    ):
        u.add_argument(f"--{flag}")
    u.add_argument("id")
    s = verb("spec", "write a default config.json into the bundle")
    s.add_argument("-b", "--bundle", default=".")
    s.add_argument("--rootless", action="store_true")
    verb("features", "print the features this runtime supports (JSON)")
    return p


def _duration(raw: str) -> float:
    units = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
    for suffix in ("ms", "s", "m", "h"):
        if raw.endswith(suffix):
            return float(raw[: -len(suffix)]) * units[suffix]
    return float(raw)


def run_verb(a: Args) -> int:
    from runtime.state import RuntimeRoot

    root = RuntimeRoot(a.root)
    if a.systemd_cgroup and a.verb in ("create", "run", "update", "exec"):
        from runtime.errors import RuntimeFailure

        raise RuntimeFailure(
            "--systemd-cgroup is not supported: Pinnace manages cgroupfs paths "
            "(configure the engine's cgroupfs driver)"
        )
    v = a.verb
    if v in ("create", "run"):
        from runtime.create import CreateOptions, create

        state = create(
            root,
            a.id,
            CreateOptions(a.bundle, a.pid_file, a.console_socket, a.no_pivot, a.preserve_fds),
        )
        if v == "create":
            return 0
        from runtime.start import start

        start(root, a.id)
        if a.detach:
            return 0
        from runtime.exec import wait_forwarding_signals

        code = wait_forwarding_signals(state.pid)
        if not a.keep:
            from runtime.delete import delete

            delete(root, a.id, force=True)
        return code
    if v == "start":
        from runtime.start import start

        start(root, a.id)
    elif v == "state":
        from runtime import jsonio

        cdir = root.get(a.id)
        st = cdir.load()
        print(jsonio.dumps(st.oci(cdir.status(st)), indent=2))
    elif v == "list":
        _list(root, a.format, a.quiet)
    elif v == "kill":
        from runtime.kill import kill, parse_signal

        kill(root, a.id, parse_signal(a.signal), all_processes=a.all)
    elif v == "delete":
        from runtime.delete import delete

        delete(root, a.id, force=a.force)
    elif v in ("pause", "resume"):
        from runtime import pause

        getattr(pause, v)(root, a.id)
    elif v == "exec":
        from runtime.exec import ExecOptions, exec_in

        command = a.command[1:] if a.command[:1] == ["--"] else a.command
        exec_opts = ExecOptions(
            process_file=a.process,
            args=command,
            tty=a.tty,
            detach=a.detach,
            pid_file=a.pid_file,
            console_socket=a.console_socket,
            env=a.env,
            cwd=a.cwd,
            user=a.user,
            caps=a.cap,
            no_new_privs=a.no_new_privs,
            preserve_fds=a.preserve_fds,
            additional_gids=a.additional_gids,
        )
        return exec_in(root, a.id, exec_opts)
    elif v == "ps":
        from runtime.ps import ps

        args = a.ps_args[1:] if a.ps_args[:1] == ["--"] else a.ps_args
        sys.stdout.write(ps(root, a.id, a.format, args))
    elif v == "events":
        from runtime.events import events

        gc.enable()
        events(root, a.id, stats_once=a.stats, interval=_duration(a.interval))
    elif v == "update":
        from runtime.update import FLAG_PATHS, update

        flags = {name: getattr(a, name) for name in FLAG_PATHS}
        update(root, a.id, resources_file=a.resources, flags=flags)
    elif v == "spec":
        _spec(a.bundle, a.rootless)
    elif v == "features":
        from runtime.features import features_json

        print(features_json())
    return 0


def _list(root: object, fmt: str, quiet: bool) -> None:
    import json

    from runtime.state import RuntimeRoot

    assert isinstance(root, RuntimeRoot)
    rows = []
    for cdir in root.all():
        try:
            st = cdir.load()
        except Exception:
            continue
        rows.append(st.oci(cdir.status(st)))
    if quiet:
        for r in rows:
            print(r["id"])
    elif fmt == "json":
        print(json.dumps(rows))
    else:
        print(f"{'ID':<20} {'PID':<8} {'STATUS':<10} {'BUNDLE':<40} {'CREATED':<31} OWNER")
        for r in rows:
            print(
                f"{r['id']:<20} {r['pid']:<8} {r['status']:<10} {r['bundle']:<40} "
                f"{r['created']:<31} {r['owner']}"
            )


def _spec(bundle: str, rootless: bool) -> None:
    import json

    from runtime.defaults import default_config
    from runtime.errors import RuntimeFailure

    path = os.path.join(bundle, "config.json")
    if os.path.exists(path):
        raise RuntimeFailure("File config.json exists. Remove it first.", path=path)
    config = default_config(rootless=rootless)
    with open(path, "x") as f:
        f.write(json.dumps(config, indent="\t") + "\n")


def main(argv: Sequence[str] | None = None) -> None:
    """Run one verb and exit with its status (through `_exit` when run as the program)."""
    if argv is None:
        # As the program, a verb lives for milliseconds: the collector's passes during its
        # imports (~4 ms of create) would find nothing worth freeing. `events` runs as
        # long as the container and turns it back on.
        gc.disable()
    args = sys.argv[1:] if argv is None else argv
    a: Args | None = fast_parse(args)
    if a is None:
        a = _parser().parse_args(args)
    if a.version:
        from pinnace import __version__

        print(f"pinnace-oci version {__version__}\nspec: {SPEC_VERSION}")
        sys.exit(0)
    if not a.verb:
        _parser().print_help()
        sys.exit(1)
    from runtime import log

    log.configure(a.log, a.log_format)
    if a.debug:
        os.environ["PINNACE_OCI_DEBUG"] = "1"
    try:
        code = run_verb(a)
    except KeyboardInterrupt:
        code = 130
    except (OSError, ValueError, RuntimeError, Exception) as exc:
        if a.debug:
            import traceback

            traceback.print_exc()
        log.error(_describe(exc))
        code = 1
    if argv is None:
        _exit(code)
    sys.exit(code)


def _exit(code: int) -> NoReturn:
    """Exit without the interpreter's teardown, which frees every module one by one
    (~4 ms after create). Nothing of ours runs at exit (no atexit handlers, no threads
    left running), so flushing stdout and stderr is all the teardown would do here."""
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except OSError:
        code = code or 120  # what the interpreter's teardown exits with when a flush fails
    os._exit(code)


def _describe(exc: BaseException) -> str:
    from runtime.errors import RuntimeFailure

    if isinstance(exc, RuntimeFailure) and exc.container and "container" not in str(exc):
        return f"{exc} (container {exc.container})"
    if isinstance(exc, OSError) and exc.filename:
        return f"{exc.strerror or exc}: {exc.filename}"
    return str(exc) or type(exc).__name__
