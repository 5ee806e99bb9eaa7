"""pinnace-oci's fast argument path must mean exactly what the argparse grammar means."""

import pytest

from runtime.cli import (
    EXEC_REPEATED,
    FAST_VERBS,
    GLOBAL_FLAGS,
    GLOBAL_VALUES,
    _parser,
    fast_parse,
)

PLAIN = [
    ["create", "c1"],
    ["--root", "/r", "create", "--bundle", "/b", "c1"],
    ["--root=/r", "--log", "/l", "--log-format", "json", "create", "-b", "/b", "c1"],
    [
        "--debug",
        "--systemd-cgroup",
        "create",
        "--bundle=/b",
        "--pid-file",
        "/p",
        "--console-socket",
        "/s",
        "--no-pivot",
        "--no-new-keyring",
        "--preserve-fds",
        "2",
        "c1",
    ],
    ["create", "c1", "--bundle", "/b"],  # argparse takes options after positionals too
    ["create", "--bundle", "", "c1"],
    ["--criu", "x", "--rootless", "true", "start", "c1"],
    ["run", "-d", "--keep", "--no-subreaper", "-b", "/b", "c1"],
    ["run", "--detach", "--bundle", "/b", "--pid-file=/p", "c1"],
    ["start", "c1"],
    ["state", "c1"],
    ["delete", "c1"],
    ["delete", "-f", "c1"],
    ["delete", "--force", "c1"],
    ["kill", "c1"],
    ["kill", "c1", "KILL"],
    ["kill", "--all", "c1", "9"],
    ["kill", "-a", "c1", "SIGTERM"],
    ["--log-format=text", "kill", "c1"],
    ["create", "--pid-file=-x", "c1"],
    ["exec", "--process", "/p.json", "--detach", "--pid-file", "/pid", "c1"],
    ["exec", "-p", "/p.json", "-t", "--console-socket=/s", "c1"],
    ["exec", "--process=/p.json", "--cwd", "/w", "-u", "1:2", "--preserve-fds", "1", "c1"],
    ["exec", "--no-new-privs", "--ignore-paused", "--process", "/p", "c1"],
]


@pytest.mark.parametrize("argv", PLAIN, ids=" ".join)
def test_fast_path_parses_like_argparse(argv):
    fast = fast_parse(argv)
    assert fast is not None, "a plain command line should take the fast path"
    assert vars(fast) == vars(_parser().parse_args(argv))


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["--version"],
        ["-v"],
        ["--help"],
        ["create", "--help"],
        ["list"],
        ["exec", "c1", "ls"],
        ["exec", "--process", "/p", "c1", "-t"],  # REMAINDER: "-t" is the command there
        ["exec", "-e", "A=1", "--process", "/p", "c1"],  # repeatable: argparse
        ["exec", "--process", "/p", "c1", "--", "ls"],
        ["create"],  # missing id: argparse's error
        ["create", "a", "b"],
        ["kill", "c1", "9", "extra"],
        ["kill", "c1", "-9"],
        ["create", "--bund", "/b", "c1"],  # an abbreviation argparse accepts
        ["create", "-b/b", "c1"],
        ["run", "-db", "/b", "c1"],
        ["create", "--bundle"],
        ["create", "--bundle", "--no-pivot", "c1"],
        ["create", "--preserve-fds", "x", "c1"],
        ["--log-format", "xml", "start", "c1"],
        ["start", "--root", "/r", "c1"],  # global options go before the verb
        ["--no-pivot", "create", "c1"],
        ["delete", "--force=1", "c1"],
        ["start", "--", "c1"],
    ],
    ids=lambda a: " ".join(a) or "(none)",
)
def test_everything_else_goes_to_argparse(argv):
    assert fast_parse(argv) is None


def _option_strings(parser):
    values: set[str] = set()
    flags: set[str] = set()
    for action in parser._actions:
        if not action.option_strings or "-h" in action.option_strings:
            continue
        (flags if action.nargs == 0 else values).update(action.option_strings)
    return values, flags


def test_the_tables_cover_the_argparse_options():
    """An option added to _parser() must be added to the fast tables too (or the
    fast path would fill the namespace without it)."""
    parser = _parser()
    values, flags = _option_strings(parser)
    assert values == set(GLOBAL_VALUES)
    assert flags - {"-v", "--version"} == set(GLOBAL_FLAGS)
    sub = next(a for a in parser._actions if a.dest == "verb")
    choices = dict(sub.choices or {})
    for name, verb in FAST_VERBS.items():
        values, flags = _option_strings(choices[name])
        if name == "exec":  # repeatable options decline the fast path
            values -= EXEC_REPEATED
        assert values == set(verb.values), name
        assert flags == set(verb.flags), name
