"""deploys/ollama.py through pyinfra with hosts simulated by pyinfra's `@fake` connector: the
commands it runs for given facts — macOS (Homebrew on its real path, launchd, never sudo) and the
Linux cases the bench cannot show (arm64, no systemd, no apt, an unreachable data directory).

Facts answer as the real commands print (`uname`, `stat`, `shasum`, `launchctl print`, Ollama's
API), scripted per test; a converged host answers so that nothing is left to do. The real
Linux behaviour is proven on the bench hosts (tests/hosts/test_ollama_deploy.py).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import plistlib
import re
import shlex
from dataclasses import dataclass, field
from io import StringIO
from typing import Any

import pytest
from pyinfra.api import Config, Inventory, State
from pyinfra.api.command import FileUploadCommand, FunctionCommand, StringCommand
from pyinfra.api.connect import connect_all, disconnect_all
from pyinfra.api.deploy import add_deploy
from pyinfra.api.exceptions import PyinfraError
from pyinfra.api.operations import run_ops

from servekit import ollama
from servekit.deploys.ollama import ollama_host
from servekit.hostplan import HOST_DATA_KEY
from servekit.placement import plan_fleet
from servekit.render import HostFacts, ollama_files
from servekit.spec import Fleet, Gpu, OllamaSettings, Serve, Sources, SshHost, Versions

VERSION = "0.32.3"
HOME = "/Users/alice"
LAYOUT = ollama.MacLayout(HOME, VERSION)
MODELS = ["llama3.1:8b", "qwen2.5:7b"]


# --- running the deploy on a fake host ----------------------------------------------------------


@dataclass
class Step:
    commands: list[Any]
    changed: bool
    failed: bool
    sudo: bool
    env: dict[str, str]

    def shell(self) -> list[str]:
        return [c.get_raw_value() for c in self.commands if isinstance(c, StringCommand)]

    def message(self) -> str:
        """The text a failing step prints (servekit.operations.common.failure)."""
        (command,) = self.shell()
        return shlex.split(command)[2]


@dataclass
class Run:
    steps: dict[str, Step]
    executed: list[str]
    failed: bool
    log: str = ""
    uploads: dict[str, str] = field(default_factory=dict)

    def step(self, fragment: str) -> Step:
        (found,) = [step for name, step in self.steps.items() if fragment in name]
        return found

    @property
    def changed(self) -> list[str]:
        return [name for name, step in self.steps.items() if step.changed]

    def commands(self) -> list[str]:
        return [c for step in self.steps.values() for c in step.shell()]

    def __str__(self) -> str:
        lines = [f"failed: {self.failed}"]
        for name, step in self.steps.items():
            mark = "ERROR" if step.failed else "changed" if step.changed else "-"
            lines.append(f"  {mark:8} {name}: {step.shell()!r:.300}")
        return "\n".join(lines)


def run_deploy(plan_data: dict[str, Any], responses: dict[Any, Any], sudo: bool = False) -> Run:
    """Run `ollama_host()` on one `@fake` host carrying `plan_data` as its servekit data."""
    data = {
        HOST_DATA_KEY: plan_data,
        "_sudo": sudo,
        "fake_responses": responses,
        "fake_delay": 0,
        "fake_delay_jitter": 0,
    }
    inventory = Inventory(([("@fake/box", data)], {}))
    state = State(inventory=inventory, config=Config())
    connect_all(state)
    add_deploy(state, ollama_host)
    with contextlib.suppress(PyinfraError):  # "No hosts remaining!" when the host failed
        run_ops(state)
    (host,) = list(inventory)
    steps: dict[str, Step] = {}
    uploads: dict[str, str] = {}
    for op_hash in state.get_op_order():
        if op_hash not in state.ops[host]:
            continue
        op = state.ops[host][op_hash]
        meta = op.operation_meta
        commands = list(meta._commands or [])  # what ran (pyinfra keeps it on the result)
        for command in commands:
            if isinstance(command, FileUploadCommand) and isinstance(command.src, StringIO):
                uploads[command.dest] = command.src.getvalue()
        name = ", ".join(state.op_meta[op_hash].names).removeprefix("Ollama | ")
        done = meta.is_complete()  # steps after a failure never ran
        steps[name] = Step(
            commands=commands,
            changed=done and meta.did_change(),
            failed=done and meta.did_error(),
            sudo=bool(op.global_arguments.get("_sudo")),
            env=dict(op.global_arguments.get("_env") or {}),
        )
    executed = list(host.connector.executed_commands)
    disconnect_all(state)
    return Run(steps, executed, host in state.failed_hosts, uploads=uploads)


def host_data(
    os: str = "macos",
    settings: OllamaSettings | None = None,
    mirror: str = "https://mirror.example/ollama",
    **machine: Any,
) -> Any:
    gpu = Gpu(model="apple-m3-pro", memory_gib=36) if os == "macos" else Gpu(model="L4")
    fleet = Fleet(
        name="team",
        machines=[SshHost(name="box", address="10.0.0.5", os=os, gpu=gpu, **machine)],  # type: ignore[arg-type]
        serve=[Serve(model=model, engine="ollama") for model in MODELS],
        ollama=settings or OllamaSettings(),
        versions=Versions(ollama=VERSION),
        sources=Sources(),
    )
    data = plan_fleet(fleet).hosts["box"].to_host_data()
    # The schema refuses a mirror that is not a plain http(s) URL at load; the deploy must still
    # refuse one that reaches it, so the mirror goes into the plan past the schema.
    data["sources"]["ollama_releases"] = mirror
    return data


# --- answers of a Mac ---------------------------------------------------------------------------


def stat_line(path: str, kind: str = "-", user: str = "alice", mode: str = "rw-r--r--") -> str:
    return (
        f"user={user} group=staff mode={kind}{mode} atime=1790000000 mtime=1790000000 "
        f"ctime=1790000000 size=100 '{path}'"
    )


def launchctl_print(
    state: str = "running", pid: int | None = 2345, plist: str = LAYOUT.plist
) -> str:
    """`launchctl print gui/501/com.servekit.ollama`, as macOS 14 prints a loaded agent."""
    run_lines = [f"\tpid = {pid}"] if pid else ["\tlast exit code = 1"]
    return "\n".join(
        [
            f"gui/501/{ollama.LAUNCHD_LABEL} = {{",
            "\tactive count = 1",
            f"\tpath = {plist}",
            "\ttype = LaunchAgent",
            f"\tstate = {state}",
            "",
            f"\tprogram = {LAYOUT.binary}",
            "\targuments = {",
            f"\t\t{LAYOUT.binary}",
            "\t\tserve",
            "\t}",
            "",
            f"\tworking directory = {HOME}",
            "\tenvironment = {",
            "\t\tOLLAMA_HOST => 127.0.0.1:11434",
            "\t\tXPC_SERVICE_NAME => com.servekit.ollama",
            "\t}",
            "",
            "\tdomain = gui/501 [100008]",
            "\tminimum runtime = 10",
            "\texit timeout = 5",
            "\truns = 1",
            *run_lines,
            "\tspawn type = interactive (4)",
            "\tproperties = keepalive | runatload | inferred program",
            "}",
        ]
    )


def tags(models: list[str]) -> str:
    return json.dumps({"models": [{"name": m, "model": m, "size": 1} for m in models]})


FAILS = re.compile(r"^printf '%s\\n' .* >&2 && false$", re.DOTALL)
"""A command that stops the host with a message (servekit.operations.common.failure) fails."""
PULL_OK = [f"{m}: success" for m in MODELS]


def mac(
    *,
    installed: str | None = None,
    agent: str | None = None,
    session: bool = True,
    disabled: bool = False,
    brew: list[str] | None = None,
    app: list[str] | None = None,
    models: list[str] | None = None,
    converged_files: dict[str, str] | None = None,
    kernel: str = "Darwin",
) -> dict[Any, Any]:
    """Fake responses of a Mac in a given state (first match wins)."""
    responses: dict[Any, Any] = {
        FAILS: {"success": False},
        re.compile(r"^uname -s$"): kernel,
        re.compile(r"^echo ~$"): HOME,
        "pgrep -x Ollama": app or [],
        "Cellar/ollama": brew or [],
        "OLLAMA_HOST=127.0.0.1:1": (
            ["Warning: could not connect to a running Ollama instance",
             f"Warning: client version is {installed}"] if installed else []
        ),
        "print-disabled": [
            "uid=501",
            *(["session=gui/501"] if session else []),
            *([f'\t"{ollama.LAUNCHD_LABEL}" => disabled'] if disabled else []),
            *(agent.splitlines() if agent else []),
        ],
        "/api/tags": tags(models if models is not None else []),
        "/api/pull": {"stdout": ["llama3.1:8b: pulling manifest", *PULL_OK]},
    }  # fmt: skip
    for path, content in (converged_files or {}).items():
        quoted = re.escape(path) + r"'?(?![\w/.-])"  # this path, not one below it
        if content == "<dir>":
            responses[re.compile(rf"test -e '?{quoted}")] = stat_line(path, "d", mode="rwxr-xr-x")
        elif content.startswith("<link "):
            target = content.removeprefix("<link ").rstrip(">")
            responses[re.compile(rf"test -e '?{quoted}")] = stat_line(
                f"{path}' -> '{target}", "l", mode="rwxr-xr-x"
            )
        else:
            digest = hashlib.sha1(content.encode()).hexdigest()
            responses[re.compile(rf"^test -e '?{quoted} && \( sha1sum")] = f"{digest}  {path}"
            responses[re.compile(rf"test -e '?{quoted}")] = stat_line(path)
    return responses


def converged_mac_files(data: Any) -> dict[str, str]:
    from servekit.hostplan import HostPlan

    (plist,) = ollama_files(HostPlan.from_host_data(data), HostFacts(home=HOME))
    return {
        f"{HOME}/Library/LaunchAgents": "<dir>",
        f"{HOME}/.servekit/bin": "<dir>",
        f"{HOME}/.ollama/logs": "<dir>",
        f"{HOME}/.ollama/models": "<dir>",
        LAYOUT.link: f"<link {LAYOUT.binary}>",
        LAYOUT.plist: plist.content,
    }


# --- macOS ------------------------------------------------------------------------------------


def test_a_fresh_mac_gets_the_release_our_agent_and_the_models_without_sudo() -> None:
    brew = ["prefix=/opt/homebrew", "formula=0.30.0", "service=loaded"]
    run = run_deploy(host_data(), mac(brew=brew), sudo=True)  # even when the user asks for sudo
    assert not run.failed, run
    assert not [name for name, step in run.steps.items() if step.sudo]
    assert not [c for c in run.executed if "sudo" in c]

    stop = run.step("Homebrew's Ollama service").shell()
    assert stop == ["/opt/homebrew/bin/brew services stop ollama"]  # brew on its real path
    path = run.step("Homebrew's Ollama service").env["PATH"].split(":")
    assert path[:2] == ["/opt/homebrew/bin", "/opt/homebrew/sbin"]

    (install,) = run.step(f"Install Ollama {VERSION}").shell()
    assert f"https://mirror.example/ollama/v{VERSION}/ollama-darwin.tgz" in install
    assert "shasum -a 256" in install
    assert f"mv {LAYOUT.install_dir}.partial {LAYOUT.install_dir}" in install

    agent = plistlib.loads(run.uploads[LAYOUT.plist].encode())
    assert agent["ProgramArguments"] == [LAYOUT.binary, "serve"]
    assert agent["EnvironmentVariables"]["OLLAMA_MODELS"] == f"{HOME}/.ollama/models"

    (bootstrap,) = run.step("Load and start").shell()
    assert f"launchctl bootstrap gui/501 {LAYOUT.plist}" in bootstrap
    assert not run.step("Reload the Ollama agent").changed  # it was not loaded before
    (wait,) = run.step("Wait for Ollama").shell()
    assert f"tail -n 30 {LAYOUT.log}" in wait and "http://127.0.0.1:11434/" in wait

    pulls = [
        c for c in run.step("Sync the fleet's models").commands if isinstance(c, FunctionCommand)
    ]
    assert [c.args[0] for c in pulls] == ["llama3.1:8b", "qwen2.5:7b"]
    assert sum("/api/pull" in c for c in run.executed) == 2


def test_homebrew_on_an_intel_mac_is_found_under_usr_local() -> None:
    run = run_deploy(host_data(), mac(brew=["prefix=/usr/local", "service=loaded"]))
    assert run.step("Homebrew's Ollama service").shell() == [
        "/usr/local/bin/brew services stop ollama"
    ]
    step = run.step("Homebrew's Ollama service")
    assert step.commands and not step.sudo


def test_a_converged_mac_gets_no_command() -> None:
    data = host_data()
    responses = mac(
        installed=VERSION,
        agent=launchctl_print(),
        brew=["prefix=/opt/homebrew"],  # Homebrew without Ollama: nothing to stop
        models=["llama3.1:8b", "qwen2.5:7b", "extra:1b"],
        converged_files=converged_mac_files(data),
    )
    run = run_deploy(data, responses)
    assert not run.failed, run
    assert run.changed == [], run.changed
    assert not [name for name in run.steps if "Homebrew" in name]


def test_an_upgrade_on_a_mac_reloads_the_agent_and_keeps_the_models() -> None:
    data = host_data()
    files = converged_mac_files(data)
    old_plist = files.pop(LAYOUT.plist).replace(VERSION, "0.31.0")
    responses = mac(
        installed=None,  # the new version's binary is not there yet
        agent=launchctl_print(),
        models=MODELS,
        converged_files={**files, LAYOUT.plist: old_plist},
    )
    run = run_deploy(data, responses)
    assert not run.failed, run
    assert run.step(f"Install Ollama {VERSION}").changed
    assert not run.step("Load and start").changed  # loaded and running: left alone...
    bootout, bootstrap = run.step("Reload the Ollama agent").shell()  # ...then reloaded
    assert bootout == f"launchctl bootout gui/501/{ollama.LAUNCHD_LABEL} || true"
    assert "until launchctl bootstrap gui/501" in bootstrap and "-ge 10 ]" in bootstrap
    assert run.step("Wait for Ollama").changed
    assert not run.step("Sync the fleet's models").changed


def test_a_stopped_disabled_agent_is_enabled_and_kickstarted() -> None:
    data = host_data()
    responses = mac(
        installed=VERSION,
        agent=launchctl_print(state="not running", pid=None),
        disabled=True,
        models=MODELS,
        converged_files=converged_mac_files(data),
    )
    run = run_deploy(data, responses)
    assert run.step("Load and start").shell() == [
        f"launchctl enable gui/501/{ollama.LAUNCHD_LABEL}",
        f"launchctl kickstart gui/501/{ollama.LAUNCHD_LABEL}",
    ]
    assert run.step("Wait for Ollama").changed
    assert not run.step("Reload the Ollama agent").changed


def test_without_a_gui_session_the_agent_step_fails_and_says_why() -> None:
    run = run_deploy(host_data(), mac(session=False))
    assert run.failed
    failing = run.step("Load and start").message()
    assert "uid 501 has no GUI login session" in failing and "log in at the screen" in failing


def test_a_running_ollama_app_stops_the_deploy_before_any_change() -> None:
    run = run_deploy(host_data(), mac(app=["installed", "running"]))
    assert run.failed
    assert list(run.steps) == ["The Ollama app is running"]
    assert "quit it" in run.steps["The Ollama app is running"].message()


@pytest.mark.parametrize("mirror", ["file:///srv/ollama", "https://m.example/$(reboot)"])
def test_a_release_mirror_that_is_not_a_plain_url_is_refused(mirror: str) -> None:
    run = run_deploy(host_data(mirror=mirror), mac())
    assert run.failed and list(run.steps) == ["Ollama release mirror"]
    assert "must be an http(s) URL" in run.steps["Ollama release mirror"].message()


def test_a_fleet_that_calls_a_linux_box_a_mac_is_refused() -> None:
    run = run_deploy(host_data(), mac(kernel="Linux"))
    assert run.failed and list(run.steps) == ["Operating system"]
    assert "declares os='macos'" in run.steps["Operating system"].message()


# --- Linux cases the bench does not cover -----------------------------------------------------


def linux(
    *,
    arch: str = "x86_64",
    systemd: bool = True,
    apt: bool = True,
    groups: list[str] | None = None,
    stats: list[str] | None = None,
    nvidia: bool = False,
    install_sh_models: bool = False,
) -> dict[Any, Any]:
    responses: dict[Any, Any] = {
        FAILS: {"success": False},
        re.compile(r"^uname -s$"): "Linux",
        re.compile(r"^uname -m$"): arch,
        re.compile(r"test -e /usr/share/ollama/.ollama/models"): (
            stat_line(ollama.INSTALL_SH_MODELS, "d", "ollama", "rwxr-xr-x")
            if install_sh_models
            else []
        ),
        re.compile(r"test -e /run/systemd/system"): (
            stat_line("/run/systemd/system", "d", "root", "rwxr-xr-x") if systemd else []
        ),
        re.compile(r"command -v apt-get|which apt-get"): "/usr/bin/apt-get" if apt else [],
        re.compile(r"command -v nvidia-smi|which nvidia-smi"): (
            "/usr/bin/nvidia-smi" if nvidia else []
        ),
        re.compile(r"^command -v "): "/usr/sbin/found",  # useradd, groupadd, systemctl, ...
        "cat /etc/group": [f"{g}:x:{100 + i}:" for i, g in enumerate(groups or [])],
        'stat -c "%a %U %G %n"': stats or [],
        "/api/tags": tags([]),
        "/api/pull": {"stdout": PULL_OK},
    }
    return responses


def test_an_arm64_box_installs_the_arm64_archive_and_joins_the_gpu_groups() -> None:
    run = run_deploy(host_data("linux"), linux(arch="aarch64", groups=["render", "video"]))
    assert not run.failed, run
    (install,) = run.step(f"Install Ollama {VERSION}").shell()
    assert f"/v{VERSION}/ollama-linux-arm64.tar.zst" in install
    (apt,) = run.step("Install curl and zstd").shell()[-1:]
    assert "install" in apt and all(p in apt for p in ("curl", "ca-certificates", "zstd"))
    assert any("update" in c for c in run.step("Install curl and zstd").shell())
    user = " ".join(run.step("Create the ollama user").shell())
    assert "-G render,video" in user
    assert run.step("Install ollama.service").changed
    assert not run.step("Restart Ollama after a change").changed  # it was not running before
    assert run.step("Start and enable").changed and run.step("Wait for Ollama").changed


def test_a_host_without_systemd_is_refused_with_the_reason() -> None:
    run = run_deploy(host_data("linux"), linux(systemd=False))
    assert run.failed and list(run.steps) == ["Needs systemd"]
    assert "not booted with systemd" in run.steps["Needs systemd"].message()


def test_a_host_without_apt_is_refused() -> None:
    run = run_deploy(host_data("linux"), linux(apt=False))
    assert run.failed and list(run.steps) == ["Supported systems"]


def test_an_unsupported_architecture_is_refused() -> None:
    run = run_deploy(host_data("linux"), linux(arch="ppc64le"))
    assert run.failed and "not 'ppc64le'" in run.steps["Supported architectures"].message()


def test_a_models_dir_the_service_user_cannot_reach_is_named_with_the_fix() -> None:
    settings = OllamaSettings(models_dir="/home/alice/ollama-models")
    stats = ["755 root root /home", "750 alice alice /home/alice"]
    run = run_deploy(host_data("linux", settings), linux(stats=stats))
    assert run.failed and list(run.steps)[-1] == "Ollama data directory"
    message = run.steps["Ollama data directory"].message()
    assert "cannot enter /home/alice on the way to /home/alice/ollama-models" in message
    assert "chmod o+x /home/alice" in message


@pytest.mark.parametrize("models_dir", ["/", "/etc", "/usr", "/var/lib", "/srv/../etc", "/proc/x"])
def test_a_system_directory_is_never_given_to_the_ollama_user(models_dir: str) -> None:
    """Defence in depth: even a plan that slipped past the schema never gets `chown ollama` on a
    system directory; the deploy stops before creating the user or any directory."""
    data = host_data("linux")
    data["ollama"]["env"]["OLLAMA_MODELS"] = models_dir  # as if the schema had let it through
    run = run_deploy(data, linux())
    assert run.failed and list(run.steps)[-1] == "Ollama data directory"
    assert "refusing ollama.models_dir" in run.steps["Ollama data directory"].message()
    everything = " ".join(run.executed)
    assert "chown" not in everything and "chmod" not in everything
    assert not any(name.startswith("Create") for name in run.steps)


def test_the_data_directories_are_chowned_one_by_one_never_recursively() -> None:
    run = run_deploy(host_data("linux"), linux())
    assert not run.failed, run
    for path in ("/var/lib/ollama", "/var/lib/ollama/models"):
        commands = " ".join(run.steps[f"Create {path}"].shell())
        assert f"chown ollama:ollama {path}" in commands and "-R" not in commands


@pytest.mark.parametrize("nvidia", [False, True])
def test_gpu_boxes_never_get_a_driver_from_this_deploy(
    nvidia: bool, caplog: pytest.LogCaptureFixture
) -> None:
    run = run_deploy(host_data("linux"), linux(nvidia=nvidia))
    assert not run.failed, run
    everything = " ".join(run.commands())
    for word in ("nvidia-driver", "cuda-drivers", "install.sh", "rocm", "jetpack", "modprobe"):
        assert word not in everything
    warned = "no NVIDIA driver found: Ollama runs on the CPU until deploys/gpu.py" in caplog.text
    assert warned is not nvidia


def test_models_left_by_ollamas_install_script_are_pointed_out(
    caplog: pytest.LogCaptureFixture,
) -> None:
    run = run_deploy(host_data("linux"), linux(install_sh_models=True))
    assert not run.failed, run
    assert "models of an earlier install.sh install are in /usr/share/ollama/.ollama/models" in (
        caplog.text
    )
    kept = OllamaSettings(models_dir=ollama.INSTALL_SH_MODELS)
    caplog.clear()
    run = run_deploy(host_data("linux", kept), linux(install_sh_models=True))
    assert not run.failed and "install.sh" not in caplog.text
    assert f'"{ollama.INSTALL_SH_MODELS}"' in run.uploads["/etc/systemd/system/ollama.service"]


# --- mirror logins ------------------------------------------------------------------------------

PASSWORD = "s3cr3t-P4ss"


def with_login(data: Any, tmp_path: Any) -> Any:
    netrc = tmp_path / "netrc"
    netrc.write_text(f"machine mirror.example login alice password {PASSWORD}\n")
    netrc.chmod(0o600)
    data["sources"]["mirror_credentials"] = {"file": str(netrc), "env": None}
    return data


def test_a_mirror_login_reaches_curl_as_a_root_only_netrc_never_in_argv(
    tmp_path: Any, caplog: pytest.LogCaptureFixture
) -> None:
    data = with_login(host_data("linux"), tmp_path)
    data["sudo"] = True  # a login user that is not root: the netrc is written through sudo
    run = run_deploy(data, linux())
    assert not run.failed, run
    assert run.step("Write the mirror login for netrc").sudo
    (write,) = run.step("Write the mirror login for netrc").commands
    assert write.connector_arguments.get("_stdin", "").count(PASSWORD) == 1
    assert "chmod 0600" in write.get_raw_value() and "chown root:root" in write.get_raw_value()
    (install,) = run.step(f"Install Ollama {VERSION}").shell()
    assert "--netrc-file /etc/servekit/netrc" in install
    assert PASSWORD not in " ".join(run.executed) and PASSWORD not in caplog.text
    names = list(run.steps)
    assert names.index("Write the mirror login for netrc (/etc/servekit/netrc, 0600)") < (
        names.index(f"Install Ollama {VERSION}")
    )


def test_a_mac_keeps_its_mirror_login_in_the_users_home(tmp_path: Any) -> None:
    run = run_deploy(with_login(host_data(), tmp_path), mac())
    (write,) = run.step("Write the mirror login for netrc").commands
    assert f"{HOME}/.servekit/netrc" in write.get_raw_value()
    assert "chown" not in write.get_raw_value() and not run.step("mirror login").sudo
    (install,) = run.step(f"Install Ollama {VERSION}").shell()
    assert f"--netrc-file {HOME}/.servekit/netrc" in install
    assert PASSWORD not in " ".join(run.executed)


def test_unreadable_mirror_credentials_stop_the_host_without_showing_them(tmp_path: Any) -> None:
    data = with_login(host_data("linux"), tmp_path)
    (tmp_path / "netrc").chmod(0o644)
    run = run_deploy(data, linux())
    assert run.failed and list(run.steps)[-1] == "Mirror credentials"
    assert "chmod 600" in run.steps["Mirror credentials"].message()
    assert PASSWORD not in " ".join(run.executed)
    assert not any(name.startswith("Install Ollama") for name in run.steps)


def test_a_release_mirror_url_with_a_login_is_refused_without_echoing_it() -> None:
    run = run_deploy(host_data(mirror=f"https://alice:{PASSWORD}@m.example/ollama"), mac())
    assert run.failed and list(run.steps) == ["Ollama release mirror"]
    message = run.steps["Ollama release mirror"].message()
    assert "mirror_credentials" in message and PASSWORD not in message


def test_an_exposed_ollama_gets_its_firewall_before_its_unit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from pyinfra.connectors.fake import FakeConnector

    from servekit.spec import Gateway, SecretRef

    confirmed: list[str] = []
    original = FakeConnector.run_shell_command

    def record(self: FakeConnector, command: Any, *args: Any, **kwargs: Any) -> Any:
        if self is not self.host.connector:  # a connection of its own, not the deploy's
            confirmed.append(str(command.get_raw_value()))
        return original(self, command, *args, **kwargs)

    monkeypatch.setattr(FakeConnector, "run_shell_command", record)

    fleet = Fleet(
        name="team",
        machines=[
            SshHost(name="box", address="10.0.0.5", ssh_user="ubuntu", gpu=Gpu(model="L4")),
            SshHost(name="gw", address="10.0.0.2"),
        ],
        serve=[Serve(model="llama3.1:8b", engine="ollama", hosts=["box"])],
        gateway=Gateway(host="gw", api_keys=SecretRef(env="CLIENTS")),
        ollama=OllamaSettings(expose=True, clients=["192.168.7.7"]),
        versions=Versions(ollama=VERSION),
    )
    data = plan_fleet(fleet).hosts["box"].to_host_data()
    responses = linux()
    responses["report the state servekit"] = json.dumps({"packages": {"nftables": True}})
    run = run_deploy(data, responses, sudo=False)  # the plan says sudo (a non-root user)
    assert not run.failed, run
    names = list(run.steps)
    load = names.index("Load the servekit firewall")
    assert load < names.index("Install ollama.service")
    assert run.step("Load the servekit firewall").sudo
    commands = " ".join(run.executed)
    assert "nft list table inet servekit" in commands  # the previous table saved first
    assert "systemctl restart servekit-firewall-rollback.timer" in commands  # armed
    # confirmed (the rollback disarmed) over a fresh connection, not the deploy's own
    assert confirmed == ["systemctl stop servekit-firewall-rollback.timer"]
    unit = run.uploads["/etc/systemd/system/ollama.service"]
    assert "Requires=servekit-firewall.service" in unit


def no_ollama_data() -> Any:
    """A Linux box the fleet no longer serves any Ollama model on (a model moved to vLLM)."""
    fleet = Fleet(
        name="team",
        machines=[SshHost(name="box", address="10.0.0.5", os="linux")],
        serve=[],
        versions=Versions(ollama=VERSION),
        sources=Sources(),
    )
    return plan_fleet(fleet).hosts["box"].to_host_data()


def retired_box(dropin: bool, running: bool) -> Run:
    responses = linux()
    if dropin:
        responses[re.compile(re.escape(ollama.DROPIN_FILE))] = stat_line(
            ollama.DROPIN_FILE, "-", "root", "rw-r--r--"
        )
    state = "running" if running else "dead"
    enabled = "enabled" if running else "disabled"
    responses[re.compile(r"--property SubState ollama.service")] = [
        "Id=ollama.service",
        f"SubState={state}",
    ]
    responses[re.compile(r"--property UnitFileState ollama.service")] = [
        "Id=ollama.service",
        f"UnitFileState={enabled}",
    ]
    return run_deploy(no_ollama_data(), responses)


def test_a_box_that_serves_no_ollama_any_more_has_servekits_service_retired() -> None:
    run = retired_box(dropin=True, running=True)
    assert not run.failed, run
    # first a step every retiring host shares with the gateway host: retirement waits for it
    assert next(iter(run.steps)) == "Wait for the earlier steps on every host"
    # the answers Ollama is still streaming (through the gateway's old worker) end first
    (wait,) = run.step("Let the requests in flight on Ollama finish").shell()
    assert "state established" in wait and "OLLAMA_HOST" in wait
    step = run.step("Retire ollama.service")
    assert step.changed and " ".join(step.shell()).count("ollama.service") == 2, run
    assert any("stop" in c for c in step.shell()) and any("disable" in c for c in step.shell())
    # retired already: nothing to do; an Ollama servekit did not install is left alone
    assert run_is_quiet(retired_box(dropin=True, running=False))
    assert not [s for s in retired_box(dropin=False, running=True).steps if "Retire" in s]


def run_is_quiet(run: Run) -> bool:
    return not run.failed and not run.changed
