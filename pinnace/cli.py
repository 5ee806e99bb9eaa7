"""The `pinnace` command line."""

from __future__ import annotations

import sys

import click

from pinnace import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="pinnace")
def main() -> None:
    """Pinnace: a Linux container runtime, a CRI server and a small orchestrator.

    Run as root. Start with `pinnace check` to see what this host supports.
    """


@main.command()
@click.option(
    "-o",
    "--output",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="Report format; json is for scripts.",
)
def check(output: str) -> None:
    """Report what this host supports for containers, each with yes/no and why.

    Probes the running kernel (namespaces, cgroup v2 and its controllers,
    overlayfs, idmapped mounts, seccomp, openat2, pidfd) in throw-away child
    processes; nothing is left behind. Exits 0 when containers can run here,
    1 when something required is missing.
    """
    from pinnace import hostcheck

    report = hostcheck.run()
    if output == "json":
        click.echo(report.to_json())
    else:
        click.echo(hostcheck.render_text(report, color=sys.stdout.isatty()), nl=False)
    sys.exit(0 if report.ready else 1)
