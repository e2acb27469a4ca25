"""The Ollama and macOS facts: their commands, and their parsers on output as the commands print
it (Ollama's /api/tags from the stand-in server, GNU stat, Homebrew paths, `launchctl print`)."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from standins import harness

from servekit.facts.macos import Homebrew, LaunchAgent, OllamaApp, parse_launch_agent
from servekit.facts.ollama import DirectoryPath, OllamaModels, OllamaVersion

STANDINS = Path(__file__).resolve().parents[1] / "standins"


@pytest.fixture(scope="module")
def tags_output(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[str]]:
    """`GET /api/tags` of a stand-in server holding two models, as the fact's curl prints it."""
    tmp = tmp_path_factory.mktemp("ollama")
    port = harness.free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("OLLAMA_")}
    env.update({"HOME": str(tmp), "OLLAMA_HOST": f"127.0.0.1:{port}"})
    argv = [sys.executable, str(STANDINS / "ollama" / "bin" / "ollama"), "serve"]
    with harness.running(argv, env, tmp, "serve", ready_log="Listening on"):
        for model in ("llama3.2:1b", "tinyllama"):
            assert harness.request(port, "POST", "/api/pull", {"model": model})[0] == 200
        status, _headers, body = harness.request(port, "GET", "/api/tags")
        assert status == 200
        yield body.decode().splitlines()


def test_models_come_from_the_servers_tags(tags_output: list[str]) -> None:
    assert OllamaModels().process(tags_output) == ["llama3.2:1b", "tinyllama:latest"]
    command = OllamaModels().command(url="http://127.0.0.1:11434").get_raw_value()
    assert command == "curl -fsS --max-time 10 http://127.0.0.1:11434/api/tags 2>/dev/null || true"


@pytest.mark.parametrize("output", [[], ["404 page not found"], ['{"error": "x"}'], ["[]"]])
def test_a_server_that_does_not_answer_tags_is_none(output: list[str]) -> None:
    assert OllamaModels().process(output) is None


def test_the_version_fact_asks_the_binary_not_a_server() -> None:
    command = OllamaVersion().command(binary="/usr/local/bin/ollama").get_raw_value()
    assert command == (
        "test -x /usr/local/bin/ollama && OLLAMA_HOST=127.0.0.1:1 /usr/local/bin/ollama -v 2>&1 "
        "|| true"
    )
    printed = ["Warning: could not connect to a running Ollama instance", "Warning: client "
               "version is 0.32.3"]  # fmt: skip
    assert OllamaVersion().process(printed) == "0.32.3"


def test_directory_path_lists_the_parents_with_gnu_stat() -> None:
    command = DirectoryPath().command(path="/srv/my models/ollama").get_raw_value()
    assert "for d in /srv '/srv/my models' ;" in command and 'stat -c "%a %U %G %n"' in command
    output = ["755 root root /srv", "750 alice render /srv/my models"]
    assert DirectoryPath().process(output) == [
        {"path": "/srv", "mode": 0o755, "owner": "root", "group": "root"},
        {"path": "/srv/my models", "mode": 0o750, "owner": "alice", "group": "render"},
    ]


def test_homebrew_is_looked_for_on_its_real_paths() -> None:
    command = Homebrew().command().get_raw_value()
    assert "for p in /opt/homebrew /usr/local;" in command and '"$p/bin/brew"' in command
    assert "sudo" not in command
    assert Homebrew().process([]) is None
    found = Homebrew().process(["prefix=/opt/homebrew", "formula=0.30.0", "service=loaded"])
    assert found == {
        "prefix": "/opt/homebrew",
        "brew": "/opt/homebrew/bin/brew",
        "ollama_versions": ["0.30.0"],
        "ollama_service_loaded": True,
    }
    intel = Homebrew().process(["prefix=/usr/local"])
    assert intel is not None and intel["brew"] == "/usr/local/bin/brew"
    assert intel["ollama_versions"] == [] and not intel["ollama_service_loaded"]


# `launchctl print gui/501/com.servekit.ollama` on macOS 14 (the layout launchctl prints: one tab
# per level, `key = value`, nested blocks in braces), trimmed.
LOADED = """\
gui/501/com.servekit.ollama = {
\tactive count = 1
\tpath = /Users/alice/Library/LaunchAgents/com.servekit.ollama.plist
\ttype = LaunchAgent
\tstate = running

\tprogram = /Users/alice/.servekit/ollama/0.32.3/ollama
\targuments = {
\t\t/Users/alice/.servekit/ollama/0.32.3/ollama
\t\tserve
\t}

\tenvironment = {
\t\tOLLAMA_HOST => 127.0.0.1:11434
\t\tpid => 1
\t}

\tdomain = gui/501 [100008]
\truns = 3
\tpid = 2345
\tlast exit code = (never exited)
\tproperties = keepalive | runatload | inferred program
}"""


def test_a_loaded_running_agent() -> None:
    state = parse_launch_agent(["uid=501", "session=gui/501", *LOADED.splitlines()])
    assert state == {
        "uid": 501,
        "session": "gui/501",
        "loaded": True,
        "state": "running",
        "pid": 2345,  # the top-level pid, not the one in the environment block
        "path": "/Users/alice/Library/LaunchAgents/com.servekit.ollama.plist",
        "program": "/Users/alice/.servekit/ollama/0.32.3/ollama",
        "disabled": False,
    }


def test_an_agent_that_is_not_loaded_in_a_session_without_gui() -> None:
    state = parse_launch_agent(["uid=502"])
    assert state["uid"] == 502 and state["session"] is None and not state["loaded"]
    assert LaunchAgent.default()["loaded"] is False


@pytest.mark.parametrize(
    ("verdict", "disabled"),
    [("disabled", True), ("true", True), ("enabled", False), ("false", False)],
)
def test_print_disabled_old_and_new_spellings(verdict: str, disabled: bool) -> None:
    line = f'\t"com.servekit.ollama" => {verdict}'
    assert parse_launch_agent(["uid=501", "session=gui/501", line])["disabled"] is disabled


def test_the_agent_fact_reads_the_gui_session_of_the_login_user() -> None:
    command = LaunchAgent().command(label="com.servekit.ollama").get_raw_value()
    assert 'launchctl print "gui/$uid"/com.servekit.ollama' in command
    assert "grep -F '\"com.servekit.ollama\"'" in command
    assert "sudo" not in command


def test_the_ollama_app() -> None:
    assert OllamaApp().process(["installed"]) == {"installed": True, "running": False}
    assert OllamaApp().process(["installed", "running"]) == {"installed": True, "running": True}
    assert OllamaApp.default() == {"installed": False, "running": False}
