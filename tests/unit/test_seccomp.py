"""linux.seccomp: validation, name resolution and compilation by the real libseccomp (no loading)."""

import errno
import os

import pytest

from runtime import seccomp as S
from runtime import seccomp_profile as profile
from runtime.errors import SpecError


def program(**raw):
    raw.setdefault("defaultAction", "SCMP_ACT_ALLOW")
    return S.plan_seccomp(raw)


def pfc(prog):
    with S.Filter(prog) as f:
        return f.export_pfc()


def nr(name):
    return S.lookups().resolve_syscall(name)


@pytest.mark.parametrize(
    ("raw", "field", "words"),
    [
        ({"defaultAction": "SCMP_ACT_BOGUS"}, "linux.seccomp.defaultAction", "unknown seccomp action"),
        ({}, "linux.seccomp.defaultAction", "unknown seccomp action None"),
        ({"defaultAction": "SCMP_ACT_NOTIFY"}, "linux.seccomp.defaultAction", "not supported yet"),
        ({"defaultAction": "SCMP_ACT_ALLOW", "defaultErrnoRet": 1}, "linux.seccomp.defaultErrnoRet", "does not return an errno"),
        ({"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 5000}, "linux.seccomp.defaultErrnoRet", "not an errno"),
        ({"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": -1}, "linux.seccomp.defaultErrnoRet", "unsigned"),
        ({"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_Z80"]}, "linux.seccomp.architectures[0]", "unknown architecture"),
        ({"defaultAction": "SCMP_ACT_ALLOW", "architectures": "SCMP_ARCH_X86"}, "linux.seccomp.architectures", "array"),
        ({"defaultAction": "SCMP_ACT_ALLOW", "flags": ["SECCOMP_FILTER_FLAG_NOPE"]}, "linux.seccomp.flags[0]", "unknown seccomp flag"),
        ({"defaultAction": "SCMP_ACT_ALLOW", "listenerPath": "/run/l.sock"}, "linux.seccomp.listenerPath", "not supported yet"),
        ({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": {"names": ["read"]}}, "linux.seccomp.syscalls", "array"),
        ({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": [], "action": "SCMP_ACT_LOG"}]}, "linux.seccomp.syscalls[0].names", "non-empty"),
        ({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["read", ""], "action": "SCMP_ACT_LOG"}]}, "linux.seccomp.syscalls[0].names[1]", "syscall name"),
        ({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["read"], "action": "SCMP_ACT_DENY"}]}, "linux.seccomp.syscalls[0].action", "unknown seccomp action 'SCMP_ACT_DENY'"),
        ({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["read"], "action": "SCMP_ACT_NOTIFY"}]}, "linux.seccomp.syscalls[0].action", "not supported yet"),
        ({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["read"], "action": "SCMP_ACT_KILL", "errnoRet": 1}]}, "linux.seccomp.syscalls[0].errnoRet", "does not return an errno"),
        ({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ERRNO", "args": [{"index": 6, "value": 1, "op": "SCMP_CMP_EQ"}]}]}, "linux.seccomp.syscalls[0].args[0].index", "0..5"),
        ({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ERRNO", "args": [{"index": 0, "value": 1, "op": "SCMP_CMP_LIKE"}]}]}, "linux.seccomp.syscalls[0].args[0].op", "unknown seccomp operator"),
        ({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ERRNO", "args": [{"index": 0, "value": -1, "op": "SCMP_CMP_EQ"}]}]}, "linux.seccomp.syscalls[0].args[0].value", "unsigned 64-bit"),
        ({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ERRNO", "args": [{"index": 0, "value": 1}]}]}, "linux.seccomp.syscalls[0].args[0].op", "unknown seccomp operator None"),
        ({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": ["read"]}, "linux.seccomp.syscalls[0]", "object"),
    ],
)  # fmt: skip
def test_validation_errors_name_the_field(raw, field, words):
    with pytest.raises(SpecError) as info:
        S.plan_seccomp(raw)
    assert info.value.field == field
    assert words in info.value.message


def test_not_an_object():
    with pytest.raises(SpecError) as info:
        S.plan_seccomp(["SCMP_ACT_ALLOW"])
    assert info.value.field == "linux.seccomp"


def test_actions_resolve_with_errno_defaults():
    p = program(
        defaultAction="SCMP_ACT_ERRNO",
        syscalls=[
            {"names": ["read"], "action": "SCMP_ACT_ALLOW"},
            {"names": ["mkdir"], "action": "SCMP_ACT_ERRNO", "errnoRet": errno.EACCES},
            {"names": ["getpid"], "action": "SCMP_ACT_TRACE"},
            {"names": ["kill"], "action": "SCMP_ACT_KILL_PROCESS"},
            {"names": ["uname"], "action": "SCMP_ACT_LOG"},
            {"names": ["getuid"], "action": "SCMP_ACT_TRAP"},
        ],
    )
    assert p.default_action == S.ACT_ERRNO | errno.EPERM
    actions = {r.name: r.action for r in p.rules}
    assert actions == {
        "read": S.ACT_ALLOW,
        "mkdir": S.ACT_ERRNO | errno.EACCES,
        "getpid": S.ACT_TRACE | errno.EPERM,
        "kill": S.ACT_KILL_PROCESS,
        "uname": S.ACT_LOG,
        "getuid": S.ACT_TRAP,
    }
    assert {r.name: r.syscall for r in p.rules}["read"] == nr("read")
    assert p.rules[1].field == "linux.seccomp.syscalls[1]"


def test_unknown_syscalls_and_architectures_are_skipped_with_notes():
    p = program(
        architectures=["SCMP_ARCH_X86_64", "SCMP_ARCH_LOONGARCH64"],
        syscalls=[{"names": ["read", "no_such_call"], "action": "SCMP_ACT_LOG"}],
    )
    assert [r.name for r in p.rules] == ["read"]
    assert any("syscalls[0].names[1]" in n and "no_such_call" in n for n in p.notes)
    if S.lookups().resolve_arch("loongarch64") == 0:
        assert any("architectures[1]" in n for n in p.notes)


def test_rules_equal_to_the_default_action_are_skipped():
    p = program(
        defaultAction="SCMP_ACT_ERRNO",
        syscalls=[
            {"names": ["read"], "action": "SCMP_ACT_ERRNO"},
            {"names": ["write"], "action": "SCMP_ACT_ERRNO", "errnoRet": errno.ENOSYS},
        ],
    )
    assert [r.name for r in p.rules] == ["write"]


def test_conditions_on_distinct_arguments_are_anded_in_one_rule():
    p = program(
        syscalls=[
            {
                "names": ["socket"],
                "action": "SCMP_ACT_ERRNO",
                "args": [
                    {"index": 0, "value": 40, "op": "SCMP_CMP_EQ"},
                    {"index": 1, "value": 1, "op": "SCMP_CMP_NE"},
                ],
            }
        ]
    )
    (rule,) = p.rules
    assert rule.conditions == (
        S.ArgCondition(0, S.OPERATORS["SCMP_CMP_EQ"], 40),
        S.ArgCondition(1, S.OPERATORS["SCMP_CMP_NE"], 1),
    )


def test_conditions_on_the_same_argument_are_ored_one_rule_each():
    p = program(
        defaultAction="SCMP_ACT_ERRNO",
        syscalls=[
            {
                "names": ["personality"],
                "action": "SCMP_ACT_ALLOW",
                "args": [
                    {"index": 0, "value": 0, "op": "SCMP_CMP_EQ"},
                    {"index": 0, "value": 8, "op": "SCMP_CMP_EQ"},
                ],
            }
        ],
    )
    assert [r.conditions[0].value for r in p.rules] == [0, 8]
    assert all(len(r.conditions) == 1 for r in p.rules)


def test_flags_become_filter_attributes_and_nnp_stays_ours():
    p = program(flags=["SECCOMP_FILTER_FLAG_LOG", "SECCOMP_FILTER_FLAG_SPEC_ALLOW"])
    assert (S.ATTR_CTL_NNP, 0) in p.attributes  # no_new_privs is process.noNewPrivileges' job
    assert (S.ATTR_CTL_LOG, 1) in p.attributes
    assert (S.ATTR_CTL_SSB, 1) in p.attributes
    p = program(flags=["SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV"])
    assert any("flags[0]" in n for n in p.notes)


def test_compiled_filter_mentions_the_rules():
    p = program(
        architectures=["SCMP_ARCH_X86_64", "SCMP_ARCH_X86"],
        syscalls=[
            {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": errno.EPERM},
            {
                "names": ["socket"],
                "action": "SCMP_ACT_ERRNO",
                "errnoRet": errno.EAFNOSUPPORT,
                "args": [{"index": 0, "value": 40, "op": "SCMP_CMP_EQ"}],
            },
            {
                "names": ["clone"],
                "action": "SCMP_ACT_KILL_PROCESS",
                "args": [
                    {
                        "index": 0,
                        "value": 0x10000000,
                        "valueTwo": 0x10000000,
                        "op": "SCMP_CMP_MASKED_EQ",
                    }
                ],
            },
        ],
    )
    text = pfc(p)
    assert 'filter for syscall "mkdir"' in text
    assert 'filter for syscall "mkdirat"' in text
    assert f"action ERRNO({errno.EPERM});" in text
    assert f"action ERRNO({errno.EAFNOSUPPORT});" in text
    assert "$a0 == 40" in text or "$a0.lo32 == 40" in text
    assert "& 0x10000000" in text  # the masked comparison
    assert "action KILL_PROCESS;" in text
    assert "filter for arch x86 " in text  # the second architecture got its own filter
    assert "action ALLOW;" in text  # the default


def test_bpf_export_is_a_sock_filter_array():
    with S.Filter(program(syscalls=[{"names": ["mkdir"], "action": "SCMP_ACT_ERRNO"}])) as f:
        bpf = f.export_bpf()
    assert bpf and len(bpf) % 8 == 0  # struct sock_filter is 8 bytes


def test_filter_release_is_idempotent_and_needs_no_fd():
    before = set(os.listdir("/proc/self/fd"))
    f = S.Filter(program())
    f.export_pfc()
    f.release()
    f.release()
    assert set(os.listdir("/proc/self/fd")) == before


# --- the default profile ------------------------------------------------------------------------


def test_default_profile_resolves_completely_on_this_host():
    p = S.plan_seccomp(profile.default_profile())
    assert p.notes == ()
    assert p.default_action == S.ACT_ERRNO | errno.EPERM


def test_default_profile_lists_are_disjoint_and_unique():
    assert not set(profile.ALLOWED) & set(profile.DENIED)
    assert len(set(profile.ALLOWED)) == len(profile.ALLOWED)


def test_default_profile_architectures_for_this_machine():
    assert profile.default_profile("x86_64")["architectures"] == [
        "SCMP_ARCH_X86_64",
        "SCMP_ARCH_X86",
        "SCMP_ARCH_X32",
    ]
    assert profile.default_profile("aarch64")["architectures"][0] == "SCMP_ARCH_AARCH64"
    assert profile.default_profile("unknown")["architectures"] == []


def test_default_profile_compiles_without_the_dangerous_calls():
    text = pfc(S.plan_seccomp(profile.default_profile()))
    for name in ("read", "execve", "setresuid", "capset", "close_range", "openat2"):
        assert f'filter for syscall "{name}"' in text
    for name in profile.DENIED:
        if name in ("clone", "clone3", "personality"):
            continue
        assert f'filter for syscall "{name}"' not in text, name
    assert f"action ERRNO({errno.ENOSYS});" in text  # clone3
    assert f"& 0x{profile.CLONE_NAMESPACE_FLAGS:08x}" in text  # clone's namespace flags


DENY_MKDIR = {
    "defaultAction": "SCMP_ACT_ALLOW",
    "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}],
}


def test_compiled_is_made_once_then_read_from_the_cache(tmp_path, monkeypatch):
    program = S.plan_seccomp(DENY_MKDIR)
    first = S.compiled(program, str(tmp_path / "cache"))
    assert first.bpf and len(first.bpf) % 8 == 0
    assert first.replace(bpf=None) == program  # only the filter was added

    def no_libseccomp(*_args):
        raise AssertionError("compiled again")

    monkeypatch.setattr(S, "Filter", no_libseccomp)
    assert S.compiled(program, str(tmp_path / "cache")).bpf == first.bpf


def test_a_damaged_cache_entry_is_compiled_again(tmp_path):
    program = S.plan_seccomp(DENY_MKDIR)
    good = S.compiled(program, str(tmp_path)).bpf
    (entry,) = tmp_path.iterdir()
    entry.write_bytes(b"\0" * 7)  # not whole instructions
    assert S.compiled(program, str(tmp_path)).bpf == good
    assert entry.read_bytes() == good


def test_the_cache_key_follows_the_program():
    a = S.plan_seccomp(DENY_MKDIR)
    b = S.plan_seccomp(DENY_MKDIR | {"flags": ["SECCOMP_FILTER_FLAG_LOG"]})
    assert S.cache_key(a) == S.cache_key(S.plan_seccomp(DENY_MKDIR))
    assert S.cache_key(a) != S.cache_key(b)
    assert b.kernel_flags() == 2 and a.kernel_flags() == 0


def test_the_cache_makes_a_missing_root_private(tmp_path):
    root = tmp_path / "root"
    S.compiled(S.plan_seccomp(DENY_MKDIR), str(root / "@seccomp"))
    assert root.stat().st_mode & 0o777 == 0o700
    assert (root / "@seccomp").stat().st_mode & 0o777 == 0o700


def test_to_prune_takes_old_temp_files_and_the_least_recently_used_beyond_the_limit():
    entries = [
        ("a.bpf", 100.0),
        ("b.bpf", 300.0),
        ("c.bpf", 200.0),
        ("c.bpf.41.tmp", 1000.0 - S.TMP_GRACE - 1),  # a killed runtime's, long ago
        ("d.bpf.42.tmp", 1000.0 - 1),  # another runtime is writing it now
        ("README", 0.0),  # not the cache's: left alone
    ]
    assert sorted(S.to_prune(entries, limit=1, now=1000.0)) == ["a.bpf", "c.bpf", "c.bpf.41.tmp"]
    assert S.to_prune(entries, limit=3, now=1000.0) == ["c.bpf.41.tmp"]
    assert S.to_prune([], limit=0, now=0.0) == []


def test_the_cache_stays_bounded_and_keeps_what_was_used_last(tmp_path):
    cache = tmp_path / "cache"
    programs = [
        S.plan_seccomp(
            {
                "defaultAction": "SCMP_ACT_ALLOW",
                "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_ERRNO", "errnoRet": e}],
            }
        )
        for e in range(1, 5)
    ]
    for i, p in enumerate(programs[:3]):
        S.compiled(p, str(cache))
        os.utime(cache / f"{S.cache_key(p)}.bpf", (i + 1.0, i + 1.0))  # 0 oldest
    S.compiled(programs[0], str(cache))  # a hit makes the oldest the newest
    (cache / "x.bpf.1.tmp").write_bytes(b"")
    os.utime(cache / "x.bpf.1.tmp", (1.0, 1.0))
    S.prune_cache(str(cache), limit=2)
    left = sorted(e.name for e in cache.iterdir())
    assert left == sorted(f"{S.cache_key(p)}.bpf" for p in (programs[0], programs[2]))
    S.compiled(programs[3], str(cache))  # a miss prunes with the default limit
    assert len(list(cache.iterdir())) == 3
