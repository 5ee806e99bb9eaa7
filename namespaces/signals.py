"""Signal numbers and the few signal calls the verbs make, without `import signal`.

`signal` wraps the C module `_signal` in IntEnums, which costs ~4 ms of
`enum` import per process here; `kill` and `delete` run once per container
stop. The C module has the same numbers and functions.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    import signal as _sig
else:
    try:
        import _signal as _sig
    except ImportError:  # pragma: no cover - CPython always has it
        import signal as _sig

SIGCHLD: int = _sig.SIGCHLD
SIGHUP: int = _sig.SIGHUP
SIGINT: int = _sig.SIGINT
SIGQUIT: int = _sig.SIGQUIT
SIGKILL: int = _sig.SIGKILL
SIGUSR1: int = _sig.SIGUSR1
SIGUSR2: int = _sig.SIGUSR2
SIGTERM: int = _sig.SIGTERM
SIGWINCH: int = _sig.SIGWINCH
SIGPIPE: int = _sig.SIGPIPE
SIGXFSZ: int = _sig.SIGXFSZ
NSIG: int = _sig.NSIG
SIG_DFL = _sig.SIG_DFL
SIG_SETMASK: int = _sig.SIG_SETMASK

pidfd_send_signal = _sig.pidfd_send_signal
set_handler = _sig.signal
pthread_sigmask = _sig.pthread_sigmask


def number(name: str) -> int | None:
    """The number of "SIGTERM" (as signal.Signals names them), None if there is none."""
    if not name.isupper() or not name.startswith("SIG") or name.startswith("SIG_"):
        return None
    value = getattr(_sig, name, None)
    return int(value) if isinstance(value, int) else None
