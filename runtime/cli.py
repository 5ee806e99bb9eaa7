"""`pinnace-oci`: the OCI runtime's command line, in runc's grammar.

Reserved: the commands (create, start, state, kill, delete, exec, ...) arrive
with the OCI runtime (issue 4). Until then every command exits non-zero with
a message saying so, as an engine driving it would need to see.
"""

from __future__ import annotations

import click

from pinnace import __version__

RUNC_COMMANDS = (
    "create",
    "start",
    "run",
    "state",
    "list",
    "kill",
    "delete",
    "exec",
    "pause",
    "resume",
    "ps",
    "events",
    "update",
    "spec",
    "features",
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="pinnace-oci")
def main() -> None:
    """Pinnace's OCI runtime, driven like runc (create, start, state, kill, delete...).

    Not implemented yet: this entry point is reserved for the runc-compatible CLI.
    """


def _reserved(name: str) -> click.Command:
    @click.command(name=name, context_settings={"ignore_unknown_options": True})
    @click.argument("args", nargs=-1, type=click.UNPROCESSED)
    def cmd(args: tuple[str, ...]) -> None:
        raise click.ClickException(f"'{name}' is not implemented yet in this Pinnace release")

    cmd.help = f"(not implemented yet) runc's `{name}`."
    return cmd


for _name in RUNC_COMMANDS:
    main.add_command(_reserved(_name))
