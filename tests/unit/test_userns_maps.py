import pytest

from namespaces.userns import (
    IDMap,
    IDMapError,
    format_map,
    map_id,
    parse_map,
    validate,
    write_maps,
)


def test_valid_maps_format_and_parse():
    maps = [IDMap(0, 100000, 65536), IDMap(65536, 300000, 10)]
    validate(maps)
    text = format_map(maps)
    assert text == "0 100000 65536\n65536 300000 10\n"
    assert parse_map("         0     100000      65536\n") == [IDMap(0, 100000, 65536)]
    assert map_id(maps, 1000) == 101000
    assert map_id(maps, 65540) == 300004
    assert map_id(maps, 70000) is None


@pytest.mark.parametrize(
    ("maps", "why"),
    [
        ([], "empty"),
        ([IDMap(0, 1000, 0)], "size must be at least 1"),
        ([IDMap(-1, 1000, 1)], "negative"),
        ([IDMap(0, 2**32 - 2, 2)], "largest id"),
        ([IDMap(0, 1000, 10), IDMap(5, 5000, 10)], "overlap inside"),
        ([IDMap(0, 1000, 10), IDMap(100, 1005, 10)], "overlap on the host"),
        ([IDMap(i, 1000 + i, 1) for i in range(341)], "at most 340"),
    ],
)
def test_invalid_maps_say_why(maps, why):
    with pytest.raises(IDMapError, match=why):
        validate(maps, "uid")


def test_idmap_is_a_value():
    a = IDMap(0, 100000, 65536)
    assert a == IDMap(container_id=0, host_id=100000, size=65536)
    assert a != IDMap(0, 100000, 1)
    assert len({a, IDMap(0, 100000, 65536)}) == 1
    assert repr(a) == "IDMap(container_id=0, host_id=100000, size=65536)"


def test_write_maps_order_and_paths(tmp_path):
    base = tmp_path / "42"
    base.mkdir()
    for name in ("uid_map", "setgroups", "gid_map"):
        (base / name).write_text("")
    write_maps(42, [IDMap(0, 1000, 1)], [IDMap(0, 2000, 1)], deny_setgroups=True, proc=tmp_path)
    assert (base / "uid_map").read_text() == "0 1000 1\n"
    assert (base / "setgroups").read_text() == "deny"
    assert (base / "gid_map").read_text() == "0 2000 1\n"
    with pytest.raises(FileNotFoundError) as exc:
        write_maps(43, [IDMap(0, 1000, 1)], [IDMap(0, 2000, 1)], proc=str(tmp_path))
    assert exc.value.filename == f"{tmp_path}/43/uid_map"
