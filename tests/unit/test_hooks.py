"""Hook validation, the Hook view of a hook entry, and the state JSON (pure logic)."""

import pytest

from runtime import hooks
from runtime.errors import SpecError


def _field(hooks_section):
    with pytest.raises(SpecError) as info:
        hooks.validate_hooks(hooks_section)
    return info.value.field


def test_absent_or_empty_hooks_are_valid():
    hooks.validate_hooks(None)
    hooks.validate_hooks({})
    hooks.validate_hooks({kind: [] for kind in hooks.HOOK_KINDS})
    hooks.validate_hooks({"poststop": None})


def test_a_full_valid_section():
    hooks.validate_hooks(
        {
            "prestart": [{"path": "/usr/bin/fix-mounts", "args": ["fix-mounts", "arg1"]}],
            "createRuntime": [
                {"path": "/bin/true"},
                {"path": "/usr/bin/setup-network", "env": ["KEY=value", "EMPTY="], "timeout": 5},
            ],
            "createContainer": [{"path": "/bin/true"}],
            "startContainer": [{"path": "/bin/true", "args": []}],
            "poststart": [{"path": "/usr/bin/notify-start", "timeout": 1}],
            "poststop": [{"path": "/usr/sbin/cleanup.sh", "args": ["cleanup.sh", "-f"]}],
        }
    )


def test_unknown_kinds_and_fields_are_ignored_as_the_spec_requires():
    hooks.validate_hooks({"preStart": "anything", "poststop": [{"path": "/x", "extra": 1}]})


@pytest.mark.parametrize(
    ("section", "field"),
    [
        ([], "hooks"),
        ({"poststop": {"path": "/bin/true"}}, "hooks.poststop"),
        ({"prestart": ["/bin/true"]}, "hooks.prestart[0]"),
        ({"createRuntime": [{}]}, "hooks.createRuntime[0].path"),
        ({"createRuntime": [{"path": ""}]}, "hooks.createRuntime[0].path"),
        ({"createRuntime": [{"path": "bin/true"}]}, "hooks.createRuntime[0].path"),
        ({"createRuntime": [{"path": "/bin/t\0rue"}]}, "hooks.createRuntime[0].path"),
        ({"poststart": [{"path": "/a", "args": "a b"}]}, "hooks.poststart[0].args"),
        ({"poststart": [{"path": "/a", "args": ["a", 1]}]}, "hooks.poststart[0].args[1]"),
        ({"poststart": [{"path": "/a", "env": ["A=1", "B"]}]}, "hooks.poststart[0].env[1]"),
        ({"poststart": [{"path": "/a", "env": ["=1"]}]}, "hooks.poststart[0].env[0]"),
        ({"poststart": [{"path": "/a", "env": {"A": "1"}}]}, "hooks.poststart[0].env"),
        (
            {"createRuntime": [{"path": "/a"}, {"path": "/b", "timeout": 0}]},
            "hooks.createRuntime[1].timeout",
        ),
        ({"poststop": [{"path": "/a", "timeout": -3}]}, "hooks.poststop[0].timeout"),
        ({"poststop": [{"path": "/a", "timeout": "5"}]}, "hooks.poststop[0].timeout"),
        ({"poststop": [{"path": "/a", "timeout": 1.5}]}, "hooks.poststop[0].timeout"),
        ({"poststop": [{"path": "/a", "timeout": True}]}, "hooks.poststop[0].timeout"),
    ],
)
def test_invalid_entries_name_their_field(section, field):
    assert _field(section) == field


def test_spec_error_message_starts_with_the_field():
    with pytest.raises(SpecError) as info:
        hooks.validate_hooks({"createRuntime": [{"path": "/a"}, {"path": "/b", "timeout": 0}]})
    assert str(info.value).startswith("hooks.createRuntime[1].timeout: ")
    assert "greater than zero" in str(info.value)


def test_parse_hooks_gives_every_kind():
    parsed = hooks.parse_hooks({"poststop": [{"path": "/a", "args": ["x", "y"], "timeout": 3}]})
    assert set(parsed) == set(hooks.HOOK_KINDS)
    assert parsed["poststop"] == (hooks.Hook("/a", ("x", "y"), (), 3),)
    assert parsed["prestart"] == ()


def test_argv_is_args_as_given_or_the_path():
    assert hooks.Hook("/bin/busybox", ("echo", "hi")).argv == ["echo", "hi"]
    assert hooks.Hook("/bin/true").argv == ["/bin/true"]


def test_environ_is_exactly_the_configured_env():
    hook = hooks.Hook("/a", env=("A=1", "B=x=y", "EMPTY=", "A=2"))
    assert hook.environ() == {"A": "2", "B": "x=y", "EMPTY": ""}
    assert hooks.Hook("/a").environ() == {}


def test_hook_state_shape():
    state = hooks.hook_state(
        "c1", "created", bundle="/b", pid=42, annotations={"io.example/x": "1"}
    )
    assert state == {
        "ociVersion": "1.2.0",
        "id": "c1",
        "status": "created",
        "pid": 42,
        "bundle": "/b",
        "annotations": {"io.example/x": "1"},
    }


def test_hook_state_leaves_out_a_missing_pid_and_empty_annotations():
    state = hooks.hook_state("c1", "stopped", bundle="/b", pid=0, annotations={})
    assert state == {"ociVersion": "1.2.0", "id": "c1", "status": "stopped", "bundle": "/b"}


def test_run_hooks_refuses_an_unknown_kind():
    with pytest.raises(ValueError, match="unknown hook kind"):
        hooks.run_hooks("preStart", [{"path": "/bin/true"}], {})


def test_run_hooks_with_nothing_to_run_returns_no_failures():
    assert hooks.run_hooks("poststop", [], {}) == []
    assert hooks.run_hooks("createRuntime", None, {}) == []


def test_run_hooks_validates_raw_entries_before_running_any():
    with pytest.raises(SpecError) as info:
        hooks.run_hooks("createRuntime", [{"path": "relative"}], {})
    assert info.value.field == "hooks.createRuntime[0].path"
