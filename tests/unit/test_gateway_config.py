"""The gateway's plan: the client keys file parsed to hashes (each bad line refused by line and
field, never showing the key), and HAProxy's config and maps from a planned fleet, every rendered
config checked by the real `haproxy -c` (Debian's haproxy; CI installs it)."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from servekit.errors import FleetError
from servekit.gateway import GATEWAY, ApiKey, GatewayLayout, KeysError, gateway_files, gateway_lines
from servekit.gateway.haproxy import haproxy_word, server_address
from servekit.gateway.keys import parse_keys
from servekit.hostplan import GatewayHost, HostPlan, Route
from servekit.placement import plan_fleet
from servekit.secrets import SecretError
from servekit.spec import Fleet, Gateway, Gpu, Monitoring, SecretRef, Serve, SshHost

QWEN = "Qwen/Qwen2.5-7B-Instruct"
LLAMA = "llama3.1:8b"
SERVED = [QWEN, LLAMA]
ALICE = "sk-alice-0123456789abcdef"
CI_KEY = "sk-ci-0123456789abcdef"
ENGINE = "engine-key.0123456789"


def gateway_plan(**fleet: object) -> HostPlan:
    declared = Fleet(
        name="team",
        machines=[
            SshHost(name="g1", address="10.0.0.1", gpu=Gpu(model="L4")),
            SshHost(name="g2", address="10.0.0.2", gpu=Gpu(model="L4")),
            SshHost(name="o1", address="10.0.0.3", gpu=Gpu(model="L4")),
            SshHost(name="gw", address="10.0.0.9"),
        ],
        serve=[
            Serve(model="qwen2.5-7b-instruct", hosts=["g1", "g2"]),
            Serve(model=LLAMA, engine="ollama", hosts=["o1"]),
        ],
        gateway=Gateway(host="gw", api_keys=SecretRef(env="CLIENT_KEYS")),
        engine_api_key=SecretRef(env="ENGINE_KEY"),
        **fleet,
    )
    return plan_fleet(declared).hosts["gw"]


def keys() -> list[ApiKey]:
    return parse_keys(
        ["# name key", f"alice {ALICE}", f"ci {CI_KEY} models={QWEN} rpm=60 concurrent=4"], SERVED
    )


def haproxy_check(files: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """Write the files where their paths say (under tmp_path) and run `haproxy -c -f`."""
    haproxy = shutil.which("haproxy") or "/usr/sbin/haproxy"
    assert Path(haproxy).exists(), "install haproxy (apt-get install haproxy; .ci/run does)"
    for path, content in files.items():
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(content)
    config = next(path for path in files if path.endswith("haproxy.cfg"))
    return subprocess.run([haproxy, "-c", "-f", config], capture_output=True, text=True, timeout=30)


def rendered(tmp_path: Path, plan: HostPlan, engine_key: str | None = ENGINE) -> dict[str, str]:
    layout = GatewayLayout.under(str(tmp_path))
    return {f.path: f.content for f in gateway_files(plan, keys(), engine_key, layout)}


# keys file


def test_keys_are_kept_as_sha256_with_their_limits() -> None:
    alice, ci = keys()
    assert alice == ApiKey("alice", hashlib.sha256(ALICE.encode()).hexdigest())
    assert ci == ApiKey("ci", hashlib.sha256(CI_KEY.encode()).hexdigest(), (QWEN,), 60, 4)
    assert ALICE not in repr(alice) and CI_KEY not in repr(ci)


BAD_LINES = [
    ("alice", "line 1: expected a name and a key"),
    (f"Alice {ALICE}", "line 1: field name"),
    (f"-alice {ALICE}", "line 1: field name"),
    (f"{'a' * 64} {ALICE}", "line 1: field name"),
    ("alice sk-short", "line 1: field key"),
    (f'alice {ALICE}"x', "line 1: field key"),
    (f"alice {'k' * 257}", "line 1: field key"),
    (f"alice {ALICE}\x7f", "line 1: field key"),
    (f"alice {ALICE} models=gpt-4", "line 1: field models: 'gpt-4' not served"),
    (f"alice {ALICE} models=", "line 1: field models: an empty list"),
    (f"alice {ALICE} rpm=0", "line 1: field rpm"),
    (f"alice {ALICE} rpm=ten", "line 1: field rpm"),
    (f"alice {ALICE} concurrent=-1", "line 1: field concurrent"),
    (f"alice {ALICE} rpm=1 rpm=2", "line 1: field rpm given twice"),
    (f"alice {ALICE} tokens=5", "line 1: unknown field"),
    (f"alice {ALICE} extra", "line 1: unknown field"),
]


@pytest.mark.parametrize(("line", "message"), BAD_LINES)
def test_a_bad_line_is_refused_by_line_and_field_never_showing_the_key(
    line: str, message: str
) -> None:
    with pytest.raises(KeysError) as caught:
        parse_keys([line], SERVED)
    assert message in str(caught.value)
    assert ALICE not in str(caught.value) and "k" * 20 not in str(caught.value)
    assert isinstance(caught.value, SecretError)


def test_duplicate_names_and_keys_are_refused_on_their_line() -> None:
    with pytest.raises(KeysError, match="line 3: field name: 'alice' given twice"):
        parse_keys([f"alice {ALICE}", "# comment", f"alice {CI_KEY}"], SERVED)
    with pytest.raises(KeysError, match="line 2: field key: the same key") as caught:
        parse_keys([f"alice {ALICE}", f"bob {ALICE}"], SERVED)
    assert ALICE not in str(caught.value)
    with pytest.raises(KeysError, match="holds no key"):
        parse_keys(["# only a comment", ""], SERVED)


# rendered files


def test_files_are_0640_root_haproxy_at_the_layout_paths() -> None:
    files = gateway_files(gateway_plan(), keys(), ENGINE)
    assert [f.path for f in files] == [
        GATEWAY.config,
        GATEWAY.keys_map,
        GATEWAY.allowed_map,
        GATEWAY.routes_map,
        GATEWAY.rpm_map,
        GATEWAY.concurrent_map,
        GATEWAY.models_json,
    ]
    assert GATEWAY.config == "/etc/haproxy/haproxy.cfg"
    assert all(f.path.startswith("/etc/haproxy/servekit/") for f in files[1:])
    assert {(f.mode, f.user, f.group) for f in files} == {("0640", "root", "haproxy")}
    config = files[0].content
    assert "\n    user haproxy\n    group haproxy\n" in config
    assert "bind *:8080\n" in config


def test_maps_hold_hashes_routes_allowlists_and_limits(tmp_path: Path) -> None:
    files = rendered(tmp_path, gateway_plan())
    text = "\n".join(files.values())
    assert ALICE not in text and CI_KEY not in text
    servekit = tmp_path / "servekit"
    alice_sha = hashlib.sha256(ALICE.encode()).hexdigest()
    assert f"{alice_sha} alice\n" in files[str(servekit / "keys.map")]
    assert files[str(servekit / "routes.map")] == f"{QWEN} pool1\n{LLAMA} pool2\n"
    assert files[str(servekit / "allowed.map")] == (
        f"alice/{QWEN} 1\nalice/{LLAMA} 1\nci/{QWEN} 1\n"
    )
    assert files[str(servekit / "rpm.map")] == "ci 60\n"
    assert files[str(servekit / "concurrent.map")] == "ci 4\n"
    models = json.loads(files[str(servekit / "models.json")])
    assert models["object"] == "list"
    assert [m["id"] for m in models["data"]] == SERVED


def test_the_config_passes_haproxy_check(tmp_path: Path) -> None:
    files = rendered(tmp_path, gateway_plan())
    checked = haproxy_check(files, tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    config = files[str(tmp_path / "haproxy.cfg")]
    vllm, ollama = config.split("\nbackend pool1\n")[1].split("\nbackend pool2\n")
    assert f'http-request set-header Authorization "Bearer {ENGINE}"' in vllm
    assert "option httpchk GET /health\n" in vllm
    assert "server replica1 10.0.0.1:8000\n    server replica2 10.0.0.2:8000\n" in vllm
    assert "http-request del-header Authorization" in ollama and ENGINE not in ollama
    assert "option httpchk GET /\n" in ollama
    for directive in ("balance leastconn", "slowstart", "retry-on conn-failure empty-response"):
        assert directive in config
    assert "hdr(" not in config.split("log-format")[1].split("\n")[0]


def test_without_an_engine_key_no_header_is_added_and_haproxy_accepts_it(tmp_path: Path) -> None:
    files = rendered(tmp_path, gateway_plan(), engine_key=None)
    assert "set-header Authorization" not in files[str(tmp_path / "haproxy.cfg")]
    checked = haproxy_check(files, tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def with_routes(plan: HostPlan, routes: list[Route]) -> HostPlan:
    assert plan.gateway is not None
    gateway = GatewayHost(**{**plan.gateway.model_dump(), "routes": routes})
    return plan.model_copy(update={"gateway": gateway})


def test_ipv6_and_named_upstreams_and_shared_pools_pass_haproxy_check(tmp_path: Path) -> None:
    routes = [
        Route(model="a", upstreams=["[fd00::5]:8000", "fd00::6:8000"], engine="vllm"),
        Route(model="a-alias", upstreams=["[fd00::5]:8000", "fd00::6:8000"], engine="vllm"),
        Route(model="org/b", upstreams=["gpu-7.example:11434"], engine="ollama"),
    ]
    plan = with_routes(gateway_plan(), routes)
    files = {
        f.path: f.content
        for f in gateway_files(plan, parse_keys([f"x {ALICE}"], ["a"]), ENGINE,
                               GatewayLayout.under(str(tmp_path)))
    }  # fmt: skip
    checked = haproxy_check(files, tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    config = files[str(tmp_path / "haproxy.cfg")]
    assert "server replica1 [fd00::5]:8000\n    server replica2 [fd00::6]:8000\n" in config
    assert config.count("\nbackend pool") == 2
    assert (
        files[str(tmp_path / "servekit" / "routes.map")] == "a pool1\na-alias pool1\norg/b pool2\n"
    )
    assert gateway_lines(plan)[1:] == [
        "  a, a-alias: vllm, 2 replicas ([fd00::5]:8000, [fd00::6]:8000)",
        "  org/b: ollama, 1 replica (gpu-7.example:11434)",
    ]


@pytest.mark.parametrize("model", ["a b", "a#b", "a\\b", "a'b", 'a"b', "a%b", "a$b", "a\nb", ""])
def test_model_names_haproxy_would_parse_are_refused(model: str) -> None:
    plan = with_routes(
        gateway_plan(), [Route(model=model, upstreams=["10.0.0.1:8000"], engine="vllm")]
    )
    with pytest.raises(ValueError, match="model name not usable"):
        gateway_files(plan, [], ENGINE)


@pytest.mark.parametrize(
    "upstream", ["<g1>:8000", "10.0.0.1", "10.0.0.1:0", "10.0.0.1:65536", "a b:80", "h%x:80"]
)
def test_upstreams_without_a_plain_address_are_refused(upstream: str) -> None:
    with pytest.raises(ValueError, match="gateway upstream"):
        server_address(upstream)


@pytest.mark.parametrize("value", ['"', "a b", "#", "%[x]", "a\\b", "${HOME}", "'"])
def test_the_config_word_filter_refuses_what_haproxy_parses(value: str) -> None:
    with pytest.raises(ValueError):
        haproxy_word(value)


@pytest.mark.parametrize("key", ['ab"c', "a b", "%[src]", "a\\b", "k#", "x" * 513])
def test_an_engine_key_haproxy_would_parse_is_refused_without_showing_it(key: str) -> None:
    with pytest.raises(SecretError) as caught:
        gateway_files(gateway_plan(), keys(), key)
    assert key not in str(caught.value)


def test_metrics_are_served_to_loopback_and_admitted_hosts_only(tmp_path: Path) -> None:
    plan = gateway_plan()
    config = rendered(tmp_path, plan)[str(tmp_path / "haproxy.cfg")]
    expected = " ".join(["127.0.0.1", "::1", *plan.firewall_allow])
    assert f"acl metrics_client src {expected}\n" in config
    assert "use-service prometheus-exporter if { path /metrics } metrics_client" in config


def test_gateway_lines_show_the_url_and_pools_never_keys() -> None:
    plan = gateway_plan(monitoring=Monitoring(host="gw"))
    lines = gateway_lines(plan)
    assert lines == [
        "gateway: http://10.0.0.9:8080/v1 (HAProxy, one key per client)",
        f"  {QWEN}: vllm, 2 replicas (10.0.0.1:8000, 10.0.0.2:8000)",
        f"  {LLAMA}: ollama, 1 replica (10.0.0.3:11434)",
    ]
    assert (
        gateway_lines(
            plan_fleet(Fleet(name="solo", machines=[SshHost(name="a", address="10.1.1.1")])).hosts[
                "a"
            ]
        )
        == []
    )


def test_the_monitoring_host_may_read_metrics_on_a_gateway_only_host(tmp_path: Path) -> None:
    """gw runs no engine, so no servekit firewall lists admitted hosts there: the monitoring
    host's address reaches the metrics ACL from the plan itself."""
    plan = gateway_plan(monitoring=Monitoring(host="o1"))
    assert plan.firewall_allow == [] and plan.gateway is not None
    assert plan.gateway.metrics_clients == ["10.0.0.3"]
    config = next(v for k, v in rendered(tmp_path, plan).items() if k.endswith("haproxy.cfg"))
    acl = next(line for line in config.splitlines() if "acl metrics_client" in line)
    assert acl.split()[-3:] == ["127.0.0.1", "::1", "10.0.0.3"]
    alone = gateway_plan(monitoring=Monitoring(host="gw"))  # on the gateway's own host
    assert alone.gateway is not None and alone.gateway.metrics_clients == []


def test_errors_name_the_line_of_the_file_comments_included(tmp_path: Path) -> None:
    from servekit.secrets import load_numbered_lines

    path = tmp_path / "keys"
    path.write_text(f"# clients\n\nalice {ALICE}\n# ci below\nci {CI_KEY} models=nope\n")
    path.chmod(0o600)
    numbered = load_numbered_lines(SecretRef(file=str(path)))
    assert [n for n, _line in numbered] == [3, 5]
    with pytest.raises(KeysError, match="line 5: ") as caught:
        parse_keys(numbered, SERVED)
    assert "nope" in str(caught.value) and CI_KEY not in str(caught.value)


def test_plan_counts_the_clients_keys_never_shows_them(tmp_path: Path) -> None:
    from servekit.gateway.keys import keys_summary
    from servekit.hostplan import SecretSource

    path = tmp_path / "keys"
    path.write_text(f"# clients\nalice {ALICE}\nci {CI_KEY} models={QWEN} rpm=60\n")
    path.chmod(0o600)
    summary = keys_summary(SecretSource(file=str(path)), SERVED)
    assert summary == f"keys: 2 clients (1 with limits), from file {path}"
    path.write_text(f"alice {ALICE}\nci {CI_KEY} models=nope\n")
    summary = keys_summary(SecretSource(file=str(path)), SERVED)
    assert summary.startswith(f"keys: file {path}: not usable: gateway keys file, line 2:")
    assert ALICE not in summary and CI_KEY not in summary
    missing = keys_summary(SecretSource(file=str(tmp_path / "absent")), SERVED)
    assert "not usable: cannot read secret file" in missing


def test_two_entries_answering_one_name_are_refused_with_the_fix() -> None:
    fleet = Fleet(
        name="twice",
        machines=[
            SshHost(name="g1", address="10.0.0.1", gpu=Gpu(model="L4")),
            SshHost(name="o1", address="10.0.0.3", gpu=Gpu(model="L4")),
            SshHost(name="gw", address="10.0.0.9"),
        ],
        serve=[
            Serve(model="qwen2.5-7b-instruct", hosts=["g1"], served_names=["chat"]),
            Serve(model=LLAMA, engine="ollama", hosts=["o1"]),
            Serve(name="chat2", model="qwen2.5-7b-instruct", hosts=["o1"], engine="vllm"),
        ],
        gateway=Gateway(host="gw", api_keys=SecretRef(env="CLIENT_KEYS")),
        engine_api_key=SecretRef(env="ENGINE_KEY"),
    )
    with pytest.raises(FleetError) as caught:
        plan_fleet(fleet)
    text = str(caught.value)
    assert "serve[2].served_names" in text and f"{QWEN!r} is also answered by serve[0]" in text
    assert "fix:" in text


def test_prefix_affinity_reaches_its_own_backend_and_haproxy_accepts_it(tmp_path: Path) -> None:
    """A fleet's `routing` flows through placement into the route, and a pool with prefix
    affinity hashes the prompt's start (bounded load) while the default keeps leastconn; the
    same replicas with different routing are two backends."""
    fleet_plan = plan_fleet(
        Fleet(
            name="team",
            machines=[
                SshHost(name="g1", address="10.0.0.1", gpu=Gpu(model="L4")),
                SshHost(name="gw", address="10.0.0.9"),
            ],
            serve=[Serve(model="qwen2.5-7b-instruct", hosts=["g1"], routing="prefix-affinity")],
            gateway=Gateway(host="gw", api_keys=SecretRef(env="CLIENT_KEYS")),
            engine_api_key=SecretRef(env="ENGINE_KEY"),
        )
    )
    planned = fleet_plan.hosts["gw"]
    assert planned.gateway is not None
    assert [r.routing for r in planned.gateway.routes] == ["prefix-affinity"]
    upstreams = ["10.0.0.1:8000", "10.0.0.2:8000"]
    plan = with_routes(
        planned,
        [
            Route(model="a", upstreams=upstreams, engine="vllm", routing="prefix-affinity"),
            Route(model="b", upstreams=upstreams, engine="vllm"),
        ],
    )
    files = rendered(tmp_path, plan)
    checked = haproxy_check(files, tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    config = files[str(tmp_path / "haproxy.cfg")]
    affinity, default = config.split("\nbackend pool")[1:]
    assert "balance hash var(txn.prefix)\n    hash-type consistent\n" in affinity
    assert "hash-balance-factor 150\n" in affinity
    assert "json_query('$.messages[0].content'),bytes(0,256)" in affinity
    assert "balance leastconn" in default and "txn.prefix" not in default
    assert files[str(tmp_path / "servekit" / "routes.map")] == "a pool1\nb pool2\n"
    assert gateway_lines(plan)[1:] == [
        "  a: vllm, 2 replicas (10.0.0.1:8000, 10.0.0.2:8000), prefix-affinity",
        "  b: vllm, 2 replicas (10.0.0.1:8000, 10.0.0.2:8000)",
    ]
    ollama = with_routes(
        planned, [Route(model="o", upstreams=upstreams, engine="ollama", routing="prefix-affinity")]
    )
    with pytest.raises(ValueError, match="prefix-affinity is for vLLM pools"):
        gateway_files(ollama, [], ENGINE)
