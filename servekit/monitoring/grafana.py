"""Grafana beside Prometheus on the monitoring host, when the fleet names a source for it
(`Monitoring(grafana=Grafana(...))`): the apt source and key for Grafana's repository (or its
mirror), grafana.ini (loopback only, the admin password read from a 0640 file), a Prometheus
data source pointing at the Prometheus beside it, and a dashboard provider that loads servekit's
dashboard (dashboards/servekit-fleet.json). Pure: the deploy writes what these functions return.

Formats, checked Dec 2026:

- Install from Grafana's repository (`https://apt.grafana.com stable main`, key
  `gpg-full.key` saved as an `.asc` keyring that `signed-by` names, packages `grafana` or
  `grafana-enterprise`): https://grafana.com/docs/grafana/latest/setup-grafana/installation/debian/
- The Debian package: unit `grafana-server.service`, user and group `grafana`, /etc/grafana
  root:grafana with 0640 files (packaging/deb/control/postinst and
  packaging/deb/systemd/grafana-server.service in https://github.com/grafana/grafana).
- grafana.ini: `[paths] provisioning`, `[server] http_addr` / `http_port`, `[security]
  admin_user` / `admin_password` ("set once on first-run"), `$__file{PATH}` expansion (the file's
  content, whitespace trimmed), `[analytics] reporting_enabled` / `check_for_updates`, `[users]
  allow_sign_up`: https://grafana.com/docs/grafana/latest/setup-grafana/configure-grafana/ and
  https://github.com/grafana/grafana/blob/main/conf/defaults.ini
- Provisioning files (`apiVersion: 1`; `datasources:` with name, type, access, uid, url,
  isDefault, editable, jsonData.timeInterval; `providers:` with name, orgId, folder, type: file,
  disableDeletion, allowUiUpdates, updateIntervalSeconds, options.path):
  https://grafana.com/docs/grafana/latest/administration/provisioning/
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from servekit.hostplan import GrafanaPlan, HostPlan
from servekit.monitoring.layout import MONITORING, MonitoringLayout
from servekit.monitoring.yamltext import Value, dump
from servekit.templating import RenderedFile

DASHBOARD_NAME = "servekit-fleet.json"
DATASOURCE_UID = "servekit-prometheus"
HEADER = "Written by servekit (the monitoring deploy) from the fleet's plan: changes are lost."
KEY_BEGIN = "-----BEGIN PGP PUBLIC KEY BLOCK-----"
KEY_END = "-----END PGP PUBLIC KEY BLOCK-----"
MAX_KEY_BYTES = 256 * 1024


@dataclass(frozen=True)
class GrafanaLayout:
    """Where Grafana's files live on the monitoring host (the Debian package's paths)."""

    config: str = "/etc/grafana/grafana.ini"
    password_file: str = "/etc/grafana/servekit-admin-password"
    provisioning: str = "/etc/grafana/provisioning"
    dashboards_directory: str = "/etc/grafana/dashboards/servekit"
    keyring: str = "/etc/apt/keyrings/servekit-grafana.asc"
    apt_source: str = "/etc/apt/sources.list.d/servekit-grafana.sources"
    service: str = "grafana-server"
    group: str = "grafana"
    admin_user: str = "admin"
    listen_address: str = "127.0.0.1"
    """Grafana answers loopback only: open it through an SSH tunnel, like Prometheus."""

    @property
    def datasource_file(self) -> str:
        return f"{self.provisioning}/datasources/servekit.yaml"

    @property
    def dashboard_provider_file(self) -> str:
        return f"{self.provisioning}/dashboards/servekit.yaml"

    @property
    def dashboard_file(self) -> str:
        return f"{self.dashboards_directory}/{DASHBOARD_NAME}"

    def directories(self) -> tuple[str, ...]:
        """The folders servekit's files go in (0755 root:grafana, as the package makes its own)."""
        return (
            f"{self.provisioning}/datasources",
            f"{self.provisioning}/dashboards",
            self.dashboards_directory,
        )


GRAFANA = GrafanaLayout()


def dashboards_dir() -> Path:
    """Dashboards ship inside the wheel as servekit/dashboards; a checkout keeps them at the top."""
    packaged = Path(str(resources.files("servekit"))) / "dashboards"
    return packaged if packaged.is_dir() else Path(__file__).resolve().parents[2] / "dashboards"


def dashboard_json() -> str:
    """servekit's fleet dashboard, as the repository holds it."""
    return (dashboards_dir() / DASHBOARD_NAME).read_text()


def _grafana(plan: HostPlan) -> GrafanaPlan:
    assert plan.monitoring is not None, f"host {plan.name} runs no monitoring"
    assert plan.monitoring.grafana is not None, f"host {plan.name} runs no Grafana"
    return plan.monitoring.grafana


def apt_source(grafana: GrafanaPlan, layout: GrafanaLayout = GRAFANA) -> str:
    """deb822 source for Grafana's repository, trusted with its own key only. Every value is
    one word (checked in the schema: a URL without spaces, apt words)."""
    for value in (grafana.apt_url, grafana.suite, grafana.component):
        if not value or not value.isprintable() or " " in value:
            raise ValueError(f"monitoring.grafana: {value!r} is not one apt word or URL")
    return (
        f"# {HEADER}\n"
        "Types: deb\n"
        f"URIs: {grafana.apt_url}\n"
        f"Suites: {grafana.suite}\n"
        f"Components: {grafana.component}\n"
        f"Signed-By: {layout.keyring}\n"
    )


def grafana_ini(grafana: GrafanaPlan, layout: GrafanaLayout = GRAFANA) -> str:
    """grafana.ini: loopback, the admin password from its own file (never in this one), no
    sign-up, no calls home. Only servekit's settings: Grafana's defaults fill the rest."""
    return (
        f"; {HEADER}\n"
        "[paths]\n"
        f"provisioning = {layout.provisioning}\n\n"
        "[server]\n"
        f"http_addr = {layout.listen_address}\n"
        f"http_port = {int(grafana.port)}\n\n"
        "[security]\n"
        f"admin_user = {layout.admin_user}\n"
        f"admin_password = $__file{{{layout.password_file}}}\n"
        "disable_gravatar = true\n\n"
        "[users]\n"
        "allow_sign_up = false\n\n"
        "[analytics]\n"
        "reporting_enabled = false\n"
        "check_for_updates = false\n"
    )


def datasource_yaml(plan: HostPlan, monitoring_layout: MonitoringLayout = MONITORING) -> str:
    """The Prometheus beside Grafana, on loopback, as the default (and read-only) data source."""
    assert plan.monitoring is not None, f"host {plan.name} runs no monitoring"
    url = f"http://{monitoring_layout.listen_address}:{plan.monitoring.port}"
    source: Value = {
        "name": "Prometheus (servekit)",
        "uid": DATASOURCE_UID,
        "type": "prometheus",
        "access": "proxy",
        "url": url,
        "isDefault": True,
        "editable": False,
        "jsonData": {"timeInterval": plan.monitoring.scrape_interval},
    }
    return dump({"apiVersion": 1, "datasources": [source]}, f"# {HEADER}\n")


def dashboard_provider_yaml(layout: GrafanaLayout = GRAFANA) -> str:
    """Dashboards from servekit's folder, read-only in Grafana's UI (the repository's file is
    the one to change)."""
    provider: Value = {
        "name": "servekit",
        "orgId": 1,
        "folder": "servekit",
        "type": "file",
        "disableDeletion": True,
        "allowUiUpdates": False,
        "updateIntervalSeconds": 60,
        "options": {"path": layout.dashboards_directory},
    }
    return dump({"apiVersion": 1, "providers": [provider]}, f"# {HEADER}\n")


def grafana_apt_files(
    plan: HostPlan, signing_key: str, layout: GrafanaLayout = GRAFANA
) -> list[RenderedFile]:
    """The repository's key and apt source (both 0644 root:root, as apt reads them)."""
    grafana = _grafana(plan)
    return [
        RenderedFile(layout.keyring, signing_key, "0644"),
        RenderedFile(layout.apt_source, apt_source(grafana, layout), "0644"),
    ]


def grafana_config_files(
    plan: HostPlan, admin_password: str, layout: GrafanaLayout = GRAFANA
) -> list[RenderedFile]:
    """Grafana's configuration, its admin password, provisioning and dashboard: 0640
    root:grafana (Grafana reads them, cannot change them; nobody else reads them)."""
    grafana = _grafana(plan)

    def config(path: str, content: str) -> RenderedFile:
        return RenderedFile(path, content, "0640", "root", layout.group)

    return [
        config(layout.config, grafana_ini(grafana, layout)),
        config(layout.password_file, admin_password + "\n"),
        config(layout.datasource_file, datasource_yaml(plan)),
        config(layout.dashboard_provider_file, dashboard_provider_yaml(layout)),
        config(layout.dashboard_file, dashboard_json()),
    ]


def grafana_files(
    plan: HostPlan, admin_password: str, signing_key: str, layout: GrafanaLayout = GRAFANA
) -> list[RenderedFile]:
    """Every Grafana file of the monitoring host (none without Grafana)."""
    if plan.monitoring is None or plan.monitoring.grafana is None:
        return []
    return grafana_apt_files(plan, signing_key, layout) + grafana_config_files(
        plan, admin_password, layout
    )


def check_signing_key(text: str, shown: str) -> str:
    """An ASCII-armored OpenPGP public key (what apt reads from an `.asc` keyring); ValueError
    naming the file and the fix otherwise."""
    stripped = text.strip()
    if not (stripped.startswith(KEY_BEGIN) and stripped.endswith(KEY_END)):
        raise ValueError(
            f"monitoring.grafana.signing_key: {shown} is not an ASCII-armored OpenPGP public key "
            f"({KEY_BEGIN} ... {KEY_END}); download Grafana's gpg-full.key (or your mirror's "
            "key) there, check its fingerprint, and deploy again"
        )
    return stripped + "\n"


def read_signing_key(grafana: GrafanaPlan) -> str:
    """The repository's key from the control machine, checked (never more than 256 KiB)."""
    path = Path(grafana.signing_key).expanduser()
    try:
        with path.open("rb") as file:
            data = file.read(MAX_KEY_BYTES + 1)
    except OSError as error:
        raise ValueError(
            f"monitoring.grafana.signing_key: cannot read {path} ({error.strerror}); download "
            "Grafana's gpg-full.key (or your mirror's key) there"
        ) from None
    if len(data) > MAX_KEY_BYTES:
        raise ValueError(f"monitoring.grafana.signing_key: {path} is larger than 256 KiB")
    return check_signing_key(data.decode("ascii", errors="replace"), str(path))


def dashboard_uid() -> str:
    """The uid Grafana files the dashboard under (its URL: /d/<uid>)."""
    uid: str = json.loads(dashboard_json())["uid"]
    return uid
