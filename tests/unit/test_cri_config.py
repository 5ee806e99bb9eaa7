"""`pinnace cri --config`: defaults, overrides, and clear errors for bad files."""

from __future__ import annotations

import pytest

from cri.config import DEFAULT_SOCKET, CRIConfig
from cri.errors import InvalidArgument


def test_defaults_are_the_documented_paths():
    cfg = CRIConfig.load(None)
    assert cfg.socket == DEFAULT_SOCKET == "/run/pinnace/pinnace.sock"
    assert cfg.state_dir == "/var/lib/pinnace/cri"
    assert cfg.runtime_root == "/run/pinnace/runtime"
    assert cfg.cgroup_parent == "/pinnace/pods"


def test_yaml_overrides_and_unix_scheme(tmp_path):
    f = tmp_path / "cri.yaml"
    f.write_text("socket: unix:///tmp/x.sock\nstate-dir: /srv/cri\ncgroup_parent: k8s/pods\n")
    cfg = CRIConfig.load(str(f))
    assert cfg.socket_path == "/tmp/x.sock"
    assert cfg.state_dir == "/srv/cri"
    assert cfg.cgroup_parent == "/k8s/pods"


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("sockit: /x\n", "unknown setting 'sockit'"),
        ("stream_port: 'eighty'\n", "stream_port must be of type int"),
        ("exec_output_limit: true\n", "exec_output_limit must be of type int"),
        ("state_dir: relative/dir\n", "state_dir must be an absolute path"),
        ("- a\n- b\n", "must be a mapping"),
        ("a: [unclosed\n", "not valid YAML"),
    ],
)
def test_bad_files_name_the_problem(tmp_path, text, needle):
    f = tmp_path / "cri.yaml"
    f.write_text(text)
    with pytest.raises(InvalidArgument) as err:
        CRIConfig.load(str(f))
    assert needle in str(err.value)
    assert str(f) in str(err.value)


def test_missing_file(tmp_path):
    with pytest.raises(InvalidArgument, match="cannot read"):
        CRIConfig.load(str(tmp_path / "nope.yaml"))


def test_the_command_refuses_a_bad_file_with_exit_2(tmp_path):
    import subprocess
    import sys

    f = tmp_path / "cri.yaml"
    f.write_text("network: carrier-pigeon\n")
    r = subprocess.run(
        [sys.executable, "-m", "pinnace", "cri", "--config", str(f)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert r.returncode == 2
    assert "network must be bridge, cni or none" in r.stderr and r.stdout == ""
