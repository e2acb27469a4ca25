"""The gateway deploy on a fleet of test hosts over real SSH: two stand-in vLLM replicas on `a`
and `b`, HAProxy from the Debian mirror on `g`, clients on this machine (which the engines'
firewall does not admit). Keys: `alice` (no limits) and `ci` (only `chat`, a few requests a
minute). The tests run in order on the same hosts.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hostbench import BenchHost, PackageIndex, PyinfraRun, run_pyinfra
from hostbench.plugin import HostFactory
from hostbench.pyinfra_run import PYINFRA
from standins import build as standin_build
from standins.build import build_vllm_wheel
from standins.gateway import parse_show_stat
from vllm_support import (
    ROOT,
    deploy,
    fake_gpus,
    http,
    put_model,
    register_release,
    secret,
    ssh_host,
    unit_show,
    wait_for,
    write_fleet,
)

from servekit.bench.schema import BenchResult, RequestRecord

pytestmark = pytest.mark.hosts

GATEWAY_DEPLOY = ROOT / "deploys" / "gateway.py"
SERVEKIT = Path(sys.executable).parent / "servekit"
ALICE = "sk-alice-0123456789abcdef"
CI = "sk-ci-0123456789abcdef"
BOB = "sk-bob-0123456789abcdef"
KEYS = f"alice {ALICE}\n# name key [models=a,b] [rpm=N] [concurrent=N]\nci {CI} models=chat rpm=4\n"
SERVE = (
    'Serve(name="chat", model="llama-3.1-8b-instruct", replicas=2, '
    'served_names=["chat", "assistant"])'
)


@dataclass
class Fleet:
    a: BenchHost
    b: BenchHost
    g: BenchHost
    index: PackageIndex
    workdir: Path
    keys: Path = field(init=False)

    def __post_init__(self) -> None:
        self.keys = secret(self.workdir, "clients.keys", KEYS)

    def inventory(self, version: str = "0.33.0") -> Path:
        engine = secret(self.workdir, "engine.key", "sk-fleet-engine-0123456789")
        fleet = f"""Fleet(
    name="gw",
    machines=[{ssh_host(self.a)}, {ssh_host(self.b)},
              SshHost(name={self.g.name!r}, address={self.g.address!r}, ssh_user='root',
                      ssh_key={str(self.g.ssh_key)!r})],
    serve=[{SERVE}],
    gateway=Gateway(host={self.g.name!r}, api_keys=SecretRef(file={str(self.keys)!r})),
    engine_api_key=SecretRef(file={str(engine)!r}),
    sources=Sources(python_index={self.index.url!r}, weights=LocalPath(path="/srv/models")),
    versions=Versions(vllm={version!r}),
)"""
        path = write_fleet(self.workdir / "inventory" / "gw.py", fleet)
        if version != "0.33.0":
            register_release(path, version)
        return path

    def gateway(self) -> PyinfraRun:
        return run_pyinfra(self.inventory(), GATEWAY_DEPLOY, timeout=900)

    def url(self, path: str) -> str:
        return f"http://{self.g.address}:8080{path}"


@pytest.fixture(scope="module")
def fleet(
    test_hosts: HostFactory, package_index: PackageIndex, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Fleet]:
    workdir = tmp_path_factory.mktemp("gateway")
    package_index.add(build_vllm_wheel(workdir / "wheels"))
    a, b, g = test_hosts(3)
    for host in (a, b):
        fake_gpus(host)
        put_model(host, "meta-llama/Llama-3.1-8B-Instruct")
    yield Fleet(a, b, g, package_index, workdir)


def post(
    url: str, key: str | None, body: dict[str, Any], timeout: float = 30
) -> tuple[int | None, str]:
    """(status, body) of a JSON POST from this machine."""
    return http(url, key, timeout, body)


def chat(model: str = "chat", **extra: Any) -> dict[str, Any]:
    """A chat request; short unless `max_tokens` says otherwise (the stand-in's default is the
    whole context, at its pace)."""
    return {
        "model": model,
        "messages": [{"role": "user", "content": "hello"}],
        "max_tokens": 8,
        **extra,
    }


def error_of(body: str) -> dict[str, Any]:
    error: dict[str, Any] = json.loads(body)["error"]
    return error


def test_deploy_the_engines_then_the_gateway(fleet: Fleet) -> None:
    deploy(fleet.inventory()).check()
    run = fleet.gateway().check()
    changed = run.changes()
    assert set(changed["servekit gateway | Write the gateway configuration"]) == {fleet.g.name}
    assert fleet.a.name not in str(changed) and fleet.b.name not in str(changed)
    stat = fleet.g.run("stat -c '%a %U %G' /etc/haproxy/haproxy.cfg /etc/haproxy/servekit")
    assert stat.stdout.split("\n")[:2] == ["640 root haproxy", "750 root haproxy"]
    # the clients' keys are on the host only as hashes, and nowhere in the deploy's output
    found = fleet.g.run(f"grep -rl -e {ALICE} -e {CI} /etc/haproxy", check=False)
    assert found.returncode == 1, found.stdout
    assert ALICE not in run.stdout + run.stderr and CI not in run.stdout + run.stderr
    active = fleet.g.run("systemctl is-active haproxy; systemctl is-enabled haproxy").stdout
    assert active.split() == ["active", "enabled"]


def test_a_valid_key_reaches_the_replicas(fleet: Fleet) -> None:
    status, body = post(fleet.url("/v1/chat/completions"), ALICE, chat())
    assert status == 200, body
    assert json.loads(body)["choices"][0]["message"]["content"]
    status, body = post(fleet.url("/v1/chat/completions"), ALICE, chat(stream=True, max_tokens=5))
    assert status == 200, body
    assert body.rstrip().endswith("data: [DONE]") and body.count("data: {") >= 5
    status, body = http(fleet.url("/v1/models"), ALICE)
    assert status == 200, body
    listed = json.loads(body)
    assert listed["object"] == "list"
    # the served names (the checkpoint's name among them), each once
    ids = [m["id"] for m in listed["data"]]
    assert {"chat", "assistant"} <= set(ids) and len(ids) == len(set(ids)), ids


def test_errors_clients_see(fleet: Fleet) -> None:
    for key in (None, "sk-wrong-0123456789abcdef"):
        status, body = post(fleet.url("/v1/chat/completions"), key, chat())
        assert status == 401, body
        assert error_of(body)["code"] == "invalid_api_key"
    status, body = post(fleet.url("/v1/chat/completions"), CI, chat("assistant"))
    assert status == 403, body
    assert error_of(body)["code"] == "model_not_allowed"
    statuses = [post(fleet.url("/v1/chat/completions"), CI, chat())[0] for _ in range(6)]
    assert statuses[0] == 200 and statuses[-1] == 429, statuses
    assert set(statuses) == {200, 429}, statuses
    status, body = post(fleet.url("/v1/chat/completions"), CI, chat())
    assert status == 429 and error_of(body)["code"] == "rate_limit_exceeded", body
    # alice has no limit
    assert post(fleet.url("/v1/chat/completions"), ALICE, chat())[0] == 200


def test_engines_turn_away_everyone_but_the_gateway(fleet: Fleet) -> None:
    for host in (fleet.a, fleet.b):
        status, detail = http(f"http://{host.address}:8000/health", timeout=3)
        assert status is None, (status, detail)


def test_a_second_run_changes_nothing(fleet: Fleet) -> None:
    run = fleet.gateway().check()
    assert run.changes() == {}, run


def test_a_bad_keys_file_stops_only_the_gateway_host_and_shows_no_key(fleet: Fleet) -> None:
    fleet.keys.write_text(KEYS + f"bob {BOB} models=nope\n")
    try:
        run = fleet.gateway()
    finally:
        fleet.keys.write_text(KEYS)
    assert run.returncode != 0
    assert run.errors() == {"servekit gateway | Read the gateway's keys": [fleet.g.name]}, run
    output = run.stdout + run.stderr
    # the line as the user's editor numbers it (the comment counts)
    assert "nope" in output and "line 4:" in output, run
    assert BOB not in output and ALICE not in output and CI not in output
    # the gateway still answers with its previous keys
    assert post(fleet.url("/v1/chat/completions"), ALICE, chat())[0] == 200


def test_dry_names_the_files_it_would_write_never_their_content(fleet: Fleet) -> None:
    fleet.keys.write_text(KEYS + f"bob {BOB}\n")
    try:
        inventory = fleet.inventory()
        run = subprocess.run(
            [str(PYINFRA), str(inventory), str(GATEWAY_DEPLOY), "--dry"],
            cwd=inventory.parent,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=600,
        )
    finally:
        fleet.keys.write_text(KEYS)
    output = re.sub(r"\x1b\[[0-9;]*m", "", run.stdout + run.stderr)
    assert run.returncode == 0, output[-3000:]
    assert re.search(rf"\[{fleet.g.name}\]\s+will write /etc/haproxy/servekit/", output), output
    assert "will write /etc/haproxy/haproxy.cfg" not in output  # its content is the same
    assert BOB not in output and hashlib.sha256(BOB.encode()).hexdigest() not in output
    assert post(fleet.url("/v1/chat/completions"), BOB, chat())[0] == 401


def test_a_new_key_works_after_the_next_run_and_streams_survive_it(fleet: Fleet) -> None:
    lines: list[str] = []

    def stream() -> None:
        request = urllib.request.Request(
            fleet.url("/v1/chat/completions"),
            data=json.dumps(chat(stream=True, max_tokens=12000, ignore_eos=True)).encode(),
            method="POST",
        )
        request.add_header("Content-Type", "application/json")
        request.add_header("Authorization", f"Bearer {ALICE}")
        with urllib.request.urlopen(request, timeout=60) as response:
            for raw in response:
                lines.append(raw.decode())

    reader = threading.Thread(target=stream, daemon=True)
    reader.start()
    time.sleep(2)
    assert lines, "the stream had not started"
    assert post(fleet.url("/v1/chat/completions"), BOB, chat())[0] == 401
    fleet.keys.write_text(KEYS + f"bob {BOB}\n")
    run = fleet.gateway().check()
    assert fleet.g.name in run.changes()["servekit gateway | Reload HAProxy"], run
    assert reader.is_alive(), "the stream ended before the run did: make it longer"
    status, body = post(fleet.url("/v1/chat/completions"), BOB, chat())
    assert status == 200, body
    reader.join(timeout=120)
    assert not reader.is_alive()
    assert lines[-1].strip() == "data: [DONE]" or "data: [DONE]" in "".join(lines[-3:])
    tokens = sum(1 for line in lines if line.startswith("data: {"))
    assert tokens >= 12000, tokens


class Load:
    """`servekit bench` through the gateway, in the background: `users` clients streaming
    short chat completions for `duration` seconds, every request recorded (`--json`)."""

    def __init__(
        self, url: str, workdir: Path, duration: int, users: int = 32, model: str = "chat"
    ) -> None:
        self.out = workdir / f"bench-{time.time_ns()}.json"
        key = secret(workdir, "alice.key", ALICE)
        argv = [
            str(SERVEKIT), "bench", url, "concurrent", "--users", str(users),
            "--duration", f"{duration}s", "--model", model, "--api-key-file", str(key),
            "--endpoint", "chat", "--input-len", "32", "--output-len", "64", "--timeout", "60",
            "--json", str(self.out), "--quiet",
        ]  # fmt: skip
        self.proc = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )

    def running(self) -> bool:
        return self.proc.poll() is None

    def result(self, timeout: float = 600) -> BenchResult:
        output, _ = self.proc.communicate(timeout=timeout)
        assert self.out.exists(), output[-3000:]
        return BenchResult.model_validate_json(self.out.read_text())


def failures(result: BenchResult) -> list[RequestRecord]:
    """The failed requests; the run's figures are printed (`pytest -s` shows them)."""
    failed = [r for run in result.runs for r in run.requests if r.status != "ok"]
    summary = result.runs[0].summary
    print(
        f"\nload through the gateway: {summary.completed} completed, {len(failed)} failed "
        f"in {summary.duration_s:.0f} s ({summary.request_throughput:.1f} req/s, peak "
        f"{summary.peak_concurrency} in flight)"
    )
    return failed


def gateway_servers(fleet: Fleet) -> dict[str, dict[str, str]]:
    """HAProxy's `show stat` rows of the replicas by address, read on the gateway host."""
    text = fleet.g.run(
        "echo 'show stat' | socat -t 5 stdio unix-connect:/run/haproxy/admin.sock"
    ).stdout
    rows = parse_show_stat(text).values()
    return {row["addr"]: row for row in rows if row["pxname"].startswith("pool")}


def vllm_unit(host: BenchHost) -> str:
    units = host.run("systemctl list-units --plain --no-legend 'vllm-*.service'").stdout.split()
    return next(u for u in units if u.endswith(".service"))


def test_killing_a_replica_under_load_fails_only_its_streams(fleet: Fleet) -> None:
    load = Load(fleet.url(""), fleet.workdir, duration=40)
    time.sleep(12)
    address = f"{fleet.a.address}:8000"
    streaming = int(gateway_servers(fleet)[address]["scur"])
    assert streaming > 0, "no request in flight on the replica: the load did not start"
    fleet.a.run(f"kill -KILL $(systemctl show -p MainPID --value {vllm_unit(fleet.a)})")
    killed = time.time()
    result = load.result()
    failed = failures(result)
    started = result.runs[0].started_at_unix
    # only requests the killed replica was already answering fail: their answer had begun (200
    # and its headers, maybe tokens) before the kill; every later request went to the other
    # replica, and one sent but not yet answered was retried there
    assert all(r.http_status == 200 and started + r.start_s < killed for r in failed), failed
    assert len(failed) <= streaming + 8, (len(failed), streaming)
    assert result.runs[0].summary.completed > 200, result.runs[0].summary
    # systemd restarts the engine; the gateway's checks take it back
    wait_for(
        lambda: gateway_servers(fleet)[address]["status"].startswith("UP"),
        timeout=120,
        what="the killed replica back UP at the gateway",
    )


def test_a_rolling_upgrade_through_the_gateway_fails_no_request(
    fleet: Fleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(standin_build, "VLLM_VERSION", "0.33.2")
    fleet.index.add(standin_build.build_vllm_wheel(fleet.workdir / "wheels-0.33.2"))
    inventory = fleet.inventory(version="0.33.2")
    load = Load(fleet.url(""), fleet.workdir, duration=180)
    time.sleep(5)
    run = deploy(inventory).check()
    assert load.running(), "the load ended before the rollout did: make it longer"
    result = load.result()
    assert failures(result) == [], failures(result)[:5]
    assert result.runs[0].summary.completed > 500, result.runs[0].summary
    output = run.stdout + run.stderr
    # each replica left the gateway's rotation before its restart and came back after it
    assert output.count("servekit: draining pool1/replica") == 2, output[-5000:]
    assert output.count("back in rotation at the gateway") == 2, output[-5000:]
    for host in (fleet.a, fleet.b):
        assert "/opt/vllm/venvs/0.33.2/" in unit_show(host, vllm_unit(host), "ExecStart")
    again = deploy(inventory).check()
    assert again.changes() == {}, again
