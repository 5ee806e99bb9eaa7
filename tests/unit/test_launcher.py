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
    assert _python_of(tmp_path / "pinnace-oci.py") == sys.executable
    for program in (out, tmp_path / "pinnace-oci.py"):
        done = subprocess.run([program, "--version"], capture_output=True, text=True, check=False)
        assert done.returncode == 0 and "pinnace-oci version" in done.stdout


def test_with_a_compiler_the_program_is_the_front_end(tmp_path):
    out = tmp_path / "pinnace-oci"
    assert launcher.main([str(out)]) == 0
    assert out.read_bytes()[:4] == b"\x7fELF"
    built = out.stat().st_mtime_ns
    assert launcher.main([str(out)]) == 0  # the same build again: the file is left alone
    assert out.stat().st_mtime_ns == built


def test_without_a_compiler_the_program_is_the_python_launcher(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("shutil.which", lambda name, *a, **kw: None)
    out = tmp_path / "pinnace-oci"
    assert launcher.main([str(out)]) == 0
    assert out.read_text() == (tmp_path / "pinnace-oci.py").read_text()
    assert "no C compiler" in capsys.readouterr().err


def test_a_failing_compiler_is_reported(tmp_path):
    fake = tmp_path / "cc"
    fake.write_text("#!/bin/sh\necho 'cc: no such luck' >&2\nexit 1\n")
    fake.chmod(0o755)
    why = launcher.build_front_end(str(tmp_path / "out"), cc=str(fake))
    assert why is not None and "no such luck" in why
    assert not (tmp_path / "out").exists()


def test_the_front_end_finds_the_launcher_beside_its_real_path(tmp_path):
    """One build serves any copy: through a symlink, it runs the launcher beside the file."""
    real = tmp_path / "real"
    real.mkdir()
    assert launcher.main([str(real / "pinnace-oci")]) == 0
    link = tmp_path / "bin" / "pinnace-oci"
    link.parent.mkdir()
    link.symlink_to(real / "pinnace-oci")
    done = subprocess.run([link, "--version"], capture_output=True, text=True, check=False)
    assert done.returncode == 0 and "pinnace-oci version" in done.stdout
    (real / "pinnace-oci.py").unlink()
    done = subprocess.run([link, "--version"], capture_output=True, text=True, check=False)
    assert done.returncode == 127
    assert f"cannot run {real / 'pinnace-oci.py'}" in done.stderr


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
    # the Python launcher, when there is one: the CRI runs only `exec`, which the front
    # end would hand over to it anyway
    python_launcher = tmp_path / "pinnace-oci.py"
    python_launcher.write_text("#!/bin/sh\n")
    python_launcher.chmod(0o755)
    assert launcher.command() == [str(python_launcher)]


def test_the_front_end_compiles_without_warnings(tmp_path):
    """Built with the compiler's warnings as errors, on top of the flags bin/setup uses."""
    import shutil

    cc = shutil.which("cc")
    assert cc is not None, "bin/setup installs gcc"
    done = subprocess.run(
        [
            cc,
            *launcher.CFLAGS,
            "-Werror",
            "-Wshadow",
            "-Wconversion",
            "-o",
            str(tmp_path / "out"),
            launcher.FRONT_END_SOURCE,
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
