"""The firewall policy without hosts: typed address sets per family, host names resolved at plan
time through an injected resolver (never real DNS), the SSH port never matched, exposed Ollama
guarded, the engines requiring the firewall unit, and `nft -c -f` accepting what is rendered."""

from __future__ import annotations

import ipaddress
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from servekit.cli import app
from servekit.errors import FleetError
from servekit.firewall import (
    FirewallError,
    FirewallRules,
    PortRange,
    check_rules,
    firewall_files,
    firewall_lines,
    firewall_rules,
    merged,
    nft_elements,
    render_rules,
    without,
)
from servekit.hostplan import HostPlan
from servekit.operations.firewall import LOAD, save_previous
from servekit.placement import plan_fleet
from servekit.render import render_host
from servekit.spec import (
    Fleet,
    Gateway,
    Gpu,
    HuggingFace,
    Monitoring,
    OllamaSettings,
    SecretRef,
    Serve,
    Sources,
    SshHost,
)

KEY = SecretRef(env="ENGINE_KEY")
HF = Sources(weights=HuggingFace(token=SecretRef(env="HF")))
DNS = {
    "gw.example.com": ["10.9.0.99", "fd00::99"],
    "mon.example.com": ["10.9.0.98"],
    "laptop.example.com": ["2001:db8::7"],
}


def resolver(table: dict[str, list[str]]) -> Callable[[str], list[str]]:
    """A resolver answering from `table`; other names fail as getaddrinfo does."""

    def resolve(name: str) -> list[str]:
        if name not in table:
            raise OSError(f"[Errno -2] Name or service not known: {name}")
        return table[name]

    return resolve


def nft_set(text: str, name: str) -> list[str]:
    """The elements of the named set in an nftables file (empty when it has none)."""
    body = text.split(f"set {name} {{", 1)[1].split("}", 1)[0]
    if "elements = {" not in body:
        return []
    return [e.strip() for e in body.split("elements = {", 1)[1].split(",")]


def gpu(name: str, address: str, **extra: object) -> SshHost:
    return SshHost(name=name, address=address, gpu=Gpu(model="A100-80GB"), **extra)  # type: ignore[arg-type]


def behind_gateway(
    gateway_address: str = "gw.example.com", dns: dict[str, list[str]] = DNS, **n0: object
) -> dict[str, HostPlan]:
    fleet = Fleet(
        name="fw",
        machines=[gpu("n0", "10.9.0.10", **n0), SshHost(name="gw", address=gateway_address)],
        serve=[Serve(model="llama-3.1-8b-instruct")],
        gateway=Gateway(host="gw", api_keys=SecretRef(env="CLIENTS")),
        monitoring=Monitoring(host="gw"),
        engine_api_key=KEY,
        sources=HF,
    )
    return plan_fleet(fleet, resolve_name=resolver(dns)).hosts


def ollama_fleet(clients: list[str], expose: bool = True, gateway: str = "gw") -> Fleet:
    return Fleet(
        name="ol",
        machines=[
            SshHost(name="o1", address="10.8.0.11", gpu=Gpu(model="A100-80GB")),
            SshHost(name="gw", address="10.8.0.2"),
            SshHost(name="mon", address="mon.example.com"),
        ],
        serve=[Serve(model="llama3.1:8b", engine="ollama", hosts=["o1"])],
        gateway=Gateway(host=gateway, api_keys=SecretRef(env="CLIENTS")),
        monitoring=Monitoring(host="mon"),
        ollama=OllamaSettings(expose=expose, clients=clients),
    )


# --- names, families, sets ----------------------------------------------------------------------


def test_a_host_name_is_resolved_at_plan_time_into_both_families() -> None:
    hosts = behind_gateway()
    plan = hosts["n0"]
    assert plan.firewall_allow == ["10.9.0.99", "fd00::99"]
    assert plan.firewall_names == {"gw.example.com": ["10.9.0.99", "fd00::99"]}
    text = render_rules(plan)
    assert nft_set(text, "admitted4") == ["10.9.0.99"]
    assert nft_set(text, "admitted6") == ["fd00::99"]
    assert "type ipv4_addr" in text.split("set admitted4")[1].split("}")[0]
    assert "type ipv6_addr" in text.split("set admitted6")[1].split("}")[0]
    assert "ip saddr @admitted4 tcp dport @protected accept" in text
    assert "ip6 saddr @admitted6 tcp dport @protected accept" in text
    assert "gw.example.com" not in text.split("table inet servekit {}")[1]  # names: comments only
    assert render_host(hosts["gw"]) == []  # no engine there, no firewall of ours


def test_an_unresolvable_name_is_refused_naming_the_field() -> None:
    with pytest.raises(FleetError) as refused:
        behind_gateway(gateway_address="nowhere.invalid")
    (problem,) = refused.value.problems
    assert problem.field == "machines[1].address"
    assert "does not resolve" in problem.message and "nowhere.invalid" in problem.message
    assert "IP address" in problem.fix


def test_names_are_resolved_only_where_a_firewall_needs_them() -> None:
    asked: list[str] = []

    def resolve(name: str) -> list[str]:
        asked.append(name)
        raise OSError("no DNS in this test")

    fleet = Fleet(
        name="solo",
        machines=[gpu("n0", "gpu0.example.com")],
        serve=[Serve(model="llama-3.1-8b-instruct")],
        engine_api_key=KEY,
        sources=HF,
    )
    plan_fleet(fleet, resolve_name=resolve)  # nobody to admit: nothing to look up
    assert asked == []


@pytest.mark.parametrize(
    "pasted",
    ["10.0.0.9, 0.0.0.0/0", "10.0.0.0/8", "0.0.0.0/0", "gw;drop", "gw example", "ｇｗ.com"],
)
def test_text_that_is_not_one_address_never_reaches_the_rules(pasted: str) -> None:
    with pytest.raises(FleetError) as refused:
        behind_gateway(gateway_address=pasted, dns={})
    assert refused.value.problems[0].field == "machines[1].address"


def test_the_plan_refuses_non_addresses_even_when_built_by_hand() -> None:
    plan = behind_gateway()["n0"]
    data = plan.to_host_data()
    for bad in ("10.0.0.9, 0.0.0.0/0", "10.0.0.0/8", "gw.example.com"):
        with pytest.raises(ValueError):
            HostPlan.model_validate({**data, "firewall": {**data["firewall"], "admitted": [bad]}})
    assert HostPlan.model_validate(data).firewall is not None  # the unchanged plan loads


def test_set_elements_come_from_typed_values_only() -> None:
    assert nft_elements([ipaddress.ip_address("fd00::1"), PortRange(10, 12)]) == "fd00::1, 10-12"
    with pytest.raises(FirewallError):
        nft_elements(["10.0.0.1 } accept"])  # type: ignore[list-item]
    with pytest.raises(FirewallError):
        PortRange(0, 10)


# --- the SSH port ------------------------------------------------------------------------------


def test_port_sets_split_around_the_ssh_port() -> None:
    ranges = [PortRange(10002, 19999), PortRange(8000, 8000), PortRange(8001, 8001)]
    assert merged(ranges) == [PortRange(8000, 8001), PortRange(10002, 19999)]
    assert without(ranges, 10022) == [
        PortRange(8000, 8001),
        PortRange(10002, 10021),
        PortRange(10023, 19999),
    ]
    assert without([PortRange(22, 22)], 22) == []


def test_the_ssh_port_is_never_in_a_protected_set() -> None:
    fleet = Fleet(
        name="ray",
        machines=[gpu("n0", "10.9.0.10"), gpu("n1", "10.9.0.11")],
        serve=[
            Serve(
                model="llama-3.1-8b-instruct",
                nodes_per_replica=2,
                pipeline_parallel=2,
                distributed_backend="ray",
            )
        ],
        engine_api_key=KEY,
        sources=HF,
    )
    assert plan_fleet(fleet).hosts["n0"].ssh_port == 22
    # The schema refuses an SSH port inside Ray's range; the firewall does not rely on that.
    plan = plan_fleet(fleet).hosts["n0"].model_copy(update={"ssh_port": 10022})
    rules = firewall_rules(plan)
    assert all(10022 not in r for r in rules.protected)
    text = render_rules(plan)
    assert "10002-10021" in nft_set(text, "protected")
    assert "10023-19999" in nft_set(text, "protected")
    assert "The SSH port (10022) is never matched" in text


def test_ssh_port_comes_from_the_inventory() -> None:
    assert behind_gateway(ssh_port=2222)["n0"].ssh_port == 2222


def test_rendering_refuses_rules_that_match_the_ssh_port() -> None:
    rules = FirewallRules(
        ssh_port=8000,
        engine_ports=[8000],
        cluster_ports=[],
        open_ports=[],
        ollama_ports=[],
        admitted=[],
        clients=[],
    )
    check_rules(rules)  # taken out by construction
    assert rules.protected == []

    class Broken(FirewallRules):
        @property
        def protected(self) -> list[PortRange]:
            return [PortRange(7999, 8001)]

    broken = Broken(**{**rules.__dict__})
    with pytest.raises(FirewallError, match="SSH port 8000"):
        check_rules(broken)


# --- exposed Ollama ----------------------------------------------------------------------------


def test_an_exposed_ollama_gets_the_firewall_with_its_declared_clients() -> None:
    fleet = ollama_fleet(["192.168.5.7", "laptop.example.com", "10.8.0.2"])
    plan = plan_fleet(fleet, resolve_name=resolver(DNS)).hosts["o1"]
    assert plan.ollama is not None and plan.ollama.listen == "10.8.0.11:11434"
    assert plan.firewall_allow == ["10.8.0.2", "10.9.0.98"]  # gateway, monitoring
    assert plan.ollama_clients == ["192.168.5.7", "2001:db8::7"]  # the gateway is admitted anyway
    files = {f.path: f.content for f in render_host(plan)}
    text = files["/etc/servekit/firewall.nft"]
    assert nft_set(text, "protected") == ["11434"] and nft_set(text, "ollama") == ["11434"]
    assert nft_set(text, "clients4") == ["192.168.5.7"]
    assert nft_set(text, "clients6") == ["2001:db8::7"]
    assert "ip saddr @clients4 tcp dport @ollama accept" in text
    assert "tcp dport @protected reject with tcp reset" in text
    unit = files["/etc/systemd/system/ollama.service"].split("[Service]")[0]
    assert "Requires=servekit-firewall.service" in unit
    assert "servekit-firewall.service" in unit.split("After=")[1].splitlines()[0]
    firewall_unit = files["/etc/systemd/system/servekit-firewall.service"]
    assert "ollama.service" in firewall_unit.split("Before=")[1].splitlines()[0]


def test_a_loopback_ollama_gets_no_firewall_rule_and_no_dependency() -> None:
    """Not exposed, and the gateway on its own host: Ollama listens on loopback only. The host's
    firewall protects only its node exporter (the monitoring host's, not Ollama's)."""
    # (the gateway resolves the monitoring host's name: it may read the gateway's /metrics)
    fleet = ollama_fleet(["192.168.5.7"], expose=False, gateway="o1")
    plan = plan_fleet(fleet, resolve_name=resolver(DNS)).hosts["o1"]
    assert plan.ollama is not None and plan.ollama.listen == "127.0.0.1:11434"
    files = {f.path: f.content for f in render_host(plan)}
    text = files["/etc/servekit/firewall.nft"]
    assert "set ollama" not in text and "set protected" in text and nft_set(text, "protected") == []
    assert nft_set(text, "exporters") == ["9100"]
    assert "servekit-firewall" not in files["/etc/systemd/system/ollama.service"]
    assert plan.firewall is not None and plan.firewall.monitoring == ["10.9.0.98"]
    assert nft_set(text, "monitoring4") == ["10.9.0.98"] and plan.ollama_clients == []
    assert plan.firewall_allow == []  # nothing but the exporters is protected here


def test_an_ollama_behind_a_gateway_on_another_host_admits_only_it() -> None:
    """Not exposed, but a gateway elsewhere routes to it: it listens where the gateway reaches
    it, and its firewall admits the gateway and monitoring hosts, no declared client."""
    fleet = ollama_fleet(["192.168.5.7"], expose=False)
    plan = plan_fleet(fleet, resolve_name=resolver(DNS)).hosts["o1"]
    assert plan.ollama is not None and plan.ollama.listen == "10.8.0.11:11434"
    assert plan.firewall_allow == ["10.8.0.2", "10.9.0.98"]
    assert plan.ollama_clients == []
    text = {f.path: f.content for f in render_host(plan)}["/etc/servekit/firewall.nft"]
    assert nft_set(text, "ollama") == ["11434"] and nft_set(text, "clients4") == []


def test_clients_are_admitted_to_ollama_only_not_to_vllm() -> None:
    fleet = Fleet(
        name="mix",
        machines=[gpu("n0", "10.9.0.10"), SshHost(name="gw", address="10.9.0.99")],
        serve=[
            Serve(model="llama-3.1-8b-instruct"),
            Serve(model="llama3.1:8b", engine="ollama", hosts=["n0"]),
        ],
        gateway=Gateway(host="gw", api_keys=SecretRef(env="CLIENTS")),
        ollama=OllamaSettings(expose=True, clients=["192.168.5.7"]),
        engine_api_key=KEY,
        sources=HF,
    )
    text = render_rules(plan_fleet(fleet, resolve_name=resolver({})).hosts["n0"])
    assert nft_set(text, "admitted4") == ["10.9.0.99"]
    assert nft_set(text, "clients4") == ["192.168.5.7"]
    assert nft_set(text, "ollama") == ["11434"]
    assert nft_set(text, "protected") == ["8000", "11434"]


# --- units and loading -------------------------------------------------------------------------


def test_engines_require_the_firewall_and_start_after_it() -> None:
    fleet = Fleet(
        name="ray",
        machines=[gpu("n0", "10.9.0.10"), gpu("n1", "10.9.0.11")],
        serve=[
            Serve(
                model="llama-3.1-8b-instruct",
                nodes_per_replica=2,
                pipeline_parallel=2,
                distributed_backend="ray",
            )
        ],
        engine_api_key=KEY,
        sources=HF,
    )
    plan = plan_fleet(fleet).hosts["n0"]
    files = {f.path: f.content for f in render_host(plan)}
    for unit in ("vllm-llama-3-1-8b-instruct", "ray-llama-3-1-8b-instruct"):
        head = files[f"/etc/systemd/system/{unit}.service"].split("[Service]")[0]
        assert "Requires=servekit-firewall.service" in head
        assert "servekit-firewall.service" in head.split("After=")[1].splitlines()[0]
    firewall = files["/etc/systemd/system/servekit-firewall.service"]
    before = firewall.split("Before=")[1].splitlines()[0].split()
    assert {"vllm-llama-3-1-8b-instruct.service", "ray-llama-3-1-8b-instruct.service"} <= set(
        before
    )
    assert "ExecReload=/usr/sbin/nft -f /etc/servekit/firewall.nft" in firewall


def test_rollback_restores_the_saved_table_within_60_seconds() -> None:
    plan = behind_gateway()["n0"]
    files = {f.path: f.content for f in firewall_files(plan)}
    timer = files["/etc/systemd/system/servekit-firewall-rollback.timer"]
    assert "OnActiveSec=60s" in timer and "Unit=servekit-firewall-rollback.service" in timer
    assert "[Install]" not in timer  # armed by the deploy only, never at boot
    service = files["/etc/systemd/system/servekit-firewall-rollback.service"]
    assert "ExecStart=/usr/sbin/nft -f /var/lib/servekit/firewall/previous.nft" in service
    # the previous table is saved before anything is written, the timer armed before loading,
    # and loading is a reload (a restart would restart the engines that require the unit)
    assert "nft list table inet servekit" in save_previous()
    assert LOAD.index("servekit-firewall-rollback.timer") < LOAD.index("reload-or-restart")
    assert "systemctl restart servekit-firewall " not in LOAD + " "


# --- nft itself --------------------------------------------------------------------------------


def _nft_check(text: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    nft = shutil.which("nft") or "/usr/sbin/nft"
    assert Path(nft).exists(), "nft is needed (apt-get install nftables; .ci/run installs it)"
    path = tmp_path / "rules.nft"
    path.write_text(text)
    return subprocess.run([nft, "-c", "-f", str(path)], capture_output=True, text=True, timeout=30)


def test_nft_accepts_every_rendered_variant(tmp_path: Path) -> None:
    variants = [
        render_rules(behind_gateway()["n0"]),
        render_rules(
            plan_fleet(ollama_fleet(["2001:db8::1"]), resolve_name=resolver(DNS)).hosts["o1"]
        ),
        render_rules(
            plan_fleet(
                Fleet(
                    name="open",
                    machines=[gpu("n0", "10.9.0.10")],
                    serve=[Serve(model="llama-3.1-8b-instruct")],
                    engine_api_key=KEY,
                    sources=HF,
                )
            ).hosts["n0"]
        ),
    ]
    for text in variants:
        checked = _nft_check(text, tmp_path)
        assert checked.returncode == 0, checked.stderr + text


def test_nft_rejects_what_the_sets_must_never_hold(tmp_path: Path) -> None:
    """The check is not a rubber stamp: a prefix pasted into an address set fails it."""
    text = render_rules(behind_gateway()["n0"]).replace("10.9.0.99", "10.9.0.99, 0.0.0.0/0")
    assert _nft_check(text, tmp_path).returncode != 0


# --- servekit plan -----------------------------------------------------------------------------


def test_servekit_plan_lists_what_each_firewall_admits(tmp_path: Path) -> None:
    inventory = tmp_path / "fleet.py"
    inventory.write_text(
        """from servekit.spec import *
fleet = Fleet(
    name="fw",
    machines=[SshHost(name="n0", address="10.9.0.10", gpu=Gpu(model="A100-80GB")),
              SshHost(name="gw", address="10.9.0.99")],
    serve=[Serve(model="llama-3.1-8b-instruct")],
    gateway=Gateway(host="gw", api_keys=SecretRef(env="CLIENTS")),
    engine_api_key=SecretRef(env="K"),
    sources=Sources(weights=HuggingFace(token=SecretRef(env="HF"))),
)
"""
    )
    result = CliRunner().invoke(app, ["plan", str(inventory)], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert (
        "firewall n0: ports 8000 admit loopback, 10.9.0.99; SSH port 22 never matched"
        in result.output
    )


def test_the_saved_table_loads_back_as_the_rollback_loads_it(tmp_path: Path) -> None:
    """The rollback feeds `nft -f` what the deploy saved (`nft list table` after a replace
    header): in a network namespace of its own, load rules, save them that way, change the
    live table, load the saved file, and get the first rules back."""
    nft = shutil.which("nft") or "/usr/sbin/nft"
    rules = tmp_path / "rules.nft"
    rules.write_text(render_rules(behind_gateway()["n0"]))
    saved = tmp_path / "previous.nft"
    script = (
        f"{nft} -f {rules} && "
        + save_previous()
        .split(" && ", 1)[1]
        .split(" && if ")[0]
        .replace("/var/lib/servekit/firewall/previous.nft", str(saved))
        + f" && {nft} delete table inet servekit && {nft} -f {saved}"
        + f" && {nft} list table inet servekit"
    )
    # A user and network namespace of its own: root there, so no root needed here.
    done = subprocess.run(
        ["unshare", "--map-root-user", "--net", "sh", "-c", script], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert "elements = { 10.9.0.99 }" in done.stdout and "elements = { fd00::99 }" in done.stdout
    assert "tcp dport @protected reject with tcp reset" in done.stdout


def test_plan_lines_show_names_with_the_addresses_they_resolved_to() -> None:
    fleet = Fleet(
        name="fw",
        machines=[gpu("n0", "10.9.0.10"), SshHost(name="gw", address="gw.example.com")],
        serve=[Serve(model="llama-3.1-8b-instruct")],
        gateway=Gateway(host="gw", api_keys=SecretRef(env="CLIENTS")),
        engine_api_key=KEY,
        sources=HF,
    )
    lines = firewall_lines(plan_fleet(fleet, resolve_name=resolver(DNS)))
    assert lines == [
        "firewall n0: ports 8000 admit loopback, 10.9.0.99 (gw.example.com), "
        "fd00::99 (gw.example.com); SSH port 22 never matched"
    ]
