"""The nftables rules of a host's firewall, from the firewall plan placement made
(`HostPlan.firewall`: which ports it protects, who may reach them): servekit's one nftables quoting
layer, and the units that load the rules and roll them back.

Only typed values reach the rules: addresses are `ipaddress` objects sorted into one named set
per family (`admitted4`/`admitted6` for the fleet's own hosts, `clients4`/`clients6` for an
exposed Ollama's declared clients), ports are integers or integer ranges in an `inet_service`
set. Host names were resolved when the fleet was planned (`servekit.placement`), so nothing is
looked up at boot. The host's SSH port is never in a protected set: it is taken out when the
sets are built, and rendering refuses a rule set that would still match it.

Loading is "commit confirmed" (`servekit.operations.firewall`): the previous table is saved, a
timer that restores it in 60 s is armed, the new rules are loaded, and only a fresh SSH
connection from the control machine disarms the timer.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from servekit import systemd
from servekit.hostplan import FirewallPlan, HostPlan, ray_unit, uses_ray
from servekit.ollama import UNIT as OLLAMA_UNIT
from servekit.templating import RenderedFile, render_template

if TYPE_CHECKING:
    from servekit.placement import FleetPlan

FIREWALL_RULES = "/etc/servekit/firewall.nft"
FIREWALL_UNIT = "servekit-firewall"
NFT = "/usr/sbin/nft"
ROLLBACK_UNIT = "servekit-firewall-rollback"
ROLLBACK_DIR = "/var/lib/servekit/firewall"
PREVIOUS_TABLE = f"{ROLLBACK_DIR}/previous.nft"
PREVIOUS_RULES = f"{ROLLBACK_DIR}/previous-firewall.nft"
ROLLBACK_AFTER_S = 60
TABLE = "inet servekit"
SETS = {
    "admitted4": "admitted4",
    "admitted6": "admitted6",
    "clients4": "clients4",
    "clients6": "clients6",
    "protected": "protected",
    "ollama": "ollama",
    "monitoring4": "monitoring4",
    "monitoring6": "monitoring6",
    "exporters": "exporters",
}
"""The named sets of the table: the fleet's own hosts per family, an exposed Ollama's clients per
family, the protected ports, the Ollama port, the monitoring host per family and the exporter
ports only it may reach."""

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
# Named sets: `type ipv4_addr` / `ipv6_addr` / `inet_service`, `flags interval` for port ranges,
# matched with `ip saddr @name` / `ip6 saddr @name` (nftables wiki, "Sets":
# https://wiki.nftables.org/wiki-nftables/index.php/Sets; checked here with `nft -c -f`, 1.0.6).


class FirewallError(RuntimeError):
    """Rules that would break a promise of the firewall (servekit's bug, never the user's)."""


@dataclass(frozen=True, order=True)
class PortRange:
    """A port or an inclusive range of ports, as nftables writes it (`8000`, `10002-19999`)."""

    first: int
    last: int

    def __post_init__(self) -> None:
        if not (
            isinstance(self.first, int)
            and isinstance(self.last, int)
            and 1 <= self.first <= self.last <= 65535
        ):
            raise FirewallError(f"not a port range: {self.first!r}-{self.last!r}")

    def __contains__(self, port: object) -> bool:
        return isinstance(port, int) and self.first <= port <= self.last

    def __str__(self) -> str:
        return str(self.first) if self.first == self.last else f"{self.first}-{self.last}"


def merged(ranges: Iterable[PortRange]) -> list[PortRange]:
    """Disjoint ranges covering the same ports (nftables refuses overlapping interval elements)."""
    result: list[PortRange] = []
    for item in sorted(ranges):
        if result and item.first <= result[-1].last + 1:
            last = result.pop()
            item = PortRange(last.first, max(last.last, item.last))
        result.append(item)
    return result


def without(ranges: Iterable[PortRange], port: int) -> list[PortRange]:
    """The ranges with `port` taken out (a range around it is split in two)."""
    result: list[PortRange] = []
    for item in merged(ranges):
        if port not in item:
            result.append(item)
            continue
        if item.first < port:
            result.append(PortRange(item.first, port - 1))
        if port < item.last:
            result.append(PortRange(port + 1, item.last))
    return result


def _addresses(values: Iterable[str]) -> list[IpAddress]:
    return sorted(
        {ipaddress.ip_address(v) for v in values},
        key=lambda a: (a.version, int(a)),
    )


@dataclass(frozen=True)
class FirewallRules:
    """Ports this host protects, and the addresses (besides loopback) admitted to them."""

    ssh_port: int
    engine_ports: list[int]
    cluster_ports: list[str]
    open_ports: list[int]
    ollama_ports: list[int]
    admitted: list[str]
    clients: list[str]
    exporter_ports: list[int] = field(default_factory=list)
    monitoring: list[str] = field(default_factory=list)

    @property
    def protected(self) -> list[PortRange]:
        """Every protected port, the SSH port taken out."""
        ranges = [PortRange(p, p) for p in self.engine_ports + self.ollama_ports]
        for text in self.cluster_ports:
            first, _, last = text.partition("-")
            ranges.append(PortRange(int(first), int(last or first)))
        return without(ranges, self.ssh_port)

    @property
    def ollama(self) -> list[PortRange]:
        return without([PortRange(p, p) for p in self.ollama_ports], self.ssh_port)

    @property
    def exporters(self) -> list[PortRange]:
        """Exporter ports (the monitoring host only), the SSH port taken out."""
        return without([PortRange(p, p) for p in self.exporter_ports], self.ssh_port)

    def family(self, addresses: list[str], version: int) -> list[IpAddress]:
        return [a for a in _addresses(addresses) if a.version == version]


def needs_firewall(plan: HostPlan) -> bool:
    """Whether servekit writes a firewall on this host (placement decided: vLLM processes, or an
    Ollama that listens beyond loopback; Linux only)."""
    return plan.firewall is not None


def ollama_port(plan: HostPlan) -> int | None:
    """The port of an Ollama that listens beyond loopback (behind the firewall), else None."""
    if plan.firewall is None or not plan.firewall.ollama_ports:
        return None
    return plan.firewall.ollama_ports[0]


def firewall_rules(plan: HostPlan) -> FirewallRules:
    """What `servekit-firewall` enforces on the host: its firewall plan (none: nothing
    protected), the host's SSH port taken out of every protected set."""
    firewall = plan.firewall or FirewallPlan()
    return FirewallRules(
        ssh_port=plan.ssh_port,
        engine_ports=list(firewall.engine_ports),
        cluster_ports=list(firewall.cluster_ports),
        open_ports=list(firewall.open_ports),
        ollama_ports=list(firewall.ollama_ports),
        admitted=[str(a) for a in _addresses(firewall.admitted)],
        clients=[str(a) for a in _addresses(firewall.clients)] if firewall.ollama_ports else [],
        exporter_ports=list(firewall.exporter_ports),
        monitoring=[str(a) for a in _addresses(firewall.monitoring)],
    )


def nft_elements(values: Iterable[IpAddress | PortRange]) -> str:
    """The elements of an nftables set, from typed values only (never text from an inventory)."""
    items = []
    for value in values:
        if not isinstance(value, ipaddress.IPv4Address | ipaddress.IPv6Address | PortRange):
            raise FirewallError(f"not an address or port: {value!r}")
        items.append(str(value))
    return ", ".join(items)


def check_rules(rules: FirewallRules) -> None:
    """Refuse rules that would match the host's SSH port (they could lock the operator out)."""
    for item in rules.protected + rules.ollama + rules.exporters:
        if rules.ssh_port in item:
            raise FirewallError(f"the rules would match the SSH port {rules.ssh_port} ({item})")


def engine_units(plan: HostPlan) -> list[str]:
    """The units that must start after the firewall (and never without it)."""
    units = [f"{i.unit}.service" for i in plan.vllm if i.role != "ray-worker"]
    units += [f"{ray_unit(i)}.service" for i in plan.vllm if uses_ray(i)]
    if ollama_port(plan):
        units.append(f"{OLLAMA_UNIT}.service")
    return sorted(set(units))


def render_rules(plan: HostPlan) -> str:
    """The nftables file of the host (`nft -f` replaces only the table `inet servekit`)."""
    rules = firewall_rules(plan)
    check_rules(rules)
    text = render_template(
        "firewall.nft.j2",
        host=plan.name,
        fleet=plan.fleet,
        table=TABLE,
        sets=SETS,
        unit=FIREWALL_UNIT,
        ssh_port=rules.ssh_port,
        engine_ports=rules.engine_ports,
        cluster_ports=rules.cluster_ports,
        open_ports=rules.open_ports,
        ollama_ports=rules.ollama_ports,
        names=plan.firewall.names if plan.firewall else {},
        admitted4=nft_elements(rules.family(rules.admitted, 4)),
        admitted6=nft_elements(rules.family(rules.admitted, 6)),
        clients4=nft_elements(rules.family(rules.clients, 4)),
        clients6=nft_elements(rules.family(rules.clients, 6)),
        protected=nft_elements(rules.protected),
        ollama=nft_elements(rules.ollama),
        exporter_ports=rules.exporter_ports,
        monitoring4=nft_elements(rules.family(rules.monitoring, 4)),
        monitoring6=nft_elements(rules.family(rules.monitoring, 6)),
        exporters=nft_elements(rules.exporters),
    )
    return text


def firewall_files(plan: HostPlan) -> list[RenderedFile]:
    """The nftables rules file, the unit that loads it at boot (before the engines), and the
    rollback unit and timer of a "commit confirmed" load."""
    unit = render_template(
        "servekit-firewall.service.j2",
        unit=FIREWALL_UNIT,
        table=TABLE,
        rules_file=FIREWALL_RULES,
        nft=NFT,
        before=engine_units(plan),
        sandbox=systemd.firewall_sandbox(),
    )
    rollback = render_template(
        "servekit-firewall-rollback.service.j2",
        unit=ROLLBACK_UNIT,
        nft=NFT,
        table=TABLE,
        previous_table=PREVIOUS_TABLE,
        previous_rules=PREVIOUS_RULES,
        rules_file=FIREWALL_RULES,
        # It puts the rules file back: the one folder it may write.
        sandbox=systemd.firewall_sandbox(writable=(str(Path(FIREWALL_RULES).parent),)),
    )
    timer = render_template(
        "servekit-firewall-rollback.timer.j2", after_s=ROLLBACK_AFTER_S, unit=ROLLBACK_UNIT
    )
    return [
        RenderedFile(FIREWALL_RULES, render_rules(plan), "0644"),
        RenderedFile(f"/etc/systemd/system/{FIREWALL_UNIT}.service", unit, "0644"),
        RenderedFile(f"/etc/systemd/system/{ROLLBACK_UNIT}.service", rollback, "0644"),
        RenderedFile(f"/etc/systemd/system/{ROLLBACK_UNIT}.timer", timer, "0644"),
    ]


def firewall_lines(fleet_plan: FleetPlan) -> list[str]:
    """What `servekit plan` says about each host's firewall: the protected ports and the
    addresses admitted to them, host names shown with the addresses they resolved to."""
    lines = []
    for plan in fleet_plan.hosts.values():
        if plan.firewall is None:
            continue
        rules = firewall_rules(plan)
        ports = ", ".join(str(p) for p in rules.protected) or "none"
        names = {a: n for n, found in plan.firewall.names.items() for a in found}

        def shown(addresses: list[str], names: dict[str, str] = names) -> str:
            return ", ".join(f"{a} ({names[a]})" if a in names else a for a in addresses)

        line = (
            f"firewall {plan.name}: ports {ports} admit loopback"
            + (f", {shown(rules.admitted)}" if rules.admitted else "")
            + f"; SSH port {plan.ssh_port} never matched"
        )
        if rules.clients:
            line += f"; Ollama {rules.ollama_ports[0]} also admits {shown(rules.clients)}"
        if rules.exporters:
            exporters = ", ".join(str(p) for p in rules.exporters)
            line += f"; exporters {exporters} admit only {shown(rules.monitoring) or 'loopback'}"
        lines.append(line)
    return lines
