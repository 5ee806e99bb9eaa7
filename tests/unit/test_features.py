"""The features document: its shape (runtime-spec 1.2) and its agreement with this host."""

import ctypes.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from runtime import features, hooks
from runtime import rootfs_options as ro

# Every property features.md and features-linux.md define in spec 1.2.
TOP_LEVEL = {
    "ociVersionMin",
    "ociVersionMax",
    "hooks",
    "mountOptions",
    "linux",
    "annotations",
    "potentiallyUnsafeConfigAnnotations",
}
LINUX = {
    "namespaces",
    "capabilities",
    "cgroup",
    "seccomp",
    "apparmor",
    "selinux",
    "intelRdt",
    "mountExtensions",
}


@pytest.fixture(scope="module")
def doc():
    return json.loads(features.features_json())


def test_versions(doc):
    assert doc["ociVersionMin"] == "1.0.0"
    assert doc["ociVersionMax"] == "1.2.0"


def test_only_properties_spec_1_2_defines(doc):
    assert set(doc) <= TOP_LEVEL
    assert {"ociVersionMin", "ociVersionMax", "hooks", "mountOptions", "linux"} <= set(doc)
    assert set(doc["linux"]) == LINUX
    assert set(doc["linux"]["cgroup"]) == {"v1", "v2", "systemd", "systemdUser", "rdma"}
    assert set(doc["linux"]["seccomp"]) == {
        "enabled",
        "actions",
        "operators",
        "archs",
        "knownFlags",
        "supportedFlags",
    }


def test_hooks_are_every_kind_we_run(doc):
    assert doc["hooks"] == list(hooks.HOOK_KINDS)
    assert len(doc["hooks"]) == 6


def test_namespaces(doc):
    assert sorted(doc["linux"]["namespaces"]) == [
        "cgroup",
        "ipc",
        "mount",
        "network",
        "pid",
        "time",
        "user",
        "uts",
    ]


def test_capabilities_stop_at_the_kernels_last(doc):
    last = features.last_capability()
    assert last is not None
    caps = doc["linux"]["capabilities"]
    assert len(caps) == min(last + 1, len(features.CAPABILITIES))
    assert caps[0] == "CAP_CHOWN"
    assert caps[21] == "CAP_SYS_ADMIN"
    assert len(set(caps)) == len(caps)
    assert all(c.startswith("CAP_") for c in caps)


def test_last_capability_reads_the_kernel(tmp_path):
    assert features.last_capability() == int(Path("/proc/sys/kernel/cap_last_cap").read_text())
    assert features.last_capability(str(tmp_path / "missing")) is None


def test_capability_names_by_number():
    assert len(features.CAPABILITIES) == 41
    assert features.CAPABILITIES[40] == "CAP_CHECKPOINT_RESTORE"
    assert features.known_capabilities(2) == [
        "CAP_CHOWN",
        "CAP_DAC_OVERRIDE",
        "CAP_DAC_READ_SEARCH",
    ]
    assert features.known_capabilities(None) == list(features.CAPABILITIES)


def test_cgroup_managers(doc):
    assert doc["linux"]["cgroup"] == {
        "v1": False,
        "v2": True,
        "systemd": False,
        "systemdUser": False,
        "rdma": False,
    }


def test_mount_options_cover_the_coordinated_list(doc):
    assert set(features.MOUNT_OPTIONS) <= set(doc["mountOptions"])
    assert doc["mountOptions"] == sorted(set(doc["mountOptions"]))


@pytest.mark.parametrize("option", features.recognized_mount_options())
def test_every_listed_mount_option_is_recognized_not_passed_as_fs_data(option):
    assert ro.parse_options([option]).data == ""


def test_seccomp_section(doc):
    seccomp = doc["linux"]["seccomp"]
    have_lib = ctypes.util.find_library("seccomp") is not None
    assert seccomp["enabled"] is have_lib
    assert set(seccomp["supportedFlags"]) <= set(seccomp["knownFlags"])
    assert "SCMP_ACT_ERRNO" in seccomp["actions"]
    assert "SCMP_CMP_MASKED_EQ" in seccomp["operators"]
    assert "SCMP_ARCH_X86_64" in seccomp["archs"]
    if have_lib:
        assert doc["annotations"]["io.github.seccomp.libseccomp.version"].count(".") == 2
        # any kernel >= 4.17 with libseccomp >= 2.5 supports all three
        if features.kernel_version() >= (4, 17):
            assert len(seccomp["supportedFlags"]) == 3


def test_unsupported_lsms_and_rdt_say_so(doc):
    linux = doc["linux"]
    assert linux["apparmor"] == {"enabled": False}
    assert linux["selinux"] == {"enabled": False}
    assert linux["intelRdt"] == {"enabled": False}


def test_idmap_extension_and_the_kernel_annotation(doc):
    assert doc["linux"]["mountExtensions"] == {"idmap": {"enabled": True}}
    expected = "true" if features.kernel_version() >= (5, 12) else "false"
    assert doc["annotations"]["io.pinnace.kernel.idmapped-mounts"] == expected


def test_annotations_are_strings(doc):
    assert doc["annotations"]
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in doc["annotations"].items())
    assert doc["potentiallyUnsafeConfigAnnotations"] == []


@pytest.mark.parametrize(
    ("release", "version"),
    [
        ("6.1.0-18-amd64", (6, 1)),
        ("5.12", (5, 12)),
        ("4.19.0+", (4, 19)),
        ("6.18.44-fc-v669", (6, 18)),
        ("garbage", (0, 0)),
    ],
)
def test_kernel_version(release, version):
    assert features.kernel_version(release) == version


def test_cli_prints_the_same_document():
    out = subprocess.run(
        [sys.executable, "-m", "runtime", "features"], capture_output=True, text=True, check=True
    ).stdout
    assert json.loads(out) == features.features()


def _seccomp_or_skip():
    seccomp = pytest.importorskip("runtime.seccomp")
    if not seccomp.available():
        pytest.skip("libseccomp is not installed")
    return seccomp


def test_every_listed_seccomp_name_is_accepted_by_the_seccomp_module(doc):
    """The document must not claim a name runtime/seccomp.py would refuse."""
    seccomp = _seccomp_or_skip()
    section = doc["linux"]["seccomp"]
    for action in section["actions"]:
        rule = {"names": ["getpid"], "action": action}
        if action in ("SCMP_ACT_ERRNO", "SCMP_ACT_TRACE"):
            rule["errnoRet"] = 1
        seccomp.plan_seccomp({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [rule]})
    for op in section["operators"]:
        rule = {
            "names": ["personality"],
            "action": "SCMP_ACT_ERRNO",
            "errnoRet": 1,
            "args": [{"index": 0, "value": 8, "valueTwo": 8, "op": op}],
        }
        seccomp.plan_seccomp({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [rule]})
    seccomp.plan_seccomp(
        {
            "defaultAction": "SCMP_ACT_ALLOW",
            "architectures": section["archs"],
            "flags": section["knownFlags"],
        }
    )
