"""The gateway's per-key metrics for real: the rendered HAProxy config logs to Debian's rsyslog
(run with the rendered snippet), which writes the access log that Debian's mtail reads with the
rendered program; the metrics are scraped through HAProxy at /metrics/keys. Requests with known
keys, statuses and timings go in; the counters and histograms that come out must count exactly
them, and hold no key and no prompt."""

from __future__ import annotations

import http.client
import json
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from standins import harness as h
from test_gateway_haproxy import ENGINE, KEY_LINES, KEYS, PROMPT, Gw, chat, plan_with, vllm, wait_up

from servekit.gateway import GatewayLayout, gateway_files, parse_keys
from servekit.gateway.keymetrics import (
    BUCKETS,
    METRIC_NAMES,
    access_log_files,
    alternation,
    logged,
    metrics_files,
    metrics_unit,
    mtail_argv,
    re2_literal,
)
from servekit.hostplan import Route

pytestmark = pytest.mark.timeout(120)

MODELS = ["model-a", "vendor/model-b.v1"]
RSYSLOGD = "/usr/sbin/rsyslogd"
LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')
Series = dict[tuple[str, frozenset[tuple[str, str]]], float]


@dataclass
class MetricsGw:
    gw: Gw
    mtail: h.Proc

    def scrape(self) -> Series:
        status, _headers, data = h.request(self.gw.port, "GET", "/metrics/keys")
        assert status == 200, data
        return parse(data.decode())

    def post(self, model: str, key: str | None, **extra: object) -> int:
        return self.gw.post("/v1/chat/completions", chat(model, **extra), key=key)[0]


def parse(text: str) -> Series:
    """Prometheus text format: (name, labels) -> value."""
    series: Series = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        head, value = line.rsplit(" ", 1)
        name, _, labels = head.partition("{")
        series[(name, frozenset(LABEL.findall(labels)))] = float(value)
    return series


def value(series: Series, name: str, **labels: str) -> float:
    return series.get((name, frozenset(labels.items())), 0.0)


@pytest.fixture(scope="module")
def mgw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MetricsGw]:
    root = tmp_path_factory.mktemp("keymetrics")
    haproxy = shutil.which("haproxy") or "/usr/sbin/haproxy"
    for binary in ("/usr/bin/mtail", RSYSLOGD):
        assert Path(binary).exists(), f"{binary}: apt-get install mtail rsyslog (.ci/run does)"
    a1, b1, port, metrics_port, log_port = (h.free_port() for _ in range(5))
    (root / "vllm-vendor").mkdir()  # the stand-ins log as vllm-SERVED-PORT
    upstreams = {"a1": vllm(MODELS[0], a1, root), "b1": vllm(MODELS[1], b1, root)}
    routes = [
        Route(model=MODELS[0], upstreams=[f"127.0.0.1:{a1}"], engine="vllm"),
        Route(model=MODELS[1], upstreams=[f"127.0.0.1:{b1}"], engine="vllm"),
    ]
    layout = GatewayLayout.under(str(root), metrics_port=metrics_port, access_log_port=log_port)
    plan = plan_with(routes, port)
    lines = [line.replace("model-b", MODELS[1]) for line in KEY_LINES]
    keys = parse_keys(lines, MODELS)
    for file in gateway_files(plan, keys, ENGINE, layout) + metrics_files(plan, layout):
        Path(file.path).parent.mkdir(parents=True, exist_ok=True)
        Path(file.path).write_text(file.content)
    Path(layout.access_log_dir).mkdir()
    procs: list[h.Proc] = list(upstreams.values())
    try:
        procs.append(rsyslog(layout, root))
        mtail = h.Proc(mtail_argv(layout), h.vllm_env(), root, "mtail")
        procs.append(mtail)
        mtail.wait_log(f"Listening on 127.0.0.1:{metrics_port}")
        for p in (a1, b1):
            h.wait_http(p, "/health", timeout=20)
        proxy = h.Proc([haproxy, "-f", layout.config, "-db"], h.vllm_env(), root, "haproxy")
        procs.append(proxy)
        gateway = Gw(port, Path(layout.runtime_socket), proxy, upstreams)
        wait_up(gateway, {"pool1/replica1", "pool2/replica1"})
        yield MetricsGw(gateway, mtail)
    finally:
        for proc in reversed(procs):
            proc.stop()


def rsyslog(layout: GatewayLayout, root: Path) -> h.Proc:
    """rsyslogd in the foreground with servekit's snippet, included as Debian's rsyslog.conf
    does after loading imuxsock (here without the system socket), until its UDP input listens."""
    main = root / "rsyslog-main.conf"
    main.write_text(
        f'module(load="imuxsock" SysSock.Use="off")\ninclude(file="{layout.rsyslog_conf}")\n'
    )
    argv = [RSYSLOGD, "-n", "-f", str(main), "-i", str(root / "rsyslog.pid")]
    proc = h.Proc(argv, h.vllm_env(), root, "rsyslog")
    deadline = time.monotonic() + 10
    while f":{layout.access_log_port:04X} " not in Path("/proc/net/udp").read_text():
        assert proc.popen.poll() is None and time.monotonic() < deadline, proc.stderr
        time.sleep(0.05)
    return proc


def send_the_workload(m: MetricsGw) -> dict[tuple[str, str, str, str], int]:
    """The requests of the test, by (key, model, pool, code) as the metrics should count them."""
    a, b = MODELS
    sent = {
        ("alice", a, "pool1", "200"): [m.post(a, "alice") for _ in range(3)],
        ("alice", b, "pool2", "200"): [m.post(b, "alice") for _ in range(2)],
        ("alice", "", "", "404"): [m.post("not-served model", "alice")],
        ("only-b", b, "pool2", "200"): [m.post(b, "only-b") for _ in range(2)],
        ("only-b", a, "", "403"): [m.post(a, "only-b")],
        ("limited", a, "pool1", "200"): [m.post(a, "limited") for _ in range(3)],
        ("limited", a, "", "429"): [m.post(a, "limited")],
        ("-", "", "", "401"): [m.post(a, None), m.post(a, None)],
    }
    headers = {"Authorization": "Bearer sk-wrong-0123456789abcdef"}
    status = h.request(m.gw.port, "POST", "/v1/chat/completions", chat(a), headers)[0]
    sent[("-", "", "", "401")].append(status)
    expected = {}
    for (key, model, pool, code), statuses in sent.items():
        assert statuses == [int(code)] * len(statuses), (key, model, statuses)
        expected[(key, model, pool, code)] = len(statuses)
    return expected


def requests(series: Series) -> dict[tuple[str, str, str, str], float]:
    """servekit_gateway_requests_total by (key, model, pool, code), but for the 400s: HAProxy
    logs a connection closed without a request (the fixture's port probes) as one."""
    return {
        (d["key"], d["model"], d["pool"], d["code"]): v
        for (name, labels), v in series.items()
        if name == METRIC_NAMES[0] and (d := dict(labels))["code"] != "400"
    }


def wait_counted(m: MetricsGw, total: int) -> Series:
    """Scrape until mtail has counted `total` requests (it reads the log as HAProxy sends it)."""
    deadline = time.monotonic() + 15
    while True:
        series = m.scrape()
        counted = sum(requests(series).values())
        if counted >= total or time.monotonic() > deadline:
            assert counted == total, (counted, total, m.mtail.stderr[-2000:])
            return series
        time.sleep(0.1)


def test_per_key_counters_and_histograms_count_what_was_sent(mgw: MetricsGw) -> None:
    """The first test on the module's gateway: every count starts at 0 (the 400s aside)."""
    assert requests(mgw.scrape()) == {}
    expected = send_the_workload(mgw)
    series = wait_counted(mgw, sum(expected.values()))
    assert requests(series) == expected
    probes = [dict(labels) for (name, labels) in series if name == METRIC_NAMES[0]]
    assert {p["key"] for p in probes if p["code"] == "400"} <= {"-"}
    classes = {dict(labels)["class"] for (name, labels) in series if name == METRIC_NAMES[0]}
    assert classes == {"2xx", "4xx"}
    assert value(series, "servekit_gateway_log_lines_unparsed_total") == 0
    for key, model, pool, _code in expected:
        labels = {"key": key, "model": model, "pool": pool}
        total = sum(n for (k, mo, p, _c), n in expected.items() if (k, mo, p) == (key, model, pool))
        duration = "servekit_gateway_request_duration_seconds"
        if key != "-":  # the probes' 400s are observed too
            assert value(series, f"{duration}_count", **labels) == total
            assert value(series, f"{duration}_bucket", le="+Inf", **labels) == total
        headers = value(series, "servekit_gateway_response_headers_seconds_count", **labels)
        assert headers == (total if pool else 0)  # only a replica's answer has headers time
    les = {
        dict(labels)["le"]
        for (name, labels) in series
        if name.startswith("servekit_") and name.endswith("_bucket")
    }
    assert les == {f"{b:g}" for b in BUCKETS} | {"+Inf"}


def test_a_streams_headers_time_is_its_start_and_its_duration_the_whole_stream(
    mgw: MetricsGw,
) -> None:
    """A stand-in stream: first token after ~10 ms, then 40 tokens/s. Its headers come before its
    tokens (under 50 ms: HAProxy's Tr is not TTFT); the whole request, 12 tokens, takes ~300 ms."""
    b = MODELS[1]
    before = mgw.scrape()
    headers = {"Authorization": f"Bearer {KEYS['single']}"}
    events = h.sse_events(mgw.gw.port, "/v1/chat/completions", chat(b, 12, stream=True), headers)
    assert events[-1][1] == "[DONE]"
    labels = {"key": "single", "model": b, "pool": "pool2"}
    deadline = time.monotonic() + 10
    counter = {"code": "200", "class": "2xx", **labels}
    while value(series := mgw.scrape(), METRIC_NAMES[0], **counter) == value(
        before, METRIC_NAMES[0], **counter
    ):
        assert time.monotonic() < deadline, mgw.mtail.stderr[-2000:]
        time.sleep(0.1)

    def grew(name: str, le: str) -> float:
        return value(series, name, le=le, **labels) - value(before, name, le=le, **labels)

    assert grew("servekit_gateway_response_headers_seconds_bucket", "0.05") == 1
    assert grew("servekit_gateway_request_duration_seconds_bucket", "0.25") == 0
    assert grew("servekit_gateway_request_duration_seconds_bucket", "1") == 1


def test_no_key_and_no_prompt_in_the_log_or_the_metrics(mgw: MetricsGw) -> None:
    assert mgw.post(MODELS[0], "alice", max_tokens=2) == 200
    _status, _headers, page = h.request(mgw.gw.port, "GET", "/metrics/keys")
    text = page.decode() + mgw.gw.haproxy.stderr + mgw.mtail.stderr
    assert 'key="alice"' in page.decode()
    assert not any(key in text for key in KEYS.values())
    assert ENGINE not in text and PROMPT not in text and "not-served" not in page.decode()


def test_scrapes_are_for_metrics_clients_only_and_not_logged(mgw: MetricsGw) -> None:
    assert h.request(mgw.gw.port, "GET", "/metrics")[0] == 200
    assert h.request(mgw.gw.port, "GET", "/metrics/keys")[0] == 200
    time.sleep(0.2)
    assert " GET /metrics" not in mgw.gw.haproxy.stderr
    conn = http.client.HTTPConnection("127.0.0.1", mgw.gw.port, source_address=("127.0.0.2", 0))
    try:  # from 127.0.0.2: not in the metrics_client acl, so a client without a key
        conn.request("GET", "/metrics/keys")
        response = conn.getresponse()
        assert response.status == 401
        assert json.loads(response.read())["error"]["code"] == "invalid_api_key"
    finally:
        conn.close()


# --- the rendered files, without running anything -------------------------------------------


def test_served_names_are_matched_literally_as_the_log_writes_them() -> None:
    assert re2_literal("vendor/m.v1+x") == r"vendor\/m\.v1\+x"
    pattern = re.compile(alternation([logged(m) for m in ("a.b", "a.b-long", "x/y")]))
    assert pattern.fullmatch(r"x\/y") and pattern.fullmatch("a.b-long")
    assert not pattern.fullmatch("aXb") and not pattern.fullmatch("x/y")
    with pytest.raises(ValueError):
        re2_literal("a\nb")


def test_the_unit_is_hardened_and_verifies(tmp_path: Path) -> None:
    layout = GatewayLayout()
    unit = tmp_path / f"{layout.metrics_service}.service"
    unit.write_text(metrics_unit(layout))
    security = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", str(unit)], capture_output=True, text=True
    )
    found = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", security.stdout)
    assert found and float(found.group(1)) <= 2.5, security.stdout + security.stderr
    verify = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True
    )
    assert not [
        line
        for line in (verify.stdout + verify.stderr).splitlines()
        if line.strip() and "is not executable: No such file or directory" not in line
    ]
    text = unit.read_text()
    assert "User=mtail" in text and "--address 127.0.0.1" in text and "IPAddressDeny=any" in text


def test_rsyslog_accepts_the_snippet(tmp_path: Path) -> None:
    layout = GatewayLayout.under(str(tmp_path))
    for file in access_log_files(plan_with([], 8080), layout):
        Path(file.path).write_text(file.content)
    main = tmp_path / "main.conf"
    main.write_text(
        f'module(load="imuxsock" SysSock.Use="off")\ninclude(file="{layout.rsyslog_conf}")\n'
    )
    result = subprocess.run([RSYSLOGD, "-N1", "-f", str(main)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "error" not in (result.stdout + result.stderr).lower()
