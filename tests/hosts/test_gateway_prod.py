"""`inventories/prod.py`'s shape served end to end on test hosts, then a model moved from Ollama
to vLLM under load through the gateway.

`p0` is prod's a100-0 (a vLLM replica, the gateway, the monitoring host), `p1` is a100-1 (a vLLM
replica behind a firewall that admits p0 only), and `o1`, `o2` small boxes serving an Ollama tag
(two replicas). One pyinfra run deploys it all, as a user would run it; clients on this machine
use keys. deploys/monitoring.py then puts node exporters on every box and Prometheus on p0, which
must see every declared target up (Ollama's APIs probed through the blackbox exporter). Then
Ollama is upgraded under load (one box at a time, drained at the gateway), and the tag moves to
vLLM under load.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from hostbench import BenchHost, FileServer, PackageIndex, PyinfraRun, run_pyinfra
from hostbench.plugin import HostFactory
from standins.build import build_ollama_release, build_vllm_wheel
from test_gateway import ALICE, Load, failures, post
from test_monitoring import all_up, declared_targets, query, wait_until
from vllm_support import ROOT, fake_gpus, http, put_model, secret, ssh_host, write_fleet

pytestmark = pytest.mark.hosts

DEPLOYS = {
    name: ROOT / "deploys" / f"{name}.py" for name in ("vllm", "ollama", "gateway", "monitoring")
}
OLLAMA_VERSION, OLLAMA_NEW = "0.32.3", "0.32.4"
TAG = "llama3.1:8b"
KEYS = f"# name key [models=a,b] [rpm=N] [concurrent=N]\nalice {ALICE}\n"


@dataclass
class Prod:
    p0: BenchHost
    p1: BenchHost
    o1: BenchHost
    o2: BenchHost
    index: PackageIndex
    releases: str
    workdir: Path

    def inventory(self, tag_engine: str, ollama: str = OLLAMA_VERSION) -> Path:
        """prod's shape; the Ollama tag served by Ollama on `o1` and `o2`, or moved to vLLM on
        `p1`."""
        keys = secret(self.workdir, "client-keys", KEYS.strip())
        engine = secret(self.workdir, "engine.key", "sk-prod-engine-0123456789")
        boxes = (self.o1, self.o2)
        moved = (
            f'Serve(model="{TAG}", engine="vllm", hosts=[{self.p1.name!r}], gpus_per_replica=1, '
            "port=8001)"
            if tag_engine == "vllm"
            else f'Serve(model="{TAG}", engine="ollama", hosts={[o.name for o in boxes]!r})'
        )
        small = ", ".join(
            f"SshHost(name={o.name!r}, address={o.address!r}, ssh_user='root', "
            f"ssh_key={str(o.ssh_key)!r})"
            for o in boxes
        )
        fleet = f"""Fleet(
    name="prod",
    machines=[{ssh_host(self.p0, gpus=3)}, {ssh_host(self.p1, gpus=3)}, {small}],
    serve=[Serve(name="chat", model="qwen2.5-7b-instruct", gpus_per_replica=2, replicas=2,
                 hosts=[{self.p0.name!r}, {self.p1.name!r}], served_names=["chat"]),
           {moved}],
    gateway=Gateway(host={self.p0.name!r}, port=8080, api_keys=SecretRef(file={str(keys)!r})),
    monitoring=Monitoring(host={self.p0.name!r}),
    engine_api_key=SecretRef(file={str(engine)!r}),
    sources=Sources(python_index={self.index.url!r}, weights=LocalPath(path="/srv/models"),
                    ollama_releases={self.releases!r}),
    versions=Versions(ollama={ollama!r}),
)"""
        return write_fleet(self.workdir / "inventory" / f"prod-{tag_engine}-{ollama}.py", fleet)

    def run(self, inventory: Path, *deploys: str) -> PyinfraRun:
        return run_pyinfra(inventory, *(DEPLOYS[d] for d in deploys), timeout=1200)

    def url(self, path: str) -> str:
        return f"http://{self.p0.address}:8080{path}"


@pytest.fixture(scope="module")
def prod(
    test_hosts: HostFactory,
    package_index: PackageIndex,
    file_server: FileServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Prod]:
    workdir = tmp_path_factory.mktemp("prod")
    package_index.add(build_vllm_wheel(workdir / "wheels"))
    releases = workdir / "ollama-releases"
    for version in (OLLAMA_VERSION, OLLAMA_NEW):
        build_ollama_release(releases, version)
    mirror = file_server.add_tree(releases, "ollama-releases-prod")
    p0, p1, o1, o2 = test_hosts(4)
    fake_gpus(p0, count=3)
    fake_gpus(p1, count=3)
    for host in (p0, p1):
        put_model(host, "Qwen/Qwen2.5-7B-Instruct")
    put_model(p1, "meta-llama/Llama-3.1-8B-Instruct")  # the Ollama tag's model, for the move
    yield Prod(p0, p1, o1, o2, package_index, mirror, workdir)


def chat(model: str, **extra: object) -> dict[str, object]:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 6,
            **extra}  # fmt: skip


def test_prod_is_served_end_to_end(prod: Prod) -> None:
    inventory = prod.inventory("ollama")
    prod.run(inventory, "vllm", "ollama", "gateway").check()
    for model in ("chat", TAG):
        status, body = post(prod.url("/v1/chat/completions"), ALICE, chat(model))
        assert status == 200, (model, body)
        assert json.loads(body)["choices"][0]["message"]["content"]
        status, body = post(prod.url("/v1/chat/completions"), ALICE, chat(model, stream=True))
        assert status == 200 and body.rstrip().endswith("data: [DONE]"), (model, body)
    assert post(prod.url("/v1/chat/completions"), None, chat("chat"))[0] == 401
    # nothing but the gateway reaches an engine: p0's listens on loopback, p1's and o's admit
    # only p0 (and the monitoring host, p0 too)
    for url in (
        f"http://{prod.p0.address}:8000/health",
        f"http://{prod.p1.address}:8000/health",
        f"http://{prod.o1.address}:11434/",
    ):
        assert http(url, timeout=3)[0] is None, url
    again = prod.run(inventory, "vllm", "ollama", "gateway").check()
    assert again.changes() == {}, again


def test_monitoring_sees_every_target_of_prod_up(prod: Prod) -> None:
    inventory = prod.inventory("ollama")
    run = prod.run(inventory, "monitoring").check()
    installed = run.changes()["servekit monitoring | Install the node exporter"]
    assert set(installed) == {h.name for h in (prod.p0, prod.p1, prod.o1, prod.o2)}
    declared = declared_targets(inventory, prod.p0.name)
    assert {job for job, _ in declared} == {
        "prometheus", "alertmanager", "blackbox", "vllm", "node", "gateway", "ollama"
    }  # fmt: skip
    wait_until(lambda: all_up(prod.p0, declared), 90, "every declared target of prod up", 2)
    probes = query(prod.p0, 'probe_success{job="ollama"}')
    assert {(p["metric"]["host"], p["value"][1]) for p in probes} == {
        (prod.o1.name, "1"),
        (prod.o2.name, "1"),
    }
    assert prod.run(inventory, "monitoring").check().changes() == {}


def test_an_ollama_upgrade_under_load_fails_no_request(prod: Prod) -> None:
    inventory = prod.inventory("ollama", ollama=OLLAMA_NEW)
    load = Load(prod.url(""), prod.workdir, duration=150, users=16, model=TAG)
    run = prod.run(inventory, "ollama").check()
    assert load.running(), "the load ended before the upgrade did: make it longer"
    result = load.result()
    assert failures(result) == [], failures(result)[:5]
    output = run.stdout + run.stderr
    # one box at a time: drained, restarted, answering, back in rotation, then the next
    drains = [m.start() for m in re.finditer(r"servekit: draining pool\d+/replica\d", output)]
    backs = [m.start() for m in re.finditer("back in rotation at the gateway", output)]
    assert len(drains) == 2 and len(backs) == 2, output[-5000:]
    assert drains[0] < backs[0] < drains[1] < backs[1], output[-5000:]
    for box in (prod.o1, prod.o2):
        version = box.run(f"curl -fsS --max-time 5 http://{box.address}:11434/api/version")
        assert json.loads(version.stdout)["version"] == OLLAMA_NEW
    assert prod.run(inventory, "ollama").check().changes() == {}


def test_moving_a_model_from_ollama_to_vllm_fails_no_request(prod: Prod) -> None:
    inventory = prod.inventory("vllm")
    load = Load(prod.url(""), prod.workdir, duration=150, users=16, model=TAG)
    run = prod.run(inventory, "vllm", "gateway", "ollama").check()
    assert load.running(), "the load ended before the move did: make it longer"
    result = load.result()
    assert failures(result) == [], failures(result)[:5]
    assert result.runs[0].summary.completed > 300, result.runs[0].summary
    changed = run.changes()
    for box in (prod.o1, prod.o2):
        active = box.run("systemctl is-active ollama", check=False).stdout.strip()
        assert active == "inactive", (box.name, active, sorted(changed), run.stderr[-3000:])
    retired = changed.get("Ollama | Retire ollama.service (no Ollama model planned here)")
    assert set(retired or []) == {prod.o1.name, prod.o2.name}, sorted(changed)
    # same URL, key and model name: now answered by vLLM on p1
    status, body = post(prod.url("/v1/chat/completions"), ALICE, chat(TAG))
    assert status == 200 and json.loads(body)["model"] == TAG, body
    assert prod.run(inventory, "vllm", "gateway", "ollama").check().changes() == {}
