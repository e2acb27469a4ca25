"""A LaunchAgent operation that does what pyinfra's `launchd.service` does not: load a plist into
the login user's GUI session with `launchctl bootstrap`, start it with `kickstart`, and reload it
(`bootout`, then `bootstrap`) so a changed plist takes effect.

`launchctl kickstart -k` alone restarts the process with the definition launchd already holds: a
changed `EnvironmentVariables` or `ProgramArguments` needs the bootout/bootstrap pair. Never sudo:
a LaunchAgent belongs to the user.
"""

from __future__ import annotations

import shlex

from pyinfra.api.command import StringCommand
from pyinfra.api.operation import operation
from pyinfra.context import host

from servekit.facts.macos import LaunchAgent
from servekit.operations.common import Commands, failure

BOOTSTRAP_TRIES = 10
"""`bootstrap` right after `bootout` can fail while launchd still tears the old job down."""


def bootstrap(domain: str, plist: str, tries: int = BOOTSTRAP_TRIES) -> StringCommand:
    """`launchctl bootstrap DOMAIN PLIST`, retried once a second for a bounded number of tries."""
    q = shlex.quote
    return StringCommand(
        f"n=0; until launchctl bootstrap {q(domain)} {q(plist)}; do n=$((n + 1)); "
        f'if [ "$n" -ge {int(tries)} ]; then exit 1; fi; sleep 1; done'
    )


@operation()
def agent(label: str, plist: str, reload: bool = False) -> Commands:
    """
    Have the LaunchAgent `label` loaded from `plist` in the user's GUI session, and running.

    + label: the plist's `Label`
    + plist: the plist's path (in `~/Library/LaunchAgents`)
    + reload: unload and load it again even when it runs (the plist or its program changed)

    A disabled agent is enabled first. Without a GUI session (nobody logged in at the screen:
    a LaunchAgent only runs in one) the operation fails and says so.

    **Example:**

    .. code:: python

        from servekit.operations import launchd

        plist = files.put(src=..., dest="/Users/me/Library/LaunchAgents/com.example.x.plist")
        launchd.agent(label="com.example.x", plist=plist_path)
        launchd.agent(label="com.example.x", plist=plist_path, reload=True, _if=plist.did_change)
    """
    state = host.get_fact(LaunchAgent, label=label)
    session = state["session"]
    if session is None:
        user = f"uid {state['uid']}" if state["uid"] is not None else "this user"
        yield failure(
            f"servekit: {host.name}: {user} has no GUI login session, and a LaunchAgent "
            f"({label}) only runs in one: log in at the screen once (or turn on automatic "
            "login) and run the deploy again"
        )
        return
    target = f"{session}/{label}"
    if state["disabled"]:
        yield StringCommand("launchctl enable", shlex.quote(target))
    if not state["loaded"]:
        yield bootstrap(session, plist)
        return
    if reload or (state["path"] not in (None, plist)):
        yield StringCommand(f"launchctl bootout {shlex.quote(target)} || true")
        yield bootstrap(session, plist)
        return
    if state["state"] != "running":
        yield StringCommand("launchctl kickstart", shlex.quote(target))
        return
    if not state["disabled"]:
        host.noop(f"{label} runs in {session} (pid {state['pid']})")
