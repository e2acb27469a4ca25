"""The Ollama deploy: a pinned Ollama release run as a service, and the fleet's models.

- **Linux** (Debian, Ubuntu; x86_64, arm64): curl (and zstd) from apt, the release archive
  verified and unpacked to /usr/local, an `ollama` system user (in `render`/`video` when they
  exist) with its data in /var/lib/ollama, our own hardened `ollama.service` with the settings in a
  drop-in, a restart only when the binary, unit or settings changed, then a bounded wait for
  `GET /`. GPU drivers are `deploys/gpu.py`'s job, never this deploy's.
- **macOS** (Apple silicon, Intel; SSH or `@local`, never sudo): the release's `ollama-darwin.tgz`
  in `~/.servekit/ollama/<version>`, our own LaunchAgent with the settings in its
  `EnvironmentVariables`, loaded with `launchctl bootstrap`/`kickstart`, models in `~/.ollama`.
  A `brew services` Ollama (Homebrew found on its real path) is stopped, as it holds the port.
- **Models**: pulled through the API on the host (only the missing ones), undeclared ones deleted
  with `prune`.

Where the settings come from, in order: the host's servekit data (an inventory that calls
`pyinfra_groups`); else a fleet file named by `--data servekit_fleet=PATH` or `$SERVEKIT_FLEET`;
else the deploy's default (`inventories/laptop.py`). From a fleet file, `@local` takes the plan of
the fleet's `LocalHost`, another host the machine of its name. The deploy says which it used.
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Callable
from io import StringIO
from pathlib import Path

from pyinfra import logger
from pyinfra.api.deploy import deploy
from pyinfra.api.operation import OperationMeta
from pyinfra.connectors.local import LocalConnector
from pyinfra.context import host
from pyinfra.facts.deb import DebPackages
from pyinfra.facts.files import Directory
from pyinfra.facts.server import Arch, Groups, Home, Kernel, Which
from pyinfra.facts.systemd import SystemdStatus
from pyinfra.operations import apt, files, server, systemd

from servekit import ollama
from servekit.credentials import MAC_NETRC, NETRC_FILE
from servekit.deploys import launchd, ollama_models, ollama_ops
from servekit.deploys.common import each, problem
from servekit.deploys.credentials import mirror_login_files
from servekit.deploys.firewall import firewall_ops
from servekit.errors import FleetError, Problem
from servekit.facts.macos import Homebrew, LaunchAgent, OllamaApp
from servekit.facts.ollama import DirectoryPath
from servekit.firewall import needs_firewall
from servekit.hostplan import HOST_DATA_KEY, HostPlan, OllamaHost
from servekit.inventory import load_plan
from servekit.ollama import PathEntry
from servekit.placement import FleetPlan
from servekit.render import HostFacts, RenderedFile, ollama_files
from servekit.spec import Fleet, LocalHost

FLEET_DATA_KEY = "servekit_fleet"
FLEET_ENV = "SERVEKIT_FLEET"
SAFE_URL = re.compile(r"^https?://[^\s\"'`$\\]+$")


def pick_host_plan(fleet: Fleet, plan: FleetPlan, host_name: str, local: bool) -> HostPlan:
    """The plan a host gets from a fleet file: `@local` is the fleet's LocalHost, any other host
    the machine of its name."""
    if local:
        machines = [m for m in fleet.machines if isinstance(m, LocalHost)]
        if not machines:
            raise FleetError(
                [
                    Problem(
                        "machines",
                        "this is @local, and the fleet declares no LocalHost",
                        "add LocalHost(...) to the fleet's machines, or name the fleet file of "
                        "this machine",
                    )
                ],
                fleet=fleet.name,
            )
        return plan.hosts[machines[0].name]
    if host_name in plan.hosts:
        return plan.hosts[host_name]
    raise FleetError(
        [
            Problem(
                "machines",
                f"no machine is named {host_name!r}",
                f"use one of {', '.join(plan.hosts)}, or an inventory made with pyinfra_groups",
            )
        ],
        fleet=fleet.name,
    )


def find_host_plan(default_fleet: str | None) -> tuple[HostPlan, str]:
    """This host's plan and a sentence saying where it came from."""
    raw = host.data.get(HOST_DATA_KEY)
    if raw is not None:
        return HostPlan.from_host_data(raw), "the inventory's servekit host data"
    if host.data.get(FLEET_DATA_KEY):
        path, origin = str(host.data.get(FLEET_DATA_KEY)), f"--data {FLEET_DATA_KEY}"
    elif os.environ.get(FLEET_ENV):
        path, origin = os.environ[FLEET_ENV], f"${FLEET_ENV}"
    elif default_fleet:
        path, origin = default_fleet, "the deploy's default fleet file"
    else:
        raise FleetError(
            [
                Problem(
                    FLEET_DATA_KEY,
                    "this host has no servekit data and no fleet file is named",
                    f"run with an inventory made by pyinfra_groups, or --data {FLEET_DATA_KEY}="
                    f"inventories/laptop.py, or set {FLEET_ENV}",
                )
            ]
        )
    fleet, fleet_plan = load_plan(path)
    local = issubclass(host.connector_cls, LocalConnector)
    plan = pick_host_plan(fleet, fleet_plan, host.name, local)
    return plan, f"{path} ({origin}; fleet {fleet.name!r}, machine {plan.name!r})"


def any_changed(*operations: OperationMeta) -> Callable[[], bool]:
    return lambda: any(op.did_change() for op in operations)


def put(file: RenderedFile, name: str, sudo: bool, owner: bool = True) -> OperationMeta:
    """Upload a rendered file as it is rendered (the same bytes `servekit render` shows)."""
    if owner:
        return files.put(
            name=name,
            src=StringIO(file.content),
            dest=file.path,
            user=file.user,
            group=file.group,
            mode=file.mode,
            _sudo=sudo,
        )
    return files.put(
        name=name, src=StringIO(file.content), dest=file.path, mode=file.mode, _sudo=sudo
    )


@deploy("Ollama")
def ollama_host(default_fleet: str | None = None) -> None:
    """
    Install the fleet's pinned Ollama on this host, run it as a service, and sync its models.

    + default_fleet: the fleet file to read when the host carries no servekit data and none is
      named (`deploys/ollama.py` passes `inventories/laptop.py`)
    """
    plan, source = find_host_plan(default_fleet)
    logger.info(f"{host.print_prefix}servekit: Ollama settings from {source}")
    settings = plan.ollama
    if settings is None:
        logger.warning(f"{host.print_prefix}the fleet serves no Ollama model here: nothing to do")
        return
    base_url = plan.sources.ollama_releases
    if not SAFE_URL.match(base_url):
        problem(
            name="Ollama release mirror",
            message=f"sources.ollama_releases must be an http(s) URL, not {base_url!r}",
        )
        return
    if "@" in base_url.split("/")[2]:  # never shown: it holds a password
        problem(
            name="Ollama release mirror",
            message="sources.ollama_releases carries a login (user:password@): put it in "
            "Sources(mirror_credentials=SecretRef(file=...)), a netrc file servekit writes 0600",
        )
        return
    kernel = host.get_fact(Kernel)
    expected = "Darwin" if plan.os == "macos" else "Linux"
    if kernel != expected:
        problem(
            name="Operating system",
            message=f"the fleet declares os={plan.os!r} for {plan.name!r} but the host runs "
            f"{kernel}: fix the machine's os in the fleet",
        )
        return
    # Linux changes the system (sudo unless root); macOS the user's home, never with sudo.
    if plan.os == "macos":
        _macos(plan, settings, base_url)
    else:
        _linux(plan, settings, base_url, plan.sudo)


def _linux(plan: HostPlan, settings: OllamaHost, base_url: str, sudo: bool) -> None:
    version = settings.version
    if not host.get_fact(Which, command="apt-get"):
        problem(
            name="Supported systems",
            message="servekit installs Ollama on Debian and Ubuntu (apt); this host has no apt-get",
        )
        return
    if not host.get_fact(Directory, path="/run/systemd/system"):
        problem(
            name="Needs systemd",
            message="servekit runs Ollama as a systemd service, and this host was not booted "
            "with systemd (a container, or WSL without systemd=true in /etc/wsl.conf)",
            _sudo=sudo,
        )
        return
    try:
        arch = ollama.go_arch(host.get_fact(Arch))
    except ollama.ReleaseError as error:
        problem(name="Supported architectures", message=str(error))
        return
    if plan.gpu_model and plan.gpu_count and not host.get_fact(Which, command="nvidia-smi"):
        logger.warning(
            f"{host.print_prefix}{plan.gpu_model} declared but no NVIDIA driver found: Ollama runs "
            "on the CPU until deploys/gpu.py has installed the driver"
        )

    packages = list(ollama.LINUX_PACKAGES)
    if ollama.asset_name(version, "linux", arch).endswith(".tar.zst"):
        packages.append("zstd")
    installed = host.get_fact(DebPackages) or {}
    missing = [p for p in packages if p not in installed]
    apt.packages(
        name="Install curl and zstd",
        _sudo=sudo,
        packages=packages,
        update=bool(missing),
        cache_time=3600,
        no_recommends=True,
    )

    user, home = ollama.SERVICE_USER, ollama.SERVICE_HOME
    gpu_groups = [g for g in ollama.GPU_GROUPS if g in host.get_fact(Groups)]
    models_dir = settings.env.get("OLLAMA_MODELS", f"{home}/models")
    for path in dict.fromkeys([home, models_dir]):
        if reason := ollama.data_dir_problem(path):
            problem(
                name="Ollama data directory",
                _sudo=sudo,
                message=f"refusing ollama.models_dir: {reason}; set OllamaSettings(models_dir=...) "
                "to a directory of its own (/srv/ollama/models)",
            )
            return
    above: list[PathEntry] = host.get_fact(DirectoryPath, path=models_dir)
    blocked = ollama.untraversable(above, user, [user, *gpu_groups])
    if blocked:
        problem(
            name="Ollama data directory",
            _sudo=sudo,
            message=f"the {user} user cannot enter {', '.join(blocked)} on the way to "
            f"{models_dir}: give it o+x (chmod o+x {shlex.join(blocked)}) or choose "
            "another ollama.models_dir",
        )
        return
    if models_dir != ollama.INSTALL_SH_MODELS and host.get_fact(
        Directory, path=ollama.INSTALL_SH_MODELS
    ):
        logger.warning(
            f"{host.print_prefix}models of an earlier install.sh install are in "
            f"{ollama.INSTALL_SH_MODELS}; this Ollama uses {models_dir}: set "
            "OllamaSettings(models_dir=...) to keep them, or they are pulled again"
        )
    server.group(name="Create the ollama group", group=user, system=True, _sudo=sudo)
    server.user(
        name="Create the ollama user",
        _sudo=sudo,
        user=user,
        group=user,
        groups=gpu_groups,
        home=home,
        shell="/usr/sbin/nologin",
        system=True,
        ensure_home=False,
    )
    for path in each(dict.fromkeys([home, models_dir])):
        files.directory(
            name=f"Create {path}",
            _sudo=sudo,
            path=path,
            user=user,
            group=user,
            mode="750",
            recursive=False,
        )

    logins = mirror_login_files(plan.sources, [(NETRC_FILE, "netrc")], sudo=sudo)
    if logins is None:
        return
    release = ollama_ops.release(
        name=f"Install Ollama {version}",
        _sudo=sudo,
        version=version,
        base_url=base_url,
        system="linux",
        machine=host.get_fact(Arch),
        netrc=NETRC_FILE if logins else None,
    )
    if needs_firewall(plan):
        # Exposed beyond loopback: its firewall loads (commit confirmed) before it can start.
        firewall_ops(plan, _sudo=sudo)
    unit_file, dropin_file = ollama_files(plan, HostFacts())
    unit = put(unit_file, "Install ollama.service", sudo)
    dropin = put(dropin_file, "Write the Ollama settings drop-in", sudo)
    systemd.daemon_reload(name="Reload systemd", _if=any_changed(unit, dropin), _sudo=sudo)

    was_running = bool(host.get_fact(SystemdStatus, services=ollama.UNIT).get(ollama.UNIT))
    started = systemd.service(
        name="Start and enable ollama.service",
        _sudo=sudo,
        service=ollama.UNIT,
        running=True,
        enabled=True,
    )
    changed = any_changed(release, unit, dropin)
    restarted = systemd.service(
        name="Restart Ollama after a change",
        _sudo=sudo,
        service=ollama.UNIT,
        restarted=True,
        _if=lambda: was_running and changed(),
    )
    _answer_and_sync(
        settings,
        version,
        sudo,
        f"journalctl -u {ollama.UNIT} -n 30 --no-pager",
        any_changed(started, restarted),
    )


def _answer_and_sync(
    settings: OllamaHost, version: str, sudo: bool, log_command: str, restarted: Callable[[], bool]
) -> None:
    """After a (re)start wait for the API, then pull (and prune) the fleet's models through it."""
    url = ollama.api_url(settings.listen)
    ollama_ops.answers(
        name="Wait for Ollama to answer",
        _sudo=sudo,
        url=url,
        version=version,
        log_command=log_command,
        _if=restarted,
    )
    ollama_models.models(
        name="Sync the fleet's models",
        _sudo=sudo,
        models=settings.models,
        url=url,
        prune=settings.prune,
    )


def _macos(plan: HostPlan, settings: OllamaHost, base_url: str) -> None:
    version = settings.version
    home = host.get_fact(Home)
    if not home:
        problem(
            name="Home directory",
            _sudo=False,
            message="cannot tell the login user's home directory",
        )
        return
    layout = ollama.MacLayout(home, version)
    app = host.get_fact(OllamaApp)
    if app["running"]:
        problem(
            name="The Ollama app is running",
            _sudo=False,
            message="the Ollama desktop app runs its own server on Ollama's port: quit it (menu "
            "bar icon → Quit Ollama) and remove it from System Settings → Login Items, then "
            "run the deploy again",
        )
        return
    if app["installed"]:
        logger.warning(
            f"{host.print_prefix}/Applications/Ollama.app is installed: if it starts at login it "
            "takes Ollama's port before servekit's agent; remove it from the Login Items"
        )
    brew = host.get_fact(Homebrew)
    if brew is not None and brew["ollama_service_loaded"]:
        prefix = brew["prefix"]
        server.shell(
            name="Stop Homebrew's Ollama service (it holds Ollama's port)",
            _sudo=False,
            commands=[f"{shlex.quote(brew['brew'])} services stop ollama"],
            _env={
                "PATH": f"{prefix}/bin:{prefix}/sbin:/usr/bin:/bin:/usr/sbin:/sbin",
                "HOMEBREW_NO_AUTO_UPDATE": "1",
            },
        )
    if brew is not None and brew["ollama_versions"]:
        logger.warning(
            f"{host.print_prefix}Homebrew's ollama formula ({', '.join(brew['ollama_versions'])}) "
            f"is installed too; servekit runs {layout.binary} (linked as {layout.link}); "
            "`brew uninstall ollama` leaves one Ollama"
        )

    models_dir = ollama.expand_home(settings.env.get("OLLAMA_MODELS", "~/.ollama/models"), home)
    for path in each(dict.fromkeys([f"{home}/.ollama/logs", models_dir])):
        files.directory(name=f"Create {path}", path=path, _sudo=False)
    netrc = f"{home}/{MAC_NETRC}"
    logins = mirror_login_files(plan.sources, [(netrc, "netrc")], owner=None, sudo=False)
    if logins is None:
        return
    release = ollama_ops.release(
        name=f"Install Ollama {version}",
        _sudo=False,
        version=version,
        base_url=base_url,
        system="macos",
        home=home,
        netrc=netrc if logins else None,
    )
    files.link(name=f"Link {layout.link}", path=layout.link, target=layout.binary, _sudo=False)
    (plist_file,) = ollama_files(plan, HostFacts(home=home))
    plist = put(plist_file, f"Install the {ollama.LAUNCHD_LABEL} LaunchAgent", False, owner=False)

    was_loaded = host.get_fact(LaunchAgent, label=ollama.LAUNCHD_LABEL)["loaded"]
    started = launchd.agent(
        name="Load and start the Ollama agent",
        _sudo=False,
        label=ollama.LAUNCHD_LABEL,
        plist=layout.plist,
    )
    changed = any_changed(release, plist)
    reloaded = launchd.agent(
        name="Reload the Ollama agent after a change",
        _sudo=False,
        label=ollama.LAUNCHD_LABEL,
        plist=layout.plist,
        reload=True,
        _if=lambda: was_loaded and changed(),
    )
    _answer_and_sync(
        settings,
        version,
        False,
        f"tail -n 30 {shlex.quote(layout.log)}",
        any_changed(started, reloaded),
    )


def default_fleet_file(deploy_file: str) -> str:
    """`inventories/laptop.py` beside the `deploys/` folder a deploy file sits in."""
    return str(Path(deploy_file).resolve().parent.parent / "inventories" / "laptop.py")
