"""`servekit doctor`'s engine checks after a deploy: `/health`, the served model, and vLLM's own
startup numbers from the journal next to the plan's, saved per fleet in the record format of
tests/data/vllm_startup_logs.toml. Journal lines: tests/data/doctor_network/ (README there)."""

from __future__ import annotations

import http.server
import json
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from servekit.doctor import engines
from servekit.doctor.result import Check, HostFindings
from servekit.facts import doctor_engines as facts
from servekit.hostplan import HostPlan
from servekit.placement import plan_fleet
from servekit.spec import Fleet, Gpu, SecretRef, Serve, SshHost

DATA = Path(__file__).parents[1] / "data"
JOURNALS = DATA / "doctor_network"
SERVED = "Qwen/Qwen2.5-7B-Instruct"


def solo() -> HostPlan:
    """qwen2.5-7b-instruct on one A100-80GB: about 1.08M planned KV tokens, 33x @ 32,768,
    14.19 GiB of weights per GPU (the tests read the plan's own numbers)."""
    fleet = Fleet(
        name="solo",
        machines=[SshHost(name="g1", address="192.0.2.2", gpu=Gpu(model="A100-80GB"))],
        serve=[Serve(model="qwen2.5-7b-instruct")],
        engine_api_key=SecretRef(env="ENGINE_KEY"),
    )
    return plan_fleet(fleet).hosts["g1"]


def journal(name: str) -> list[str]:
    return (JOURNALS / name).read_text().splitlines()


def by_check(rows: list[Check]) -> dict[str, Check]:
    return {r.check: r for r in rows}


def test_startup_numbers_are_read_from_vllms_lines() -> None:
    startup = engines.parse_startup(journal("vllm-journal-healthy.txt"))
    assert startup == {
        "kv_cache_tokens": 1071344,
        "max_model_len": 32768,
        "max_concurrency": 32.69,
        "weights_gib": 14.2487,
        "kv_cache_gib": 57.22,
    }


def test_the_one_line_variant_and_the_newest_loading_wording_parse() -> None:
    lines = [
        "INFO [kv_cache_utils.py:1] GPU KV cache size: 4,455,808 tokens, Maximum concurrency "
        "for 131,072 tokens per request: 34.00x",
        "(Worker_TP0 pid=1) INFO Model loading took 16.4 GiB memory and 20.1 seconds",
        "(Worker_TP1 pid=2) INFO Model loading took 16.5 GiB memory and 20.3 seconds",
        "(Worker_TP0 pid=1) INFO Available KV cache memory: 51.20 GiB",
        "(Worker_TP1 pid=2) INFO Available KV cache memory: 51.07 GiB",
    ]
    startup = engines.parse_startup(lines)
    assert startup["kv_cache_tokens"] == 4455808
    assert (startup["max_model_len"], startup["max_concurrency"]) == (131072, 34.0)
    assert (startup["weights_gib"], startup["kv_cache_gib"]) == (16.5, 51.07)


def test_healthy_engine_numbers_sit_beside_the_plans() -> None:
    """The plan's numbers (whatever the planner says today) beside vLLM's, with the error."""
    instance = solo().vllm[0]
    plan = instance.plan
    rows = engines.startup_checks(
        "g1", instance, engines.parse_startup(journal("vllm-journal-healthy.txt"))
    )
    table = {r.check: (r.expected, r.found, r.verdict) for r in rows}
    unit = "vllm-qwen2-5-7b-instruct"
    kv_error = 1_071_344 / plan.kv_cache_tokens - 1
    concurrency_error = 32.69 / plan.max_concurrency - 1
    assert abs(kv_error) <= 0.05  # the recorded journal is within the plan's uncertainty
    assert table == {
        f"KV cache tokens {unit}": (
            f"plan {plan.kv_cache_tokens:,.2f} (±5%)",
            f"vLLM 1,071,344.00 ({kv_error:+.1%})",
            "ok",
        ),
        f"max concurrency {unit} @ 32,768": (
            f"plan {plan.max_concurrency:,.2f}x (±5%)",
            f"vLLM 32.69x ({concurrency_error:+.1%})",
            "ok",
        ),
        f"weights GiB/GPU {unit}": ("plan 14.19 GiB (±10%)", "vLLM 14.25 GiB (+0.4%)", "ok"),
    }


def test_fewer_kv_tokens_than_planned_is_named_with_the_gap() -> None:
    instance = solo().vllm[0]
    plan = instance.plan
    startup = engines.parse_startup(journal("vllm-journal-short-kv.txt"))
    rows = by_check(engines.startup_checks("g1", instance, startup))
    kv = rows["KV cache tokens vllm-qwen2-5-7b-instruct"]
    kv_error = 712_704 / plan.kv_cache_tokens - 1
    assert kv_error < -0.30  # far below the plan
    assert (kv.verdict, kv.found) == ("warn", f"vLLM 712,704.00 ({kv_error:+.1%})")
    assert "the plan was off" in kv.fix and "plan-vs-actual.json" in kv.fix
    concurrency = rows["max concurrency vllm-qwen2-5-7b-instruct @ 32,768"]
    concurrency_error = 21.75 / plan.max_concurrency - 1
    assert (concurrency.verdict, concurrency.found) == (
        "warn",
        f"vLLM 21.75x ({concurrency_error:+.1%})",
    )


def test_no_startup_lines_this_boot_warns() -> None:
    rows = engines.startup_checks("g1", solo().vllm[0], engines.parse_startup([]))
    assert {(r.verdict, r.found) for r in rows} == {("warn", "not in the journal")}


def answers(**changes: Any) -> dict[str, Any]:
    base = {"health": 200, "health_error": "", "key": "sent", "models_status": 200}
    return {**base, "models": [SERVED], "models_error": "", **changes}


def test_a_healthy_engine_serving_the_planned_model() -> None:
    rows = engines.answer_checks("g1", solo().vllm[0], answers())
    assert [(r.check, r.verdict, r.found) for r in rows] == [
        ("health vllm-qwen2-5-7b-instruct", "ok", "200"),
        ("serves vllm-qwen2-5-7b-instruct", "ok", SERVED),
    ]


def test_an_engine_serving_another_model_fails() -> None:
    rows = engines.answer_checks("g1", solo().vllm[0], answers(models=["other/model"]))
    served = by_check(rows)["serves vllm-qwen2-5-7b-instruct"]
    assert (served.verdict, served.expected, served.found) == ("fail", SERVED, "other/model")
    assert served.fix.startswith("the engine serves another model: run deploys/vllm.py")


def test_an_engine_down_and_a_refused_key_each_say_what_to_do() -> None:
    down = engines.answer_checks(
        "g1",
        solo().vllm[0],
        answers(health=None, health_error="Connection refused", models_status=None),
    )
    health = by_check(down)["health vllm-qwen2-5-7b-instruct"]
    assert (health.verdict, health.found) == ("fail", "no answer (Connection refused)")
    assert health.fix == "see `journalctl -u vllm-qwen2-5-7b-instruct -b` on g1"
    refused = engines.answer_checks("g1", solo().vllm[0], answers(models_status=401))
    key = by_check(refused)["serves vllm-qwen2-5-7b-instruct"]
    assert (key.verdict, key.found) == ("fail", "401 Unauthorized")
    unreadable = engines.answer_checks("g1", solo().vllm[0], answers(key="unreadable"))
    assert by_check(unreadable)["serves vllm-qwen2-5-7b-instruct"].verdict == "skip"


def test_records_carry_the_fields_of_the_startup_log_records(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SERVEKIT_STATE_DIR", str(tmp_path))
    plan = solo()
    startup = engines.parse_startup(journal("vllm-journal-short-kv.txt"))
    findings = HostFindings("g1")
    findings.facts["engines"] = {"records": [engines.record(plan, plan.vllm[0], startup)]}
    rows = engines.across({"g1": plan}, {"g1": findings})
    path = tmp_path / "solo.plan-vs-actual.json"
    assert [(r.check, r.verdict, r.found) for r in rows] == [
        ("plan vs actual", "ok", f"1 engines saved to {path}")
    ]
    saved = json.loads(path.read_text())
    assert (saved["format_version"], saved["fleet"]) == (1, "solo")
    (entry,) = saved["log"]
    logs = tomllib.loads((DATA / "vllm_startup_logs.toml").read_text())["log"]
    every_record_has = set.intersection(*(set(r) for r in logs))
    assert every_record_has <= set(entry), every_record_has - set(entry)
    assert (entry["kv_cache_tokens"], entry["weights_gib"]) == (712704, 14.25)
    assert entry["kv_cache_gib"] == 38.06
    assert entry["planned"]["kv_cache_tokens"] == plan.vllm[0].plan.kv_cache_tokens
    assert (entry["gpu"], entry["quantization"], entry["vllm_version"]) == (
        "A100-SXM4-80GB",
        "none",
        plan.versions.vllm,
    )


def test_saving_again_replaces_an_engines_record_and_keeps_others(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SERVEKIT_STATE_DIR", str(tmp_path))
    engines.save("solo", [{"id": "a", "kv_cache_tokens": 1}, {"id": "b", "kv_cache_tokens": 2}])
    path = engines.save("solo", [{"id": "a", "kv_cache_tokens": 3}])
    log = json.loads(path.read_text())["log"]
    assert sorted((r["id"], r["kv_cache_tokens"]) for r in log) == [("a", 3), ("b", 2)]
    assert oct(path.stat().st_mode & 0o777) == "0o644"


class RecordedHost:
    def __init__(self, outputs: dict[str, list[str]]) -> None:
        self.outputs = outputs
        self.asked: list[tuple[str, dict[str, Any]]] = []

    def get_fact(self, fact: type, **kwargs: Any) -> Any:
        self.asked.append((fact.__name__, kwargs))
        return fact().process(self.outputs[fact.__name__])


def test_gather_reads_answers_and_journal_as_root_and_keeps_a_record() -> None:
    answer = json.dumps(answers())
    host = RecordedHost(
        {
            "UnitActive": ["active"],
            "EngineAnswers": [answer],
            "StartupLines": journal("vllm-journal-healthy.txt"),
        }
    )
    plan = solo()
    findings = HostFindings("g1")
    engines.gather(host, plan, findings)  # type: ignore[arg-type]
    assert {r.verdict for r in findings.checks} == {"ok"}
    assert len(findings.checks) == 5
    (record,) = findings.facts["engines"]["records"]
    assert record["kv_cache_tokens"] == 1071344
    name, kwargs = host.asked[1]
    spec = json.loads(kwargs["spec"])
    assert (name, kwargs["_sudo"]) == ("EngineAnswers", plan.sudo)
    assert spec == {
        "health_url": "http://127.0.0.1:8000/health",
        "models_url": "http://127.0.0.1:8000/v1/models",
        "env_file": "/etc/vllm/qwen2-5-7b-instruct.env",
    }


def test_a_stopped_engine_is_a_skip_not_a_failure() -> None:
    host = RecordedHost({"UnitActive": ["inactive"]})
    findings = HostFindings("g1")
    engines.gather(host, solo(), findings)  # type: ignore[arg-type]
    assert [(r.verdict, r.found) for r in findings.checks] == [
        ("skip", "not running (before a deploy, or stopped)")
    ]
    assert findings.facts["engines"] == {"records": []}


KEY = "sk-engine-0123456789abcdef"


@pytest.fixture
def engine() -> Iterator[str]:
    """A local HTTP server that answers like vLLM with --api-key: /health open, /v1 keyed."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/health":
                self.send_response(200)
                self.end_headers()
                return
            if self.headers.get("Authorization") != f"Bearer {KEY}":
                self.send_response(401)
                self.end_headers()
                return
            body = json.dumps({"object": "list", "data": [{"id": SERVED}]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def run_probe(base: str, env_file: Path) -> tuple[dict[str, Any], str]:
    program = Path(engines.__file__).parents[1] / "host_scripts" / "doctor_engine.py"
    spec = {"health_url": f"{base}/health", "models_url": f"{base}/v1/models"}
    argv = [sys.executable, "-I", str(program), json.dumps({**spec, "env_file": str(env_file)})]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    return facts.EngineAnswers().process(done.stdout.splitlines()), done.stdout + done.stderr


def test_the_probe_sends_the_units_key_and_never_prints_it(engine: str, tmp_path: Path) -> None:
    env_file = tmp_path / "unit.env"
    env_file.write_text(f"# Secrets for vllm-x\nVLLM_API_KEY={KEY}\n")
    found, printed = run_probe(engine, env_file)
    assert (found["health"], found["key"], found["models"]) == (200, "sent", [SERVED])
    assert KEY not in printed
    rows = engines.answer_checks("g1", solo().vllm[0], found)
    assert {r.verdict for r in rows} == {"ok"}


def test_the_probe_without_a_key_is_refused_and_says_so(engine: str, tmp_path: Path) -> None:
    found, _printed = run_probe(engine, tmp_path / "missing.env")
    assert (found["key"], found["models_status"]) == ("none", 401)
    assert (
        by_check(engines.answer_checks("g1", solo().vllm[0], found))[
            "serves vllm-qwen2-5-7b-instruct"
        ].found
        == "401 Unauthorized"
    )


def test_journal_command_reads_the_current_invocation() -> None:
    command = facts.StartupLines().command("vllm-qwen2-5-7b-instruct.service")
    assert "systemctl show -p InvocationID --value vllm-qwen2-5-7b-instruct.service" in command
    assert "journalctl -b" in command
    assert "'GPU KV cache size|Maximum concurrency for|Model loading took|Available KV" in command


def test_the_fact_commands_run_in_a_real_shell_here(engine: str, tmp_path: Path) -> None:
    """As pyinfra runs them (`sh -c`): the probe with the host's python3 against the local
    engine, and the journal read on this machine (no systemd: no lines, no failure)."""
    env_file = tmp_path / "unit.env"
    env_file.write_text(f"VLLM_API_KEY={KEY}\n")
    spec = {
        "health_url": f"{engine}/health",
        "models_url": f"{engine}/v1/models",
        "env_file": str(env_file),
    }
    command = facts.EngineAnswers().command(json.dumps(spec)).get_raw_value()
    done = subprocess.run(["sh", "-c", command], capture_output=True, text=True, timeout=30)
    found = facts.EngineAnswers().process(done.stdout.splitlines())
    assert (found["health"], found["models"]) == (200, [SERVED])
    assert KEY not in done.stdout + done.stderr + command
    journal_command = facts.StartupLines().command("vllm-x.service")
    read = subprocess.run(["sh", "-c", journal_command], capture_output=True, text=True, timeout=30)
    assert read.returncode == 0
    assert facts.StartupLines().process(read.stdout.splitlines()) == []


def test_the_accuracy_harness_reads_the_doctors_records(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 16: plan-vs-actual files from real hosts feed the planner's accuracy table
    (benchmarks/planner_accuracy.py --data FOLDER) beside the public logs."""
    sys.path.insert(0, str(Path(__file__).parents[2] / "benchmarks"))
    import planner_accuracy

    monkeypatch.setenv("SERVEKIT_STATE_DIR", str(tmp_path))
    plan = solo()
    startup = engines.parse_startup(journal("vllm-journal-short-kv.txt"))
    engines.save("solo", [engines.record(plan, plan.vllm[0], startup)])
    (found,) = planner_accuracy.records(directory=tmp_path)
    assert found["file"] == "solo.plan-vs-actual.json" and planner_accuracy.plannable(found)
    error = planner_accuracy.error(found)
    assert error == pytest.approx(planner_accuracy.predicted_tokens(found) / 712704 - 1)
    shown = subprocess.run(
        [sys.executable, "benchmarks/planner_accuracy.py", "--data", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).parents[2],
        check=True,
    ).stdout
    assert f"{found['id']}" in shown and f"{error:+.1%}" in shown
