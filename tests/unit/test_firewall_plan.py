"""The firewall plan placement computes (`HostPlan.firewall`): typed ports by service and admitted
addresses, None where servekit writes no firewall, and the templates that take its table, set and
unit names as values."""

from __future__ import annotations

import pytest

from servekit import systemd
from servekit.firewall import FIREWALL_UNIT, SETS, TABLE, needs_firewall
from servekit.hostplan import FirewallPlan, HostPlan
from servekit.placement import plan_fleet
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
from servekit.templating import render_template

KEY = SecretRef(env="ENGINE_KEY")
HF = Sources(weights=HuggingFace(token=SecretRef(env="HF")))


def gpu(name: str, address: str) -> SshHost:
    return SshHost(name=name, address=address, gpu=Gpu(model="A100-80GB"))


def ray_fleet() -> dict[str, HostPlan]:
    fleet = Fleet(
        name="ray",
        machines=[
            gpu("n0", "10.9.0.10"),
            gpu("n1", "10.9.0.11"),
            SshHost(name="gw", address="10.9.0.99"),
        ],
        serve=[
            Serve(
                model="llama-3.1-8b-instruct",
                nodes_per_replica=2,
                pipeline_parallel=2,
                distributed_backend="ray",
            )
        ],
        gateway=Gateway(host="gw", api_keys=SecretRef(env="CLIENTS")),
        monitoring=Monitoring(host="gw"),
        engine_api_key=KEY,
        sources=HF,
    )
    return plan_fleet(fleet).hosts


def test_placement_computes_the_firewall_plan_by_service() -> None:
    hosts = ray_fleet()
    head = hosts["n0"].firewall
    assert head is not None
    assert head.engine_ports == [8000] and head.open_ports == []
    assert head.cluster_ports == [
        "6379",
        "6380",
        "6381",
        "6382",
        "6383",
        "6384",
        "10002-19999",
        "52365",
    ]
    assert head.admitted == ["10.9.0.11", "10.9.0.99"]  # the other node, the gateway
    assert head.clients == [] and head.ollama_ports == [] and head.names == {}
    worker = hosts["n1"].firewall
    assert worker is not None and worker.engine_ports == []  # a Ray worker serves no API
    assert worker.admitted == ["10.9.0.10", "10.9.0.99"]
    assert hosts["gw"].firewall is None and not needs_firewall(hosts["gw"])


def test_the_plan_survives_the_host_data_round_trip() -> None:
    plan = ray_fleet()["n0"]
    assert HostPlan.from_host_data({"servekit": plan.to_host_data()}) == plan


def test_an_exposed_ollama_port_and_its_clients_are_in_the_plan() -> None:
    fleet = Fleet(
        name="ol",
        machines=[
            SshHost(name="o1", address="10.8.0.11", gpu=Gpu(model="A100-80GB")),
            SshHost(name="gw", address="10.8.0.2"),
        ],
        serve=[Serve(model="llama3.1:8b", engine="ollama", hosts=["o1"])],
        gateway=Gateway(host="gw", api_keys=SecretRef(env="CLIENTS")),
        ollama=OllamaSettings(expose=True, clients=["192.168.5.7", "10.8.0.2"]),
    )
    firewall = plan_fleet(fleet).hosts["o1"].firewall
    assert firewall == FirewallPlan(
        ollama_ports=[11434], admitted=["10.8.0.2"], clients=["192.168.5.7"]
    )


@pytest.mark.parametrize("bad", ["10.0.0.9, 0.0.0.0/0", "10.0.0.0/8", "gw.example.com"])
def test_the_firewall_plan_holds_addresses_only(bad: str) -> None:
    with pytest.raises(ValueError):
        FirewallPlan(admitted=[bad])
    with pytest.raises(ValueError):
        FirewallPlan(clients=[bad])
    with pytest.raises(ValueError):
        FirewallPlan(names={"gw.example.com": [bad]})


@pytest.mark.parametrize("bad", ["8000 accept", "1-2-3", "", "x"])
def test_cluster_ports_are_ports_or_ranges(bad: str) -> None:
    with pytest.raises(ValueError):
        FirewallPlan(cluster_ports=[bad])


def test_templates_take_table_set_and_unit_names_as_values() -> None:
    sets = {key: f"sk_{key}" for key in SETS}
    text = render_template(
        "firewall.nft.j2",
        host="h",
        fleet="f",
        table="inet other",
        sets=sets,
        unit="other-firewall",
        ssh_port=22,
        engine_ports=[8000],
        cluster_ports=[],
        open_ports=[],
        ollama_ports=[11434],
        names={},
        admitted4="10.0.0.1",
        admitted6="",
        clients4="",
        clients6="",
        protected="8000, 11434",
        ollama="11434",
        exporter_ports=[9100],
        monitoring4="10.0.0.9",
        monitoring6="",
        exporters="9100",
    )
    assert "table inet other {" in text and "inet servekit" not in text
    assert "ip saddr @sk_monitoring4 tcp dport @sk_exporters accept" in text
    assert "ip saddr @sk_admitted4 tcp dport @sk_protected accept" in text
    assert "ip saddr @sk_clients4 tcp dport @sk_ollama accept" in text
    assert "set sk_ollama {" in text and "other-firewall.service" in text
    unit = render_template(
        "servekit-firewall.service.j2",
        unit="other-firewall",
        table="inet other",
        rules_file="/etc/x.nft",
        nft="/usr/sbin/nft",
        before=[],
        sandbox=systemd.firewall_sandbox(),
    )
    assert "ExecStop=/usr/sbin/nft delete table inet other" in unit
    assert unit.startswith("# other-firewall.service:")
    assert TABLE == "inet servekit" and FIREWALL_UNIT == "servekit-firewall"
