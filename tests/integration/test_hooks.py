"""Hooks run as real processes: stdin, argv, env, fds, cwd, exit status, timeouts."""

import json
import os
import signal
import time

import pytest

from runtime import hooks
from runtime.errors import HookError

SH = "/bin/sh"
BUSYBOX = "/bin/busybox"
STATE = hooks.hook_state("pinnace-test-c1", "creating", bundle="/tmp/b", pid=1234)


def sh(script, *, env=(), timeout=None):
    hook = {"path": SH, "args": ["sh", "-c", script], "env": list(env)}
    if timeout is not None:
        hook["timeout"] = timeout
    return hook


def test_state_json_arrives_on_stdin(scratch_dir):
    out = scratch_dir / "state.json"
    hooks.run_hooks("createRuntime", [sh(f"cat > {out}")], STATE)
    assert json.loads(out.read_text()) == STATE


def test_a_large_state_is_written_whole_and_a_hook_ignoring_stdin_does_not_block(scratch_dir):
    state = dict(STATE, annotations={f"io.example/{i}": "x" * 100 for i in range(3000)})
    out = scratch_dir / "state.json"
    hooks.run_hooks("createRuntime", [sh(f"cat > {out}"), sh("exit 0")], state)
    assert json.loads(out.read_text()) == state


def test_args0_is_argv0_and_path_is_the_executable(scratch_dir):
    # busybox picks its applet from argv[0]: "echo" proves args[0] went through
    out = scratch_dir / "argv"
    hook = {"path": BUSYBOX, "args": ["sh", "-c", f'echo "$0 $1" > {out}', "zero", "one"]}
    hooks.run_hooks("createRuntime", [hook], STATE)
    assert out.read_text() == "zero one\n"


def test_env_is_exactly_the_hooks_own(scratch_dir, monkeypatch):
    monkeypatch.setenv("PINNACE_TEST_RUNTIME_ONLY", "leak")
    out = scratch_dir / "env"
    hooks.run_hooks(
        "createRuntime", [sh(f"env > {out}", env=["A=1", "B=two words", "C=x=y"])], STATE
    )
    seen = dict(line.split("=", 1) for line in out.read_text().splitlines())
    seen.pop("PWD", None)  # dash sets it itself
    assert seen == {"A": "1", "B": "two words", "C": "x=y"}


def test_no_env_means_an_empty_environment(scratch_dir):
    out = scratch_dir / "env"
    hooks.run_hooks("createRuntime", [sh(f"env > {out}")], STATE)
    names = {line.split("=", 1)[0] for line in out.read_text().splitlines()}
    assert names <= {"PWD"}


def test_the_runtimes_fds_are_not_inherited(scratch_dir):
    out = scratch_dir / "fds"
    leaked = os.open(os.devnull, os.O_RDONLY)
    try:
        os.dup2(leaked, 77, inheritable=True)
        script = f"exec {BUSYBOX} ls /proc/self/fd > {out}"
        hooks.run_hooks("createRuntime", [sh(script)], STATE)
    finally:
        os.close(77)
        os.close(leaked)
    fds = {int(n) for n in out.read_text().split()}
    assert fds <= {0, 1, 2, 3}  # 3: ls's own handle on the directory
    assert 77 not in fds


def test_stdin_is_a_pipe(scratch_dir):
    out = scratch_dir / "stdin"
    hooks.run_hooks("createRuntime", [sh(f"readlink /proc/self/fd/0 > {out}")], STATE)
    assert out.read_text().startswith("pipe:")


def test_cwd(scratch_dir):
    out = scratch_dir / "cwd"
    hooks.run_hooks("createRuntime", [sh(f"pwd > {out}")], STATE, cwd=str(scratch_dir))
    assert out.read_text().strip() == str(scratch_dir)


def test_nonzero_exit_names_the_hook_and_carries_stderr():
    bad = sh("echo something went wrong >&2; exit 3")
    with pytest.raises(HookError) as info:
        hooks.run_hooks("createContainer", [sh("true"), bad], STATE)
    err = info.value
    assert (err.kind, err.index, err.path, err.exit_status) == ("createContainer", 1, SH, 3)
    assert err.container == "pinnace-test-c1"
    assert err.stderr == "something went wrong"
    assert not err.timed_out
    assert str(err) == (
        f"createContainer hook #1 ({SH}) exited with status 3: something went wrong"
    )


def test_stdout_is_reported_when_stderr_is_empty():
    with pytest.raises(HookError, match="stdout: only here"):
        hooks.run_hooks("createRuntime", [sh("echo only here; exit 1")], STATE)


def test_stderr_is_cut_to_its_tail():
    script = "i=0; while [ $i -lt 2000 ]; do echo line$i >&2; i=$((i+1)); done; exit 1"
    with pytest.raises(HookError) as info:
        hooks.run_hooks("createRuntime", [sh(script)], STATE)
    assert len(info.value.stderr) <= hooks.TAIL_BYTES
    assert info.value.stderr.endswith("line1999")


def test_killed_by_a_signal():
    with pytest.raises(HookError, match="was killed by SIGKILL") as info:
        hooks.run_hooks("createRuntime", [sh("kill -9 $$")], STATE)
    assert info.value.signal == signal.SIGKILL
    assert info.value.exit_status is None


def test_a_missing_executable_cannot_be_run():
    with pytest.raises(HookError, match="could not be run") as info:
        hooks.run_hooks("prestart", [{"path": "/nonexistent/pinnace-hook"}], STATE)
    assert info.value.path == "/nonexistent/pinnace-hook"
    assert info.value.exit_status is None


def _gone_or_zombie(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def test_timeout_kills_the_whole_process_group(scratch_dir):
    pidfile = scratch_dir / "bg.pid"
    script = f"sleep 1000 & echo $! > {pidfile}; wait"
    with pytest.raises(HookError, match=r"timed out after 1s") as info:
        hooks.run_hooks("createRuntime", [sh(script, timeout=1)], STATE)
    assert info.value.timed_out
    bg = int(pidfile.read_text())
    try:
        deadline = time.monotonic() + 30  # a hang guard: SIGKILL is delivered at once
        while not _gone_or_zombie(bg) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert _gone_or_zombie(bg), "the hook's background child survived the timeout"
    finally:
        if not _gone_or_zombie(bg):
            os.kill(bg, signal.SIGKILL)


def test_a_hook_within_its_timeout_succeeds(scratch_dir):
    out = scratch_dir / "ok"
    hooks.run_hooks("createRuntime", [sh(f"echo ok > {out}", timeout=30)], STATE)
    assert out.read_text() == "ok\n"


def test_first_failure_stops_the_kind(scratch_dir):
    third = scratch_dir / "third"
    with pytest.raises(HookError):
        hooks.run_hooks("createRuntime", [sh("true"), sh("exit 1"), sh(f"touch {third}")], STATE)
    assert not third.exists()


@pytest.mark.parametrize("kind", ["poststart", "poststop"])
def test_post_hook_failures_are_warnings_and_the_rest_still_run(scratch_dir, kind):
    third = scratch_dir / "third"
    warnings: list[str] = []
    failures = hooks.run_hooks(
        kind,
        [sh("true"), sh("echo nope >&2; exit 2"), sh(f"touch {third}")],
        STATE,
        warn=warnings.append,
    )
    assert third.exists()
    assert [(f.kind, f.index, f.exit_status) for f in failures] == [(kind, 1, 2)]
    assert warnings == [f"{kind} hook #1 ({SH}) exited with status 2: nope"]


def test_raise_errors_overrides_the_kinds_default(scratch_dir):
    with pytest.raises(HookError):
        hooks.run_hooks("poststop", [sh("exit 1")], STATE, raise_errors=True)
    failures = hooks.run_hooks(
        "createRuntime", [sh("exit 1")], STATE, raise_errors=False, warn=lambda m: None
    )
    assert len(failures) == 1


def test_parsed_hooks_run_too(scratch_dir):
    out = scratch_dir / "parsed"
    parsed = hooks.parse_hooks({"poststart": [sh(f"echo hi > {out}")]})
    hooks.run_hooks("poststart", parsed["poststart"], STATE)
    assert out.read_text() == "hi\n"
