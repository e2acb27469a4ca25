"""Ollama on macOS (Apple silicon, Intel; SSH or `@local`, never sudo), in named steps: make way
(the Ollama app and a `brew services` Ollama hold its port), install the release's
`ollama-darwin.tgz` in `~/.servekit/ollama/<version>`, run servekit's LaunchAgent with the
settings in its `EnvironmentVariables` (loaded with `launchctl bootstrap`/`kickstart`), then wait
for the API and sync the models (kept in `~/.ollama`).
"""

from __future__ import annotations

import shlex

from pyinfra import logger
from pyinfra.context import host
from pyinfra.facts.server import Home
from pyinfra.operations import files, server

from servekit import ollama
from servekit.credentials import MAC_NETRC
from servekit.facts.macos import Homebrew, LaunchAgent, OllamaApp
from servekit.hostplan import HostPlan, OllamaHost
from servekit.ollama.files import ollama_files
from servekit.operations.common import each, problem
from servekit.operations.credentials import mirror_login_files
from servekit.operations.launchd import agent
from servekit.operations.ollama import answer_and_sync, release
from servekit.operations.rendered import any_changed, put
from servekit.render import HostFacts


def macos_agent(plan: HostPlan, settings: OllamaHost, base_url: str) -> None:
    """Every step of an Ollama LaunchAgent on a Mac; a step that stops the host ends it."""
    home = host.get_fact(Home)
    if not home:
        problem(
            name="Home directory",
            _sudo=False,
            message="cannot tell the login user's home directory",
        )
        return
    layout = ollama.MacLayout(home, settings.version)
    if not app_out_of_the_way():
        return
    homebrew_out_of_the_way(layout)
    install_and_run(plan, settings, base_url, layout)


def app_out_of_the_way() -> bool:
    """False (after stopping the host) while the Ollama desktop app runs: it holds the port."""
    app = host.get_fact(OllamaApp)
    if app["running"]:
        problem(
            name="The Ollama app is running",
            _sudo=False,
            message="the Ollama desktop app runs its own server on Ollama's port: quit it (menu "
            "bar icon → Quit Ollama) and remove it from System Settings → Login Items, then "
            "run the deploy again",
        )
        return False
    if app["installed"]:
        logger.warning(
            f"{host.print_prefix}/Applications/Ollama.app is installed: if it starts at login it "
            "takes Ollama's port before servekit's agent; remove it from the Login Items"
        )
    return True


def homebrew_out_of_the_way(layout: ollama.MacLayout) -> None:
    """Stop a `brew services` Ollama (it holds the port); warn about Homebrew's formula."""
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


def install_and_run(
    plan: HostPlan, settings: OllamaHost, base_url: str, layout: ollama.MacLayout
) -> None:
    """Directories, the release and its link, the LaunchAgent (reloaded after a change), then
    wait for the API and sync the models."""
    home, version = layout.home, settings.version
    models_dir = ollama.expand_home(settings.env.get("OLLAMA_MODELS", "~/.ollama/models"), home)
    for path in each(dict.fromkeys([f"{home}/.ollama/logs", models_dir])):
        files.directory(name=f"Create {path}", path=path, _sudo=False)
    netrc = f"{home}/{MAC_NETRC}"
    logins = mirror_login_files(plan.sources, [(netrc, "netrc")], owner=None, sudo=False)
    if logins is None:
        return
    installed = release(
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
    plist = put(plist_file, f"Install the {ollama.LAUNCHD_LABEL} LaunchAgent", sudo=False)

    was_loaded = host.get_fact(LaunchAgent, label=ollama.LAUNCHD_LABEL)["loaded"]
    started = agent(
        name="Load and start the Ollama agent",
        _sudo=False,
        label=ollama.LAUNCHD_LABEL,
        plist=layout.plist,
    )
    changed = any_changed(installed, plist)
    reloaded = agent(
        name="Reload the Ollama agent after a change",
        _sudo=False,
        label=ollama.LAUNCHD_LABEL,
        plist=layout.plist,
        reload=True,
        _if=lambda: was_loaded and changed(),
    )
    answer_and_sync(
        settings,
        version,
        False,
        f"tail -n 30 {shlex.quote(layout.log)}",
        any_changed(started, reloaded),
    )
