"""Property tests (issue 11): whatever the schema accepts renders safely.

For every free string that reaches a systemd unit, a shell command, nftables or apt, hypothesis
generates values, hostile ones included (control characters, quotes, `$`, backticks, `;`, `%`,
newlines, Unicode line separators). A value the schema refuses is fine (with a FleetError, never
another exception); a value it accepts must render to:

- systemd units that `systemd-analyze verify` parses without a complaint, with exactly the
  directives (and `Environment=` variables) of the same unit rendered for a benign value, and the
  value itself back, unchanged, where it was meant to go;
- an nftables file whose address sets hold only the declared addresses, as literals, and that
  `nft -c -f` accepts (when this runs as root);
- an apt sources file with exactly the benign file's fields, the URL as its URIs;
- commands whose words (shlex) hold the value as one word, and a release-install script that,
  run by `sh` with a recording `curl` that fails, passed curl exactly the URL meant and printed
  it back literally (no `$(...)`, backtick or quote was interpreted).
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import shlex
import shutil
import subprocess
import tempfile
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from servekit import nvidia, ollama, pyenv
from servekit.errors import FleetError
from servekit.hostplan import HostPlan
from servekit.placement import plan_fleet
from servekit.render import HostFacts, RenderedFile, render_host
from servekit.spec import (
    Fleet,
    Gateway,
    Gpu,
    HuggingFace,
    LocalPath,
    Monitoring,
    OllamaSettings,
    SecretRef,
    Serve,
    Sources,
    SshHost,
    Versions,
)

PROPERTY = settings(
    max_examples=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    derandomize=True,
    database=None,  # no .hypothesis folder in the checkout: derandomized runs need none
)
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
NFT = shutil.which("nft")
KEY = SecretRef(env="SERVEKIT_PROPERTY_KEY")

# Hostile alphabet: what breaks a unit, a shell, nftables or apt, plus look-alikes.
HOSTILE = st.sampled_from(
    [
        "\n", "\r", "\t", " ", "\x00", "\x1b", "\x85", "\u2028", "\u2029", "\u200b", "\u202e",
        '"', "'", "`", "$", "$(id)", "${HOME}", ";", "&", "|", "<", ">", "%", "%h", "\\", "{",
        "}", ",", "=", "#", "..", "/", ":", "@", "*", "а", "ｈ", "-o",
    ]
)  # fmt: skip
TEXT = st.text(min_size=1, max_size=24)
ATTACKS = (
    "x\nExecStartPre=+/bin/sh -c id",
    "x$(touch /tmp/pwned)",
    "x`id`",
    'x" "OLLAMA_HOST=0.0.0.0',
    "x; id",
    "../../etc",
    "x\u2028y",
    "[/]x",
)
URL_ATTACKS = (
    "https://user:pass@mirror.example/simple",
    "ftp://mirror.example/x",
    "file:///etc",
    "https://",
    "https://mirror.example/x\nTrusted: yes",
    "https://mirror.example/$(id)",
    "https://mirror.example/x'\"",
)
HOSTILE_TEXT = st.lists(st.one_of(HOSTILE, TEXT), min_size=1, max_size=6).map("".join)


def values(benign: list[str], attacks: tuple[str, ...] = ()) -> st.SearchStrategy[str]:
    """Plausible values, plausible values with something hostile inside, random text, and the
    attacks issue 11 found (for the field at hand)."""
    plausible = st.sampled_from(benign)
    spliced = st.tuples(plausible, HOSTILE_TEXT, st.booleans()).map(
        lambda t: t[0] + t[1] if t[2] else t[1] + t[0]
    )
    known = st.sampled_from([*ATTACKS, *attacks])
    return st.one_of(plausible, spliced, HOSTILE_TEXT, st.text(max_size=40), known)


def accepted(build: Callable[[], Fleet]) -> Fleet | None:
    """The fleet, or None when the schema refuses it (a FleetError, nothing else)."""
    try:
        return build()
    except FleetError:
        return None


def host_plan(fleet: Fleet, name: str) -> HostPlan | None:
    try:
        return plan_fleet(fleet).hosts[name]
    except FleetError:
        return None


# ------------------------------------------------------------------ systemd


def unit_directives(text: str) -> list[tuple[str, str, str]]:
    """(section, key, value) for each directive, with systemd's line continuation."""
    joined = re.sub(r"\\\n", " ", text)
    section, directives = "", []
    for raw in joined.split("\n"):
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, sep, value = line.partition("=")
        directives.append((section, key.strip() if sep else f"<no '='> {line}", value.strip()))
    return directives


def assignments(directives: list[tuple[str, str, str]]) -> list[tuple[str, str]]:
    """The (variable, value) pairs `Environment=` lines assign (quotes removed, `%%` undone)."""
    pairs: list[tuple[str, str]] = []
    for _section, key, value in directives:
        if key == "Environment":
            try:
                words = shlex.split(value)
            except ValueError:
                words = [f"<unbalanced quotes>={value}"]
            for word in words:
                name, _, assigned = word.partition("=")
                pairs.append((name, assigned.replace("%%", "%")))
    return pairs


def environment(directives: list[tuple[str, str, str]]) -> dict[str, str]:
    return dict(assignments(directives))


def shape(text: str) -> Counter[tuple[str, str]]:
    """What a unit sets: its (section, directive) pairs and the variables it assigns."""
    directives = unit_directives(text)
    return Counter(
        [(s, k) for s, k, _ in directives] + [("env", n) for n, _ in assignments(directives)]
    )


def is_unit(file: RenderedFile) -> bool:
    return file.path.startswith("/etc/systemd/system/") and (
        file.path.endswith(".service") or file.path.endswith(".conf")
    )


def systemd_verify(files: list[RenderedFile]) -> None:
    """`systemd-analyze verify` every unit (with its drop-ins) and allow no complaint but the
    engine binaries being absent here."""
    if SYSTEMD_ANALYZE is None:
        pytest.fail("systemd-analyze is needed for the property tests")
    units = [f for f in files if is_unit(f)]
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        for file in units:
            target = root / file.path.removeprefix("/etc/systemd/system/")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(file.content, encoding="utf-8")
        services = [root / Path(f.path).name for f in units if f.path.endswith(".service")]
        services = [s for s in services if s.exists()]
        if not services:
            return
        done = subprocess.run(
            [SYSTEMD_ANALYZE, "verify", "--man=no", *map(str, services)],
            env={**os.environ, "SYSTEMD_UNIT_PATH": f"{root}:", "SYSTEMD_LOG_COLOR": "0"},
            capture_output=True,
            text=True,
            timeout=60,
        )
    complaints = [
        line
        for line in (done.stdout + done.stderr).splitlines()
        if line.strip() and not re.search(r"Command /\S+ is not executable: No such file", line)
    ]
    assert not complaints, "systemd-analyze verify:\n" + "\n".join(complaints)


def assert_units_like(files: list[RenderedFile], benign: list[RenderedFile]) -> None:
    """Same unit files as for a benign value, each with exactly the same directives."""
    mine = {f.path: f for f in files if is_unit(f)}
    base = {f.path: f for f in benign if is_unit(f)}
    assert set(mine) == set(base)
    for path, file in mine.items():
        assert shape(file.content) == shape(base[path].content), (
            f"{path} gained or lost directives:\n{file.content}"
        )
    systemd_verify(files)


# ------------------------------------------------------------------ Ollama settings


def ollama_fleet(**kwargs: Any) -> Fleet:
    serve = kwargs.pop("serve", Serve(model="llama3.1:8b", engine="ollama"))
    return Fleet(
        name="props",
        machines=[SshHost(name="box1", address="10.0.0.5", gpu=Gpu(model="L4"))],
        serve=[serve],
        **kwargs,
    )


def ollama_files(fleet: Fleet) -> list[RenderedFile]:
    plan = plan_fleet(fleet).hosts["box1"]
    return [f for f in render_host(plan) if is_unit(f) and "ollama" in f.path]


BENIGN_OLLAMA = ollama_files(ollama_fleet())


def dropin_env(files: list[RenderedFile]) -> dict[str, str]:
    text = next(f.content for f in files if f.path == ollama.DROPIN_FILE)
    return environment(unit_directives(text))


@PROPERTY
@given(values(["5m", "30m", "1h", "-1", "0", "24h"]))
def test_keep_alive(value: str) -> None:
    fleet = accepted(lambda: ollama_fleet(ollama=OllamaSettings(keep_alive=value)))
    assume(fleet is not None)
    assert fleet is not None
    files = ollama_files(fleet)
    assert_units_like(files, BENIGN_OLLAMA)
    assert dropin_env(files)["OLLAMA_KEEP_ALIVE"] == value


@PROPERTY
@given(
    st.lists(values(["http://localhost", "https://app.example.com", "*"]), min_size=1, max_size=3)
)
def test_origins(origins: list[str]) -> None:
    fleet = accepted(lambda: ollama_fleet(ollama=OllamaSettings(origins=origins)))
    assume(fleet is not None)
    assert fleet is not None
    files = ollama_files(fleet)
    benign = ollama_files(ollama_fleet(ollama=OllamaSettings(origins=["http://localhost"])))
    assert_units_like(files, benign)
    assert dropin_env(files)["OLLAMA_ORIGINS"].split(",") == origins


@PROPERTY
@given(values(["/srv/ollama", "/data/models", "/mnt/nvme0/ollama", "/opt/ollama-models"]))
def test_models_dir(value: str) -> None:
    fleet = accepted(lambda: ollama_fleet(ollama=OllamaSettings(models_dir=value)))
    assume(fleet is not None)
    assert fleet is not None
    files = ollama_files(fleet)
    assert_units_like(files, ollama_files(ollama_fleet(ollama=OllamaSettings(models_dir="/srv/x"))))
    assert dropin_env(files)["OLLAMA_MODELS"] == value
    unit = next(f.content for f in files if f.path == ollama.UNIT_FILE)
    writable = next(v for _s, k, v in unit_directives(unit) if k == "ReadWritePaths")
    assert value in [w.replace("%%", "%") for w in shlex.split(writable)]


@PROPERTY
@given(values(["llama3.1:8b", "qwen2.5:7b-instruct-q8_0", "hf.co/org/repo-GGUF:Q4_K_M"]))
def test_ollama_model_commands(value: str) -> None:
    fleet = accepted(lambda: ollama_fleet(serve=Serve(model=value, engine="ollama")))
    assume(fleet is not None)
    url = "http://127.0.0.1:11434"
    for command in (ollama.pull_command(value, url), ollama.delete_command(value, url)):
        words = shlex.split(command)
        bodies = [json.loads(w) for w in words if w.startswith("{") and w.endswith("}")]
        assert bodies and all(b["model"] == value for b in bodies), command
    awk = shlex.split(ollama.pull_command(value, url))
    assert f"model={value}" in awk


OLLAMA_RELEASE_BASE = "https://github.com/ollama/ollama/releases/download"


def run_install_script(script: str, tmp: Path) -> tuple[list[list[str]], str]:
    """Run an install script with a `curl` that records its words and fails (no network): the
    calls it got and what the script printed."""
    bin_dir = tmp / "bin"
    bin_dir.mkdir(exist_ok=True)
    record = tmp / "curl-calls"
    curl = bin_dir / "curl"
    curl.write_text(
        "#!/usr/bin/python3\nimport json, sys\n"
        f"open({str(record)!r}, 'a').write(json.dumps(sys.argv[1:]) + '\\n')\nsys.exit(22)\n"
    )
    curl.chmod(0o755)
    for tool in ("mktemp", "rm", "cat", "awk", "cut", "mkdir"):
        found = shutil.which(tool)
        if found and not (bin_dir / tool).exists():
            (bin_dir / tool).symlink_to(found)
    script = script.replace("/var/tmp/servekit-ollama", str(tmp / "servekit-ollama"))
    done = subprocess.run(
        ["/bin/sh", "-c", script],
        env={"PATH": str(bin_dir), "HOME": str(tmp)},
        capture_output=True,
        text=True,
        timeout=30,
    )
    calls = (
        [json.loads(line) for line in record.read_text().splitlines()] if record.exists() else []
    )
    record.unlink(missing_ok=True)
    return calls, done.stdout + done.stderr


def assert_install_literal(version: str, base: str) -> None:
    script = ollama.install_linux(version, base, "amd64")
    assert "\x00" not in script, "a NUL byte reached the install script"
    with tempfile.TemporaryDirectory() as folder:
        calls, output = run_install_script(script, Path(folder))
    sums = f"{ollama.release_url(base, version)}/sha256sum.txt"
    assert calls and calls[0][-1] == sums, (calls, output)
    assert output.strip() == f"servekit: cannot download {sums}", output


@PROPERTY
@given(values(["0.32.3", "0.20.0", "0.17.1", "1.0.0"], ("0.99.0$(id)", "0.99.0`id`", "0.99.0\n")))
def test_ollama_version(value: str) -> None:
    fleet = accepted(lambda: ollama_fleet(versions=Versions(ollama=value)))
    assume(fleet is not None)
    assert fleet is not None
    assert_units_like(ollama_files(fleet), BENIGN_OLLAMA)
    assert_install_literal(value, OLLAMA_RELEASE_BASE)


@PROPERTY
@given(
    values(
        [OLLAMA_RELEASE_BASE, "https://mirror.example.com/ollama", "http://10.0.0.2:8080/releases"],
        URL_ATTACKS,
    )
)
def test_ollama_releases_url(value: str) -> None:
    fleet = accepted(lambda: ollama_fleet(sources=Sources(ollama_releases=value)))
    assume(fleet is not None)
    assert fleet is not None
    assert_install_literal(fleet.versions.ollama, value)


INDEX_URLS = [
    "https://pypi.org/simple",
    "http://10.0.0.2:3141/root/pypi/+simple",
    "https://m.example/py",
]


@PROPERTY
@given(
    values(INDEX_URLS, URL_ATTACKS), st.sampled_from(["python_index", "torch_index", "vllm_wheels"])
)
def test_python_index_urls(value: str, field: str) -> None:
    """Index URLs reach pip/uv as one argv word each, with no credentials in them."""
    fleet = accepted(
        lambda: vllm_fleet(sources=Sources(**{field: value}, weights=HuggingFace(token=KEY)))
    )
    assume(fleet is not None)
    assert fleet is not None
    assert urlsplit(value).username is None and urlsplit(value).password is None
    for command in (
        pyenv.bootstrap_uv(value),
        pyenv.install_packages("/opt/v", ["vllm==0.33.0"], value, extra_index_urls=[value]),
    ):
        words = shlex.split(command)
        assert words.count(value) >= 1, command
        for flag in ("--index-url", "--extra-index-url"):
            for i, word in enumerate(words[:-1]):
                if word == flag:
                    assert words[i + 1] == value, command


# ------------------------------------------------------------------ vLLM, apt and nftables


def vllm_fleet(serve: Serve | None = None, **kwargs: Any) -> Fleet:
    machines = kwargs.pop(
        "machines", [SshHost(name="gpu1", address="10.0.0.11", gpu=Gpu(model="A100-80GB"))]
    )
    return Fleet(
        name="props",
        machines=machines,
        serve=[serve or Serve(model="llama-3.1-8b-instruct")],
        engine_api_key=KEY,
        sources=kwargs.pop("sources", Sources(weights=HuggingFace(token=KEY))),
        **kwargs,
    )


def vllm_host_files(fleet: Fleet, facts: HostFacts | None = None) -> list[RenderedFile]:
    return render_host(plan_fleet(fleet).hosts["gpu1"], facts=facts)


def vllm_config(files: list[RenderedFile]) -> dict[str, Any]:
    text = next(f.content for f in files if f.path.endswith(".yaml"))
    config: dict[str, Any] = yaml.safe_load(text)
    return config


BENIGN_VLLM = vllm_host_files(vllm_fleet())


@PROPERTY
@given(st.lists(values(["llama", "gpt-4o-mini", "team/llama-8b", "llama3.1:8b"]), max_size=3))
def test_served_names(names: list[str]) -> None:
    fleet = accepted(lambda: vllm_fleet(Serve(model="llama-3.1-8b-instruct", served_names=names)))
    assume(fleet is not None)
    assert fleet is not None
    files = vllm_host_files(fleet)
    assert_units_like(files, BENIGN_VLLM)
    served = vllm_config(files).get("served-model-name", [])
    assert all(name in served for name in names), served


@PROPERTY
@given(values(["0e9e39f249a16976918f6564b8830bc894c89659", "main", "v1.0"]))
def test_revision(value: str) -> None:
    fleet = accepted(lambda: vllm_fleet(Serve(model="llama-3.1-8b-instruct", revision=value)))
    assume(fleet is not None)
    assert fleet is not None
    files = vllm_host_files(fleet)
    assert_units_like(files, BENIGN_VLLM)
    assert vllm_config(files).get("revision") == value


@PROPERTY
@given(values(["/mnt/models", "/srv/checkpoints", "/data/nfs/llm"]))
def test_local_path(value: str) -> None:
    fleet = accepted(lambda: vllm_fleet(sources=Sources(weights=LocalPath(path=value))))
    assume(fleet is not None)
    assert fleet is not None
    files = vllm_host_files(fleet)
    benign = vllm_host_files(vllm_fleet(sources=Sources(weights=LocalPath(path="/mnt/x"))))
    assert_units_like(files, benign)
    model = vllm_config(files)["model"]
    assert model.startswith(value.rstrip("/") + "/") and "\n" not in model


def apt_fields(files: list[RenderedFile]) -> dict[str, str]:
    text = next(f.content for f in files if f.path.endswith(".sources"))
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, sep, value = line.partition(":")
            assert sep and not line[0].isspace(), f"not a deb822 field: {line!r}"
            assert key not in fields, f"{key} given twice"
            fields[key] = value.strip()
    return fields


@PROPERTY
@given(
    values(
        [
            "https://developer.download.nvidia.com/compute/cuda/repos",
            "http://10.0.0.2:8080/cuda",
            "https://mirror.example.com/nvidia/cuda/repos",
        ],
        URL_ATTACKS,
    )
)
def test_nvidia_apt_url(value: str) -> None:
    fleet = accepted(
        lambda: vllm_fleet(sources=Sources(nvidia_apt=value, weights=HuggingFace(token=KEY)))
    )
    assume(fleet is not None)
    assert fleet is not None
    url = nvidia.repository_url(value, "debian12", "x86_64")
    fields = apt_fields(vllm_host_files(fleet, HostFacts(nvidia_repository=url)))
    benign = apt_fields(vllm_host_files(vllm_fleet(), HostFacts(nvidia_repository="https://x/")))
    assert set(fields) == set(benign)
    assert fields["URIs"] == url


def nft_addresses(text: str) -> list[str]:
    """Every element of every address set (`type ipv4_addr`/`ipv6_addr` named sets), of every
    inline `saddr { ... }` set, and every bare `saddr X` that is not a set reference."""
    found: list[str] = []
    for match in re.finditer(r"set\s+\S+\s*\{([^}]*\{[^}]*\}[^}]*|[^}]*)\}", text):
        body = match[1]
        if re.search(r"type\s+ipv[46]_addr", body):
            elements = re.search(r"elements\s*=\s*\{([^}]*)\}", body)
            if elements:
                found += [a.strip() for a in elements[1].split(",") if a.strip()]
    for match in re.finditer(r"saddr\s+(\{[^}]*\}|\S+)", text):
        if match[1].startswith("@"):
            continue
        group = match[1].strip("{}")
        found += [a.strip() for a in group.split(",") if a.strip()]
    return found


def nft_check(text: str) -> None:
    assert NFT is not None, "nft is needed (apt-get install nftables; .ci/run installs it)"
    with tempfile.NamedTemporaryFile("w", suffix=".nft") as rules:
        rules.write(text)
        rules.flush()
        done = subprocess.run(
            # user + network namespace of its own: CAP_NET_ADMIN there, no root needed here
            ["unshare", "--map-root-user", "--net", NFT, "-c", "-f", rules.name],
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert done.returncode == 0, f"nft -c -f refused the rules:\n{done.stderr}\n{text}"


@PROPERTY
@given(
    values(
        ["10.0.0.20", "192.168.1.7", "fd00::20", "10.0.0.255"],
        ("10.0.0.9, 0.0.0.0/0", "10.0.0.0/8", "10.0.0.9:22", "10.0.0.9 10.0.0.10", "::/0"),
    )
)
def test_address_in_firewall(value: str) -> None:
    """A monitoring host's address is admitted to the engine port behind a gateway: exactly
    that address (and the gateway's), as literals."""
    fleet = accepted(
        lambda: vllm_fleet(
            machines=[
                SshHost(name="gpu1", address="10.0.0.11", gpu=Gpu(model="A100-80GB")),
                SshHost(name="gw1", address="10.0.0.30"),
                SshHost(name="mon1", address=value),
            ],
            gateway=Gateway(host="gw1", api_keys=KEY),
            monitoring=Monitoring(host="mon1"),
        )
    )
    assume(fleet is not None)
    assert fleet is not None
    plan = host_plan(fleet, "gpu1")
    assume(plan is not None)  # a name that does not resolve may be refused at plan time
    assert plan is not None
    rules = next(f.content for f in render_host(plan) if f.path.endswith(".nft"))
    admitted = nft_addresses(rules)
    assert "10.0.0.30" in admitted, rules  # the check sees the sets at all
    for address in admitted:
        ipaddress.ip_address(address)  # literals only: no CIDR, list, name or junk
    try:
        literal: str | None = str(ipaddress.ip_address(value))
    except ValueError:
        literal = None
    if literal is not None:
        assert sorted(set(admitted)) == sorted({"10.0.0.30", literal}), rules
    else:
        resolved = {a for a in plan.firewall_allow if _is_ip(a)}
        assert set(admitted) <= {"10.0.0.30"} | resolved, rules
    nft_check(rules)


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def test_unit_shape_sees_an_injected_directive() -> None:
    """The shape check would catch what issue 11 found (a newline adding ExecStartPre=+...)."""
    unit = next(f.content for f in BENIGN_OLLAMA if f.path == ollama.DROPIN_FILE)
    injected = unit.replace("OLLAMA_KEEP_ALIVE=5m", "OLLAMA_KEEP_ALIVE=5m\nExecStartPre=+/bin/id")
    assert shape(injected) != shape(unit)
    quoted = unit.replace('"OLLAMA_KEEP_ALIVE=5m"', '"OLLAMA_KEEP_ALIVE=5m" "OLLAMA_HOST=0.0.0.0"')
    assert shape(quoted) != shape(unit)


def test_install_check_sees_a_command_substitution(tmp_path: Path) -> None:
    """The install-script check would catch `0.99.0$(cmd)` reaching the shell."""
    script = 'curl "https://x/v0.99.0$(echo hi)" || { echo "servekit: cannot download x"; exit 1; }'
    calls, _output = run_install_script(script, tmp_path)
    assert calls == [["https://x/v0.99.0hi"]]


def test_systemd_verify_sees_an_unknown_directive() -> None:
    file = RenderedFile(
        "/etc/systemd/system/x.service", "[Service]\nExecStart=/bin/true\nBogus=1\n"
    )
    with pytest.raises(AssertionError, match="Unknown key"):
        systemd_verify([file])
