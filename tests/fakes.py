"""A recording fake of namespaces.syscalls.Syscalls, for unit tests of pure logic."""

from namespaces.syscalls import SyscallError


class RecordingSyscalls:
    """Records every call as (name, args); answers as configured.

    `answers[name]` is a return value, a 1-tuple `(errno,)` to raise
    SyscallError, or a dict keyed by the first argument holding either.
    """

    def __init__(self, **answers):
        self.answers = answers
        self.calls = []

    def names(self):
        return [name for name, _ in self.calls]

    def __getattr__(self, name):
        def call(*args):
            self.calls.append((name, args))
            answer = self.answers.get(name, 0)
            if isinstance(answer, dict):
                answer = answer.get(args[0], 0)
            if isinstance(answer, tuple):
                raise SyscallError(answer[0], name, str(args[1]) if len(args) > 1 else None)
            return answer

        return call
