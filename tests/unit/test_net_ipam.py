"""IPAM: addresses of a CIDR, persisted per address, never handed out twice."""

from __future__ import annotations

import ipaddress
import os
import threading
from pathlib import Path

import pytest

from cri.network.driver import NetworkError
from cri.network.ipam import IPAM


def test_skips_network_gateway_and_broadcast(tmp_path: Path) -> None:
    ipam = IPAM(str(tmp_path), "10.1.0.0/29")  # hosts .1-.6, .1 the gateway
    got = [ipam.allocate(f"sb{i}") for i in range(5)]
    assert got == [f"10.1.0.{i}" for i in range(2, 7)]
    assert str(ipam.gateway) == "10.1.0.1"
    with pytest.raises(NetworkError, match=r"10\.1\.0\.0/29 is exhausted: all 5 addresses"):
        ipam.allocate("one-too-many")


def test_explicit_gateway_is_skipped(tmp_path: Path) -> None:
    ipam = IPAM(str(tmp_path), "10.1.0.0/29", gateway="10.1.0.6")
    got = {ipam.allocate(f"sb{i}") for i in range(5)}
    assert got == {f"10.1.0.{i}" for i in range(1, 6)}


def test_allocate_is_idempotent_and_persisted(tmp_path: Path) -> None:
    ipam = IPAM(str(tmp_path), "10.1.0.0/24")
    a = ipam.allocate("abc")
    assert ipam.allocate("abc") == a
    assert ipam.owned() == {a: "abc"}
    assert (tmp_path / a).is_file()
    # a new instance (a restarted server) sees the same allocation
    assert IPAM(str(tmp_path), "10.1.0.0/24").allocate("abc") == a


def test_release_is_idempotent(tmp_path: Path) -> None:
    ipam = IPAM(str(tmp_path), "10.1.0.0/24")
    a = ipam.allocate("abc")
    assert ipam.release("abc") == [a]
    assert ipam.release("abc") == []
    assert ipam.owned() == {}
    assert not (tmp_path / a).exists()


def test_round_robin_does_not_reuse_a_freed_address_at_once(tmp_path: Path) -> None:
    ipam = IPAM(str(tmp_path), "10.1.0.0/29")
    a = ipam.allocate("a")
    ipam.release("a")
    b = ipam.allocate("b")
    assert b != a
    # wraps around to the start once the end is reached
    for i in range(3):
        ipam.allocate(f"x{i}")
    ipam.release("b")
    assert ipam.allocate("c") == a


def test_round_robin_survives_restart(tmp_path: Path) -> None:
    IPAM(str(tmp_path), "10.1.0.0/24").allocate("a")
    IPAM(str(tmp_path), "10.1.0.0/24").release("a")
    assert IPAM(str(tmp_path), "10.1.0.0/24").allocate("b") == "10.1.0.3"


def test_reconcile_releases_dead_sandboxes(tmp_path: Path) -> None:
    ipam = IPAM(str(tmp_path), "10.1.0.0/24")
    a, b, c = (ipam.allocate(s) for s in ("a", "b", "c"))
    assert sorted(ipam.reconcile(["b"])) == sorted([a, c])
    assert ipam.owned() == {b: "b"}


def test_ipv6(tmp_path: Path) -> None:
    ipam = IPAM(str(tmp_path), "fd00:85::/120")
    assert str(ipam.gateway) == "fd00:85::1"
    assert ipam.allocate("a") == "fd00:85::2"


def test_ignores_foreign_files_and_plain_text_ids(tmp_path: Path) -> None:
    (tmp_path / "README").write_text("not an address")
    (tmp_path / "10.9.9.9").write_text("other range\n")
    (tmp_path / "10.1.0.2").write_text("hand-written\n")  # host-local's format
    ipam = IPAM(str(tmp_path), "10.1.0.0/24")
    assert ipam.owned() == {"10.1.0.2": "hand-written"}
    assert ipam.allocate("a") == "10.1.0.3"


def test_stale_temp_files_are_removed(tmp_path: Path) -> None:
    (tmp_path / ".10.1.0.2.123.456.tmp").write_text('"half')
    IPAM(str(tmp_path), "10.1.0.0/24")
    assert not (tmp_path / ".10.1.0.2.123.456.tmp").exists()


@pytest.mark.parametrize(
    ("cidr", "gateway", "msg"),
    [
        ("10.1.0.0/33", None, "invalid pod CIDR"),
        ("10.1.0.1/24", None, "invalid pod CIDR"),  # host bits set
        ("nonsense", None, "invalid pod CIDR"),
        ("10.1.0.0/31", None, "too small"),
        ("10.1.0.0/24", "10.2.0.1", "not a host address"),
        ("10.1.0.0/24", "10.1.0.255", "not a host address"),
        ("10.1.0.0/24", "x", "invalid gateway"),
    ],
)
def test_bad_config(tmp_path: Path, cidr: str, gateway: str | None, msg: str) -> None:
    with pytest.raises(NetworkError, match=msg) as e:
        IPAM(str(tmp_path), cidr, gateway=gateway)
    assert e.value.invalid


def test_threads_never_share_an_address(tmp_path: Path) -> None:
    # two instances on one dir stand for two server processes; 16 threads each
    ipams = [IPAM(str(tmp_path), "10.1.0.0/24"), IPAM(str(tmp_path), "10.1.0.0/24")]
    got: dict[str, str] = {}
    lock = threading.Lock()
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            for i in range(12):
                sid = f"t{n}-{i}"
                a = ipams[n % 2].allocate(sid)
                with lock:
                    assert a not in got, f"{a} given to {got.get(a)} and {sid}"
                    got[a] = sid
                if i % 3 == 0:  # some churn: release and allocate again
                    with lock:
                        del got[a]
                    ipams[(n + 1) % 2].release(sid)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert ipams[0].owned() == {a: s for a, s in got.items()}
    assert len(got) == 16 * 8
    assert all(ipaddress.ip_address(a) in ipams[0].network for a in got)
    assert not [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]


def test_exhaustion_under_concurrency_gives_each_address_once(tmp_path: Path) -> None:
    ipam = IPAM(str(tmp_path), "10.1.0.0/28")  # 13 usable
    results: list[str] = []
    failures: list[NetworkError] = []
    lock = threading.Lock()

    def work(n: int) -> None:
        try:
            a = IPAM(str(tmp_path), "10.1.0.0/28").allocate(f"s{n}")
            with lock:
                results.append(a)
        except NetworkError as exc:
            with lock:
                failures.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 13 and len(set(results)) == 13
    assert len(failures) == 7
    assert all("exhausted" in str(f) and f.sandbox_id for f in failures)
    assert len(ipam.owned()) == 13
