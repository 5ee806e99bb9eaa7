"""Hooks through `pinnace-oci`, as an engine configures them in config.json.

Skipped until the runtime's process and rootfs modules exist (the create
path imports them).
"""

import json

import pytest

pytest.importorskip("runtime.process")
pytest.importorskip("runtime.rootfs")

SH = "/bin/sh"


def _hook(script, **extra):
    return {"path": SH, "args": ["sh", "-c", script], **extra}


def test_runtime_hooks_get_the_state_and_poststop_runs_on_delete(oci, make_bundle, scratch_dir):
    created = scratch_dir / "createRuntime.json"
    stopped = scratch_dir / "poststop.json"

    def edit(config):
        config["annotations"] = {"io.example/test": "yes"}
        config["hooks"] = {
            "createRuntime": [_hook(f"cat > {created}")],
            "poststop": [_hook(f"cat > {stopped}")],
        }

    bundle = make_bundle(["sh", "-c", "exit 0"], edit=edit)
    oci("create", "--bundle", str(bundle), "pinnace-test-h1")
    try:
        state = json.loads(created.read_text())
        assert state["id"] == "pinnace-test-h1"
        assert state["status"] == "creating"
        assert state["bundle"] == str(bundle)
        assert state["pid"] == oci.state("pinnace-test-h1")["pid"]
        assert state["annotations"] == {"io.example/test": "yes"}
        assert not stopped.exists()
    finally:
        oci("delete", "--force", "pinnace-test-h1")
    after = json.loads(stopped.read_text())
    assert after["id"] == "pinnace-test-h1"
    assert after["status"] == "stopped"


def test_a_failing_create_runtime_hook_fails_create_and_leaves_nothing(oci, make_bundle):
    def edit(config):
        config["hooks"] = {"createRuntime": [_hook("echo no network for you >&2; exit 4")]}

    bundle = make_bundle(["true"], edit=edit)
    res = oci("create", "--bundle", str(bundle), "pinnace-test-h2", check=False)
    assert res.returncode != 0
    assert "createRuntime hook #0" in res.stderr
    assert "exited with status 4" in res.stderr
    assert "no network for you" in res.stderr
    assert oci.ids() == []


def test_a_hook_timeout_fails_create(oci, make_bundle):
    def edit(config):
        config["hooks"] = {"createRuntime": [_hook("sleep 1000", timeout=1)]}

    bundle = make_bundle(["true"], edit=edit)
    res = oci("create", "--bundle", str(bundle), "pinnace-test-h3", check=False)
    assert res.returncode != 0
    assert "timed out after 1s" in res.stderr
    assert oci.ids() == []


def test_an_invalid_hook_is_refused_before_anything_is_made(oci, make_bundle):
    def edit(config):
        config["hooks"] = {"poststart": [{"path": "relative/hook"}]}

    bundle = make_bundle(["true"], edit=edit)
    res = oci("create", "--bundle", str(bundle), "pinnace-test-h4", check=False)
    assert res.returncode != 0
    assert "hooks.poststart[0].path" in res.stderr
    assert oci.ids() == []


def test_a_failing_poststart_hook_is_only_a_warning(oci, make_bundle):
    def edit(config):
        config["hooks"] = {"poststart": [_hook("exit 9")]}

    bundle = make_bundle(["sleep", "1000"], edit=edit)
    oci("create", "--bundle", str(bundle), "pinnace-test-h5")
    try:
        res = oci("start", "pinnace-test-h5")
        assert "poststart hook #0" in res.stderr
        assert oci.status("pinnace-test-h5") == "running"
    finally:
        oci("delete", "--force", "pinnace-test-h5")
