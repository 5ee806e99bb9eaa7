"""Validation of the root filesystem sections: each error names its JSON field."""

import copy
import os

import pytest

from namespaces import syscalls as sc
from runtime.errors import SpecError
from runtime.rootfs import first_propagation, needs_dev_setup, rootfs_path, validate_rootfs
from runtime.rootfs_spec import parse_rootfs
from tests.fixtures.bundles import minimal_config


@pytest.fixture
def bundle(tmp_path):
    (tmp_path / "rootfs").mkdir()
    return str(tmp_path)


def _config(**linux):
    c = minimal_config(["true"])
    c["linux"].update(linux)
    return c


def _error(config, bundle) -> SpecError:
    with pytest.raises(SpecError) as info:
        validate_rootfs(config, bundle)
    return info.value


def test_minimal_config_is_valid(bundle):
    validate_rootfs(minimal_config(["true"]), bundle)
    spec = parse_rootfs(minimal_config(["true"]), bundle)
    assert spec.rootfs == os.path.realpath(os.path.join(bundle, "rootfs"))
    assert [m.destination for m in spec.mounts] == ["/proc", "/dev", "/dev/pts", "/dev/shm", "/sys"]
    assert spec.mounts[0].source == "proc" and spec.mounts[0].type == "proc"
    assert spec.masked_paths == ("/proc/kcore", "/proc/keys", "/sys/firmware")
    assert "mount" in spec.namespaces and "cgroup" not in spec.namespaces


def test_root_path_relative_to_bundle_or_absolute(bundle, tmp_path):
    c = minimal_config(["true"])
    assert rootfs_path(c, bundle) == os.path.realpath(f"{bundle}/rootfs")
    other = tmp_path / "elsewhere"
    other.mkdir()
    c["root"]["path"] = str(other)
    assert rootfs_path(c, bundle) == str(other)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda c: c.pop("root"), "root"),
        (lambda c: c["root"].update(path=""), "root.path"),
        (lambda c: c["root"].update(path="missing"), "root.path"),
        (lambda c: c["root"].update(readonly="yes"), "root.readonly"),
        (lambda c: c.update(mounts={}), "mounts"),
        (lambda c: c["mounts"].append("proc"), "mounts[5]"),
        (lambda c: c["mounts"][1].update(destination="dev"), "mounts[1].destination"),
        (lambda c: c["mounts"][1].update(destination=""), "mounts[1].destination"),
        (lambda c: c["mounts"][1].update(destination="/"), "mounts[1].destination"),
        (lambda c: c["mounts"][1].update(destination="/a/.."), "mounts[1].destination"),
        (lambda c: c["mounts"][1].update(type=5), "mounts[1].type"),
        (lambda c: c["mounts"][1].update(source=["x"]), "mounts[1].source"),
        (lambda c: c["mounts"][1].update(options="ro"), "mounts[1].options"),
        (lambda c: c["mounts"][1].update(options=["ro", 1]), "mounts[1].options"),
        (lambda c: c["mounts"].append({"destination": "/x"}), "mounts[5].type"),
        (
            lambda c: c["mounts"].append({"destination": "/x", "type": "ext4"}),
            "mounts[5].source",
        ),
        (
            lambda c: c["mounts"].append({"destination": "/x", "options": ["rbind"]}),
            "mounts[5].source",
        ),
        (
            lambda c: c["mounts"].append({"destination": "/x", "type": "proc"}),
            "mounts[5].destination",
        ),
        (
            lambda c: c["mounts"].append(
                {"destination": "/x", "type": "tmpfs", "options": ["tmpcopyup"]} | {"type": "sysfs"}
            ),
            "mounts[5].options",
        ),
        (lambda c: c["linux"].update(rootfsPropagation="everywhere"), "linux.rootfsPropagation"),
        (lambda c: c["linux"].update(maskedPaths=["proc/kcore"]), "linux.maskedPaths[0]"),
        (lambda c: c["linux"].update(maskedPaths="/proc/kcore"), "linux.maskedPaths"),
        (lambda c: c["linux"].update(readonlyPaths=["/proc/sys", 7]), "linux.readonlyPaths[1]"),
        (lambda c: c["linux"].update(readonlyPaths=["/"]), "linux.readonlyPaths[0]"),
        (lambda c: c.update(linux=[]), "linux"),
    ],
)
def test_errors_name_the_field(bundle, change, field):
    c = copy.deepcopy(minimal_config(["true"]))
    change(c)
    assert _error(c, bundle).field == field


def test_error_message_says_why(bundle):
    c = minimal_config(["true"])
    c["mounts"][2]["destination"] = "dev/pts"
    err = _error(c, bundle)
    assert str(err) == "mounts[2].destination: 'dev/pts' is not an absolute path"


def _dev(**kw):
    d = {"path": "/dev/fuse", "type": "c", "major": 10, "minor": 229}
    d.update(kw)
    return d


@pytest.mark.parametrize(
    ("device", "field"),
    [
        (_dev(path="dev/fuse"), "linux.devices[0].path"),
        (_dev(path="/dev"), "linux.devices[0].path"),
        (_dev(type="x"), "linux.devices[0].type"),
        (_dev(major=None), "linux.devices[0].major"),
        (_dev(minor=-1), "linux.devices[0].minor"),
        (_dev(minor=True), "linux.devices[0].minor"),
        (_dev(fileMode=0o1000000), "linux.devices[0].fileMode"),
        (_dev(fileMode="0666"), "linux.devices[0].fileMode"),
        (_dev(uid=-1), "linux.devices[0].uid"),
        (_dev(gid="root"), "linux.devices[0].gid"),
    ],
)
def test_device_errors(bundle, device, field):
    assert _error(_config(devices=[device]), bundle).field == field


def test_devices_parse(bundle):
    spec_devs = parse_rootfs(
        _config(
            devices=[
                _dev(fileMode=0o20600, uid=1, gid=2),  # S_IFCHR bits in fileMode are dropped
                {"path": "/dev/p", "type": "p"},
            ]
        ),
        bundle,
    ).devices
    fuse, pipe = spec_devs
    assert (fuse.file_mode, fuse.uid, fuse.gid, fuse.rdev) == (0o600, 1, 2, os.makedev(10, 229))
    assert fuse.mode == 0o20600
    assert fuse.where == "linux.devices[0] (/dev/fuse)"
    assert (pipe.major, pipe.minor, pipe.file_mode) == (0, 0, 0o666)


_MAP = [{"containerID": 0, "hostID": 100000, "size": 65536}]


def _mount(**kw):
    m = {"destination": "/data", "type": "bind", "source": "/srv", "options": ["rbind", "idmap"]}
    m.update(kw)
    return m


@pytest.mark.parametrize(
    ("mount", "field"),
    [
        (_mount(uidMappings=_MAP), "mounts[5].gidMappings"),
        (_mount(gidMappings=_MAP), "mounts[5].uidMappings"),
        (_mount(options=["rbind"], uidMappings=_MAP, gidMappings=_MAP), "mounts[5].options"),
        (
            _mount(type="tmpfs", options=["idmap"], uidMappings=_MAP, gidMappings=_MAP),
            "mounts[5].options",
        ),
        (
            _mount(uidMappings=[{"containerID": 0, "hostID": 1, "size": 0}], gidMappings=_MAP),
            "mounts[5].uidMappings",
        ),
        (
            _mount(uidMappings=[{"containerID": "0", "hostID": 1, "size": 1}], gidMappings=_MAP),
            "mounts[5].uidMappings[0].containerID",
        ),
        (_mount(), "mounts[5].uidMappings"),  # no maps of its own and no user namespace
    ],
)
def test_idmap_errors(bundle, mount, field):
    c = minimal_config(["true"])
    c["mounts"].append(mount)
    assert _error(c, bundle).field == field


def test_idmap_without_maps_takes_the_user_namespace(bundle):
    c = minimal_config(["true"])
    c["mounts"].append(_mount(options=["rbind", "ridmap"]))
    c["linux"]["namespaces"].append({"type": "user"})
    validate_rootfs(c, bundle)


def test_bind_sources(bundle):
    c = minimal_config(["true"])
    c["mounts"] += [
        {"destination": "/a", "source": "vol", "options": ["rbind"]},
        {"destination": "/b", "type": "bind", "source": "/abs"},
    ]
    a, b = parse_rootfs(c, bundle).mounts[5:]
    assert a.source == os.path.join(bundle, "vol") and a.options.recursive_bind
    assert b.source == "/abs" and b.bind and not b.options.recursive_bind  # type bind: a bind
    assert a.where == "mounts[5] (/a)"


def test_dotdot_destination_is_clamped_not_refused(bundle):
    c = minimal_config(["true"])
    c["mounts"].append({"destination": "/../../etc", "type": "tmpfs"})
    (m,) = parse_rootfs(c, bundle).mounts[5:]
    assert m.clean_destination == "etc"
    assert m.source == "tmpfs"


def test_first_propagation():
    assert first_propagation(None) == sc.MS_SLAVE | sc.MS_REC
    assert first_propagation("slave") == sc.MS_SLAVE | sc.MS_REC
    assert first_propagation("unbindable") == sc.MS_SLAVE | sc.MS_REC
    assert first_propagation("private") == sc.MS_PRIVATE | sc.MS_REC
    assert first_propagation("rshared") == sc.MS_SHARED | sc.MS_REC


def test_dev_setup_unless_dev_is_bound(bundle):
    c = minimal_config(["true"])
    assert needs_dev_setup(parse_rootfs(c, bundle))
    c["mounts"][1] = {"destination": "/dev", "type": "bind", "source": "/dev", "options": ["rbind"]}
    assert not needs_dev_setup(parse_rootfs(c, bundle))
