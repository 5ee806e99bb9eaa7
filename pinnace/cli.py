"""The `pinnace` command line."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import click

from pinnace import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="pinnace")
@click.option(
    "--root",
    type=click.Path(path_type=Path),
    default="/var/lib/pinnace",
    show_default=True,
    help="Image store directory.",
)
@click.option(
    "--registry-config",
    type=click.Path(path_type=Path),
    default=None,
    help="Registry hosts YAML (default /etc/pinnace/registries.yaml when present).",
)
@click.option("--runtime-root", default="/run/pinnace-oci", hidden=True)
@click.option("--run-dir", type=click.Path(path_type=Path), default=None, hidden=True)
@click.pass_context
def main(
    ctx: click.Context,
    root: Path,
    registry_config: Path | None,
    runtime_root: str,
    run_dir: Path | None,
) -> None:
    """Pinnace: a Linux container runtime, a CRI server and a small orchestrator.

    Run as root. Start with `pinnace check` to see what this host supports.
    """
    from pinnace.image_cli import Settings

    ctx.obj = Settings(
        root=root,
        registry_config=registry_config,
        runtime_root=runtime_root,
        run_dir=run_dir if run_dir is not None else Path("/run/pinnace/containers"),
    )


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


def _register_image() -> None:
    from pinnace.image_cli import image

    main.add_command(image)


_register_image()


@main.command(context_settings={"allow_interspersed_args": False})
@click.option("--rm", "remove", is_flag=True, help="Delete the container when it exits.")
@click.option("--name", help="Container id (default: a random one).")
@click.option("-e", "--env", multiple=True, help="K=V (or K: the host's value).")
@click.option("-v", "--volume", multiple=True, help="SRC:DST[:ro] bind mount.")
@click.option("--memory", help="Memory limit (20m, 1g), swap included.")
@click.option("--cpus", type=float, help="CPU quota in CPUs (0.5).")
@click.option("--pids-limit", type=int, help="Most processes the container may have.")
@click.option("-w", "--workdir", help="Working directory inside the container.")
@click.option("-u", "--user", help="USER[:GROUP] (names from the image's /etc/passwd).")
@click.option("--entrypoint", help="Replace the image's ENTRYPOINT (and clear its CMD).")
@click.option("--platform", help="os/arch[/variant] for a pull.")
@click.option("-i", "--interactive", is_flag=True, help="Keep stdin attached.")
@click.option("-t", "--tty", "use_tty", is_flag=True, help="Give the container a terminal.")
@click.argument("image_ref", metavar="IMAGE")
@click.argument("cmd", nargs=-1, type=click.UNPROCESSED)
def run(
    remove: bool,
    name: str | None,
    env: tuple[str, ...],
    volume: tuple[str, ...],
    memory: str | None,
    cpus: float | None,
    pids_limit: int | None,
    workdir: str | None,
    user: str | None,
    entrypoint: str | None,
    platform: str | None,
    interactive: bool,
    use_tty: bool,
    image_ref: str,
    cmd: tuple[str, ...],
) -> None:
    """Run a command in a new container from IMAGE; exit with its exit code.

    The image is pulled first when it is not in the store and its reference
    names a registry.
    """
    from pinnace.image_cli import friendly_errors

    if not interactive:  # as docker: the container's stdin is /dev/null without -i
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
    sys.exit(
        friendly_errors(_run)(
            image_ref,
            platform,
            dict(
                cmd=list(cmd),
                name=name,
                rm=remove,
                env=list(env),
                volumes=list(volume),
                memory=memory,
                cpus=cpus,
                pids_limit=pids_limit,
                workdir=workdir,
                user=user,
                entrypoint=entrypoint,
                tty=use_tty,
            ),
        )
    )


def _run(image_ref: str, platform: str | None, kw: dict[str, Any]) -> int:
    from images.store import ImageNotFoundError
    from pinnace import run as runmod
    from pinnace.image_cli import find_image, parse_platform, pull_image, settings

    s = settings()
    store = s.store()
    try:
        try:
            img = find_image(store, image_ref)
        except ImageNotFoundError:
            first = image_ref.split("/", 1)[0]
            if "/" not in image_ref or (not any(c in first for c in ".:") and first != "localhost"):
                raise  # no registry named: Docker Hub is not implied (no network needed)
            click.echo(f"{image_ref}: not in the store, pulling", err=True)
            img = pull_image(s, store, image_ref, parse_platform(platform), quiet=False)
        opts = runmod.RunOptions(**kw)
        return runmod.run(store, img, opts, runmod.Paths(s.run_dir, s.runtime_root))
    finally:
        store.close()


@main.command()
@click.option("-a", "--all", "show_all", is_flag=True, help="Stopped containers too.")
@click.option("-q", "--quiet", is_flag=True, help="IDs only.")
@click.option("-o", "--output", type=click.Choice(["text", "json"]), default="text")
def ps(show_all: bool, quiet: bool, output: str) -> None:
    """List containers."""
    from pinnace import run as runmod
    from pinnace.image_cli import settings

    s = settings()
    rows = runmod.containers(runmod.Paths(s.run_dir, s.runtime_root))
    if not show_all:
        rows = [r for r in rows if r["status"] != "stopped"]
    if quiet:
        for r in rows:
            click.echo(r["id"])
    elif output == "json":
        click.echo(json.dumps(rows, indent=2))
    else:
        table = [("CONTAINER ID", "IMAGE", "STATUS", "PID")]
        table += [(r["id"], r["image"], r["status"], str(r["pid"])) for r in rows]
        widths = [max(len(t[i]) for t in table) for i in range(4)]
        for t in table:
            click.echo("  ".join(c.ljust(w) for c, w in zip(t, widths, strict=True)).rstrip())


@main.command("rm")
@click.option("-f", "--force", is_flag=True, help="Kill the container first if it runs.")
@click.argument("ids", nargs=-1, required=True)
def rm(force: bool, ids: tuple[str, ...]) -> None:
    """Delete containers: runtime state, cgroup, root mount, snapshot, bundle."""
    from pinnace import run as runmod
    from pinnace.image_cli import settings
    from runtime.errors import RuntimeFailure

    s = settings()
    failed = False
    for cid in ids:
        try:
            runmod.remove(cid, runmod.Paths(s.run_dir, s.runtime_root), force=force)
        except (RuntimeFailure, runmod.RunError, OSError) as exc:
            click.echo(f"pinnace rm {cid}: {exc}", err=True)
            failed = True
            continue
        click.echo(cid)
    sys.exit(1 if failed else 0)


@main.command()
@click.option(
    "--busybox",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=Path("/bin/busybox"),
    show_default=True,
    help="A statically linked busybox to build the image from (Debian: busybox-static).",
)
def demo(busybox: Path) -> None:
    """Build a busybox image locally, import it and run a container from it.

    Offline: no registry, no network. The image stays in the store, so
    `pinnace run --rm busybox echo hello` works afterwards.
    """
    from pinnace.image_cli import friendly_errors

    sys.exit(friendly_errors(_demo)(busybox))


def _demo(busybox: Path) -> int:
    from pinnace import run as runmod
    from pinnace.demo import DEMO_SCRIPT, ensure_busybox_image
    from pinnace.image_cli import settings

    s = settings()
    store = s.store()
    try:
        img, built = ensure_busybox_image(store, busybox)
        if built:
            click.echo(f"built and imported {img.name} from {busybox} (no registry)", err=True)
        opts = runmod.RunOptions(cmd=["sh", "-c", DEMO_SCRIPT], rm=True)
        return runmod.run(store, img, opts, runmod.Paths(s.run_dir, s.runtime_root))
    finally:
        store.close()


@main.command()
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="YAML settings (socket, state_dir, run_dir, runtime_root, image_root, ...).",
)
def cri(config_path: str | None) -> None:
    """Serve the Kubernetes CRI v1 API (RuntimeService, ImageService) on a unix socket.

    Default socket: unix:///run/pinnace/pinnace.sock. Containers keep running
    when the server stops or is killed; a restarted server recovers them.
    """
    from cri.server import main as serve_main

    sys.exit(serve_main(config_path))
