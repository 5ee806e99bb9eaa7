"""The fast pinnace-oci launcher: which interpreter it names, and that it runs."""

from __future__ import annotations

import subprocess
import sys

from runtime import launcher


def _python_of(path):
    return path.read_text().splitlines()[0].removeprefix("#!").split()[0]


def test_without_a_preference_it_names_this_python(tmp_path):
    out = tmp_path / "pinnace-oci"
    assert launcher.main([str(out)]) == 0
    assert _python_of(out) == sys.executable
    done = subprocess.run([str(out), "--version"], capture_output=True, text=True, check=False)
    assert done.returncode == 0 and "pinnace-oci version" in done.stdout


def test_an_unusable_preference_is_ignored(tmp_path):
    fake = tmp_path / "python9"
    fake.write_text("#!/bin/sh\nexit 1\n")
    fake.chmod(0o755)
    out = tmp_path / "pinnace-oci"
    assert launcher.main(["--prefer", str(fake), str(out)]) == 0
    assert _python_of(out) == sys.executable
    assert not launcher.usable(str(tmp_path / "missing"))


def test_a_usable_preference_is_taken(tmp_path):
    # a wrapper that runs this very interpreter: same X.Y, and it imports the runtime
    wrapper = tmp_path / "python-wrapper"
    wrapper.write_text(f'#!/bin/sh\nexec {sys.executable} "$@"\n')
    wrapper.chmod(0o755)
    assert launcher.usable(str(wrapper))
    out = tmp_path / "pinnace-oci"
    assert launcher.main(["--prefer", str(wrapper), str(out)]) == 0
    assert _python_of(out) == str(wrapper)


def test_bad_usage():
    assert launcher.main([]) == 2
    assert launcher.main(["--prefer", "x"]) == 2


def test_command_prefers_the_launcher_beside_the_interpreter(tmp_path, monkeypatch):
    from runtime import launcher

    python = tmp_path / "python3"
    python.write_text("")
    monkeypatch.setattr("sys.executable", str(python))
    assert launcher.command() == [str(python), "-m", "runtime"]
    script = tmp_path / "pinnace-oci"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o755)
    assert launcher.command() == [str(script)]
