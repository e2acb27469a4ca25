"""Grafana beside Prometheus: declared only with a package source, bound to loopback, the admin
password in its own 0640 file (never in grafana.ini), the data source pointing at the Prometheus
beside it, and the dashboard provider loading the repository's dashboard."""

from __future__ import annotations

import configparser
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from monitoring_fleet import team_fleet

from servekit.errors import FleetError
from servekit.hostplan import HostPlan
from servekit.monitoring.grafana import (
    DATASOURCE_UID,
    GRAFANA,
    KEY_BEGIN,
    KEY_END,
    check_signing_key,
    dashboard_uid,
    grafana_files,
    read_signing_key,
)
from servekit.placement import plan_fleet
from servekit.render import review_files
from servekit.spec import Fleet, Grafana, SecretRef

ROOT = Path(__file__).resolve().parents[2]
KEY = f"{KEY_BEGIN}\n\nmQINBGTnhmkBEADUE4uzyLHCmWXjS6pI\n=abcd\n{KEY_END}\n"
PASSWORD = "zq-grafana-admin-Secret"


def fleet(grafana: Grafana | None = None, **monitoring: Any) -> Fleet:
    return team_fleet(grafana=grafana, **monitoring)


def grafana(**fields: Any) -> Grafana:
    fields.setdefault("signing_key", "~/.config/servekit/grafana.asc")
    fields.setdefault("admin_password", SecretRef(env="GRAFANA_ADMIN"))
    return Grafana(**fields)


def monitoring_plan(**fields: Any) -> HostPlan:
    return plan_fleet(fleet(grafana(**fields))).hosts["mon"]


def files(plan: HostPlan) -> dict[str, Any]:
    return {f.path: f for f in grafana_files(plan, PASSWORD, KEY)}


def test_no_grafana_unless_the_fleet_names_its_source() -> None:
    plan = plan_fleet(fleet()).hosts["mon"]
    assert plan.monitoring is not None and plan.monitoring.grafana is None
    assert grafana_files(plan, PASSWORD, KEY) == []
    with pytest.raises(FleetError, match="signing_key"):
        fleet(Grafana(admin_password=SecretRef(env="X")))  # type: ignore[call-arg]


@pytest.mark.parametrize(
    "bad",
    [
        {"suite": "stable main"},
        {"component": "main\nTrusted: yes"},
        {"apt_url": "https://user:pw@apt.example.com"},
        {"apt_url": "ftp://apt.example.com"},
        {"package": "grafana; rm -rf /"},
        {"port": 0},
    ],
)
def test_values_that_could_change_the_apt_source_are_refused(bad: dict[str, Any]) -> None:
    with pytest.raises(FleetError):
        fleet(grafana(**bad))


def test_grafana_cannot_take_prometheus_port() -> None:
    with pytest.raises(FleetError, match="9090"):
        plan_fleet(fleet(grafana(port=9090)))


def test_grafana_listens_on_loopback_and_reads_its_password_from_a_file() -> None:
    rendered = files(monitoring_plan(port=3300))
    ini = configparser.ConfigParser(interpolation=None)
    ini.read_string(rendered[GRAFANA.config].content)
    assert ini["server"]["http_addr"] == "127.0.0.1"
    assert ini["server"]["http_port"] == "3300"
    assert ini["security"]["admin_password"] == f"$__file{{{GRAFANA.password_file}}}"
    assert ini["users"]["allow_sign_up"] == "false"
    assert ini["analytics"]["reporting_enabled"] == "false"
    assert ini["paths"]["provisioning"] == GRAFANA.provisioning
    password = rendered[GRAFANA.password_file]
    assert password.content.strip() == PASSWORD
    assert (password.mode, password.user, password.group) == ("0640", "root", "grafana")
    for path, file in rendered.items():
        if path != GRAFANA.password_file:
            assert PASSWORD not in file.content, path
        if path.startswith("/etc/grafana/"):
            assert (file.mode, file.group) == ("0640", "grafana"), path


def test_the_datasource_is_the_prometheus_beside_grafana() -> None:
    plan = plan_fleet(fleet(grafana(), port=9191, scrape_interval="30s")).hosts["mon"]
    source = yaml.safe_load(files(plan)[GRAFANA.datasource_file].content)
    assert source["apiVersion"] == 1
    (prometheus,) = source["datasources"]
    assert prometheus["type"] == "prometheus" and prometheus["access"] == "proxy"
    assert prometheus["url"] == "http://127.0.0.1:9191"
    assert prometheus["uid"] == DATASOURCE_UID and prometheus["isDefault"] is True
    assert prometheus["jsonData"] == {"timeInterval": "30s"}


def test_the_provider_loads_the_repository_dashboard() -> None:
    rendered = files(monitoring_plan())
    provider = yaml.safe_load(rendered[GRAFANA.dashboard_provider_file].content)
    (entry,) = provider["providers"]
    assert entry["type"] == "file" and entry["allowUiUpdates"] is False
    folder = entry["options"]["path"]
    dashboards = {p: f for p, f in rendered.items() if p.startswith(folder + "/")}
    assert list(dashboards) == [f"{folder}/servekit-fleet.json"]
    repository = (ROOT / "dashboards" / "servekit-fleet.json").read_text()
    assert dashboards[f"{folder}/servekit-fleet.json"].content == repository
    board = json.loads(repository)
    assert dashboard_uid() == board["uid"] == "servekit-fleet"
    # the dashboard's data source variable picks a Prometheus source: the one provisioned
    (variable,) = [v for v in board["templating"]["list"] if v["type"] == "datasource"]
    assert variable["query"] == "prometheus"


def test_the_apt_source_trusts_the_declared_key_for_grafana_only() -> None:
    plan = monitoring_plan(apt_url="https://mirror.example/grafana", suite="beta")
    rendered = files(plan)
    source = rendered[GRAFANA.apt_source].content
    fields = dict(
        line.split(": ", 1) for line in source.splitlines() if line and not line.startswith("#")
    )
    assert fields == {
        "Types": "deb",
        "URIs": "https://mirror.example/grafana",
        "Suites": "beta",
        "Components": "main",
        "Signed-By": GRAFANA.keyring,
    }
    assert GRAFANA.keyring.endswith(".asc")  # apt reads an armored key from an .asc keyring
    assert rendered[GRAFANA.keyring].content == KEY
    assert rendered[GRAFANA.keyring].mode == "0644"


def test_the_signing_key_must_be_an_armored_public_key(tmp_path: Path) -> None:
    assert check_signing_key("\n" + KEY, "k") == KEY
    with pytest.raises(ValueError, match="not an ASCII-armored OpenPGP public key"):
        check_signing_key("-----BEGIN PGP PRIVATE KEY BLOCK-----\nx\n", "k")
    key = tmp_path / "grafana.asc"
    key.write_text(KEY)
    plan = monitoring_plan(signing_key=str(key))
    assert plan.monitoring is not None and plan.monitoring.grafana is not None
    assert read_signing_key(plan.monitoring.grafana) == KEY
    key.unlink()
    with pytest.raises(ValueError, match=f"cannot read {key}"):
        read_signing_key(plan.monitoring.grafana)


def test_render_shows_grafana_and_monitoring_with_placeholders_never_reading_secrets(
    tmp_path: Path,
) -> None:
    missing = tmp_path / "not-there"  # neither secret nor key exists: render reads none
    declared = fleet(
        grafana(signing_key=str(missing), admin_password=SecretRef(file=str(missing))),
        alert_webhook=SecretRef(file=str(missing / "hook")),
    )
    rendered, notes = review_files(plan_fleet(declared).hosts["mon"])
    assert notes == []
    by_path = {f.path: f for f in rendered}
    hook = yaml.safe_load(by_path["/etc/prometheus/alertmanager.yml"].content)
    (webhook,) = [r for r in hook["receivers"] if r["name"] == "webhook"]
    assert webhook["webhook_configs"][0]["url"] == f"<secret from file {missing / 'hook'}>"
    assert by_path[GRAFANA.password_file].content == f"<secret from file {missing}>\n"
    assert str(missing) in by_path[GRAFANA.keyring].content
    assert "/etc/prometheus/prometheus.yml" in by_path
    for file in rendered:
        assert "servekit-placeholder.invalid" not in file.content, file.path
        if "<secret from" in file.content:
            assert file.mode in ("0600", "0640") and file.group != "root", file.path
