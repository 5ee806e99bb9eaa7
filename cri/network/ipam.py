"""Pod address allocation from one CIDR, persisted so no address is ever handed out twice.

One file per allocated address (named for the address, holding the sandbox id)
under the state dir, the layout of CNI's host-local plugin, so a restarted
server, or a second one on the same dir, sees every allocation. Every change
happens under an flock on a lock file; flock locks belong to the open file, so
two threads of one process exclude each other too. Allocation goes round-robin
from the last address handed out, so a just-freed address is not reused at once
(a stale peer may still be talking to it).
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import os
from collections.abc import Callable, Iterable, Iterator

from cri.network.driver import NetworkError
from cri.records import read_json, remove_stale_temps, write_json_atomic

LOCK_FILE = ".lock"
LAST_FILE = ".last_reserved"

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class IPAM:
    """Addresses of `cidr` (IPv4 or IPv6) minus the network, gateway and broadcast
    addresses; the gateway defaults to the first host."""

    def __init__(self, state_dir: str, cidr: str, *, gateway: str | None = None) -> None:
        try:
            self.network: Network = ipaddress.ip_network(cidr, strict=True)
        except ValueError as exc:
            raise NetworkError(f"invalid pod CIDR {cidr!r}: {exc}", invalid=True) from exc
        n = self.network
        if n.num_addresses < 4:
            raise NetworkError(
                f"pod CIDR {cidr} is too small: it has no room for pods", invalid=True
            )
        first = n.network_address + 1
        if gateway is None:
            self.gateway: Address = first
        else:
            try:
                self.gateway = ipaddress.ip_address(gateway)
            except ValueError as exc:
                raise NetworkError(f"invalid gateway {gateway!r}: {exc}", invalid=True) from exc
            if self.gateway not in n or self.gateway in (n.network_address, n.broadcast_address):
                raise NetworkError(
                    f"gateway {gateway} is not a host address of {cidr}", invalid=True
                )
        self._first = int(first)
        # IPv6 has no broadcast, but the last address is left out too, as host-local does
        self._last = int(n.broadcast_address) - 1
        self.size = self._last - self._first + 1 - (self._first <= int(self.gateway) <= self._last)
        self.state_dir = state_dir
        os.makedirs(state_dir, mode=0o700, exist_ok=True)
        with self._locked():  # a temp file is stale only when no writer holds the lock
            remove_stale_temps(state_dir)

    @property
    def prefixlen(self) -> int:
        return self.network.prefixlen

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        fd = os.open(
            os.path.join(self.state_dir, LOCK_FILE), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600
        )
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # drops the lock

    def _path(self, addr: str) -> str:
        return os.path.join(self.state_dir, addr)

    def _read_owned(self) -> dict[str, str]:
        owned: dict[str, str] = {}
        for name in os.listdir(self.state_dir):
            if name.startswith("."):
                continue
            try:
                addr = ipaddress.ip_address(name)
            except ValueError:
                continue  # not ours
            if addr not in self.network:
                continue
            try:
                sid = read_json(self._path(name))
            except FileNotFoundError:
                continue
            except ValueError:
                # written by hand or by another tool: plain text, like host-local's files
                with open(self._path(name)) as f:
                    sid = f.read().split("\n", 1)[0].strip()
            owned[str(addr)] = str(sid)
        return owned

    def owned(self) -> dict[str, str]:
        """Allocated address -> sandbox id."""
        with self._locked():
            return self._read_owned()

    def allocate(self, sandbox_id: str) -> str:
        """An address for the sandbox: the one it already has, or the next free one."""
        if not sandbox_id or "\n" in sandbox_id:
            raise NetworkError("an address needs a sandbox id", sandbox_id=sandbox_id, invalid=True)
        with self._locked():
            owned = self._read_owned()
            for addr, sid in owned.items():
                if sid == sandbox_id:
                    return addr
            taken = set(owned) | {str(self.gateway)}
            for cand in self._candidates(self._last_reserved()):
                text = str(ipaddress.ip_address(cand))
                if text not in taken:
                    write_json_atomic(self._path(text), sandbox_id)
                    write_json_atomic(os.path.join(self.state_dir, LAST_FILE), text)
                    return text
        raise NetworkError(
            f"pod CIDR {self.network} is exhausted: all {self.size} "
            f"addresses are allocated (see {self.state_dir})",
            sandbox_id=sandbox_id,
        )

    def _last_reserved(self) -> int | None:
        try:
            last = int(
                ipaddress.ip_address(str(read_json(os.path.join(self.state_dir, LAST_FILE))))
            )
        except (FileNotFoundError, ValueError):
            return None
        return last if self._first <= last <= self._last else None

    def _candidates(self, last: int | None) -> Iterable[int]:
        """Every usable address once, starting after `last` and wrapping around."""
        start = self._first if last is None or last >= self._last else last + 1
        yield from range(start, self._last + 1)
        yield from range(self._first, start)

    def release(self, sandbox_id: str) -> list[str]:
        """Free the sandbox's addresses (none is fine); the ones freed."""
        with self._locked():
            return self._release(lambda sid: sid == sandbox_id)

    def reconcile(self, live_ids: Iterable[str]) -> list[str]:
        """Free every address of a sandbox not in `live_ids`; the addresses freed."""
        live = set(live_ids)
        with self._locked():
            return self._release(lambda sid: sid not in live)

    def _release(self, match: Callable[[str], bool]) -> list[str]:
        freed = []
        for addr, sid in self._read_owned().items():
            if match(sid):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self._path(addr))
                freed.append(addr)
        return freed
