"""runtime.passwd: users and groups of an image, read inside its rootfs and never outside it."""

import os

import pytest

from runtime import passwd

PASSWD = """root:x:0:0:root:/root:/bin/sh
daemon:x:1:1::/:/bin/false
alice:x:1000:1000::/home/alice:/bin/sh
bob:x:1001:1002::/home/bob:/bin/sh
007:x:7:70::/:/bin/sh
"""
GROUP = """root:x:0:
wheel:x:10:root,alice
alice:x:1000:
video:x:44:alice
staff:x:1002:
"""


def make_rootfs(path, passwd_text=PASSWD, group_text=GROUP):
    (path / "etc").mkdir(parents=True)
    (path / "etc" / "passwd").write_text(passwd_text)
    (path / "etc" / "group").write_text(group_text)
    return str(path)


@pytest.fixture
def rootfs(tmp_path):
    return make_rootfs(tmp_path / "rootfs")


def test_name_gives_uid_and_primary_gid(rootfs):
    assert passwd.resolve("bob", rootfs) == passwd.ResolvedUser(1001, 1002, "bob")
    assert passwd.resolve_user("alice", rootfs) == {"uid": 1000, "gid": 1000}


def test_uid_in_passwd_takes_its_gid_and_name(rootfs):
    assert passwd.resolve("1001", rootfs) == passwd.ResolvedUser(1001, 1002, "bob")
    assert passwd.lookup_uid(rootfs, 1000) == passwd.ResolvedUser(1000, 1000, "alice")


def test_uid_not_in_passwd_is_valid_with_gid_0(rootfs):
    assert passwd.resolve("4242", rootfs) == passwd.ResolvedUser(4242, 0, None)


def test_group_by_number_and_by_name(rootfs):
    assert passwd.resolve_user("alice:44", rootfs) == {"uid": 1000, "gid": 44}
    assert passwd.resolve_user("1001:video", rootfs) == {"uid": 1001, "gid": 44}
    assert passwd.resolve_user("5:6", rootfs) == {"uid": 5, "gid": 6}


def test_unknown_user_and_group_are_errors_naming_them(rootfs):
    with pytest.raises(passwd.UserLookupError, match="user 'mallory' not found") as e:
        passwd.resolve("mallory", rootfs)
    assert e.value.name == "mallory"
    assert e.value.db == "/etc/passwd"
    with pytest.raises(passwd.UserLookupError, match="group 'nogroup' not found") as e:
        passwd.resolve("alice:nogroup", rootfs)
    assert e.value.db == "/etc/group"


def test_uid_compared_as_written_as_pinnace_run_always_did(rootfs):
    # the row "007:x:7:70" is the user named 007 with uid 7: "7" matches its uid, the name
    # "007" (all digits) is taken as a uid and matches no uid field
    assert passwd.resolve("7", rootfs) == passwd.ResolvedUser(7, 70, "007")
    assert passwd.resolve("007", rootfs) == passwd.ResolvedUser(7, 0, None)


def test_member_gids_lists_groups_naming_the_user(rootfs):
    assert passwd.member_gids(rootfs, "alice") == [10, 44]
    assert passwd.member_gids(rootfs, "root") == [10]
    assert passwd.member_gids(rootfs, "bob") == []


def test_missing_databases_and_missing_rootfs_mean_no_entries(tmp_path):
    empty = tmp_path / "scratch"
    empty.mkdir()
    assert passwd.resolve_user("0", str(empty)) == {"uid": 0, "gid": 0}
    assert passwd.member_gids(str(empty), "root") == []
    with pytest.raises(passwd.UserLookupError):
        passwd.resolve("root", str(tmp_path / "nonexistent"))


def test_crlf_lines_are_read_like_lf(tmp_path):
    root = make_rootfs(tmp_path / "r", PASSWD.replace("\n", "\r\n"), GROUP.replace("\n", "\r\n"))
    assert passwd.resolve("alice", root) == passwd.ResolvedUser(1000, 1000, "alice")
    assert passwd.member_gids(root, "alice") == [10, 44]


def _host_file(tmp_path):
    host = tmp_path / "host"
    host.mkdir()
    (host / "passwd").write_text("evil:x:4242:4242::/:/bin/sh\n")
    return host / "passwd"


def test_absolute_symlink_resolves_inside_the_rootfs_not_on_the_host(tmp_path):
    host_passwd = _host_file(tmp_path)
    root = tmp_path / "rootfs"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "passwd").symlink_to(str(host_passwd))  # absolute host path
    assert passwd.read_db(str(host_passwd.parent), "/passwd")  # the host file is readable...
    with pytest.raises(passwd.UserLookupError):  # ...but not through the image's symlink
        passwd.resolve("evil", str(root))


def test_dotdot_symlink_cannot_climb_out_of_the_rootfs(tmp_path):
    _host_file(tmp_path)
    root = tmp_path / "rootfs"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "passwd").symlink_to("../../../../../../host/passwd")
    with pytest.raises(passwd.UserLookupError):
        passwd.resolve("evil", str(root))


def test_symlinked_etc_dir_resolves_inside_the_rootfs(tmp_path):
    _host_file(tmp_path)
    root = tmp_path / "rootfs"
    root.mkdir()
    (root / "etc").symlink_to(str(tmp_path / "host"))
    with pytest.raises(passwd.UserLookupError):
        passwd.resolve("evil", str(root))


def test_symlink_within_the_rootfs_is_followed(tmp_path):
    root = tmp_path / "rootfs"
    (root / "data").mkdir(parents=True)
    (root / "data" / "passwd").write_text(PASSWD)
    (root / "etc").mkdir()
    (root / "etc" / "passwd").symlink_to("/data/passwd")
    assert passwd.resolve("bob", str(root)).uid == 1001


def test_fifo_database_does_not_block_and_gives_no_entries(tmp_path):
    root = tmp_path / "rootfs"
    (root / "etc").mkdir(parents=True)
    os.mkfifo(root / "etc" / "passwd")
    assert passwd.read_db(str(root), "/etc/passwd") == []


def test_directory_database_gives_no_entries(tmp_path):
    root = tmp_path / "rootfs"
    (root / "etc" / "passwd").mkdir(parents=True)
    assert passwd.read_db(str(root), "/etc/passwd") == []


def test_oversized_database_is_read_only_up_to_the_cap(tmp_path, monkeypatch):
    monkeypatch.setattr(passwd, "MAX_DB_BYTES", len("root:x:0:0::/:/bin/sh\n"))
    root = make_rootfs(tmp_path / "r")
    rows = passwd.read_db(root, "/etc/passwd")
    assert [r[0] for r in rows] == ["root"]


def test_pinnace_run_resolve_user_keeps_its_behaviour(rootfs):
    from pinnace.run import RunError, resolve_user

    assert resolve_user("bob", rootfs) == {"uid": 1001, "gid": 1002}
    assert resolve_user("4242", rootfs) == {"uid": 4242, "gid": 0}
    assert resolve_user("alice:video", rootfs) == {"uid": 1000, "gid": 44}
    with pytest.raises(RunError, match="user 'nobody' not found in the image's /etc/passwd"):
        resolve_user("nobody", rootfs)
    with pytest.raises(RunError, match="group 'x' not found in the image's /etc/group"):
        resolve_user("bob:x", rootfs)
