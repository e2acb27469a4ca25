# Runs on a host (python3 -c): report the state servekit's vLLM deploy compares against, as JSON.
# argv[1]: JSON spec {packages, user, paths, read, globs (-> first line of each match), run,
# units, health, interfaces}.
import glob
import grp
import hashlib
import json
import os
import pwd
import stat
import subprocess
import sys
import urllib.error
import urllib.request

spec = json.loads(sys.argv[1])
out = {"python": ".".join(str(n) for n in sys.version_info[:3])}


def owner(st):
    try:
        user = pwd.getpwuid(st.st_uid).pw_name
    except KeyError:
        user = str(st.st_uid)
    try:
        group = grp.getgrgid(st.st_gid).gr_name
    except KeyError:
        group = str(st.st_gid)
    return user, group


def describe(path):
    try:
        st = os.lstat(path)
    except OSError:
        return None
    user, group = owner(st)
    info = {"mode": f"{stat.S_IMODE(st.st_mode):04o}", "user": user, "group": group}
    if stat.S_ISLNK(st.st_mode):
        info["type"] = "link"
        info["target"] = os.readlink(path)
    elif stat.S_ISDIR(st.st_mode):
        info["type"] = "dir"
    elif stat.S_ISREG(st.st_mode):
        info["type"] = "file"
        digest = hashlib.sha256()
        try:
            with open(path, "rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
            info["sha256"] = digest.hexdigest()
        except OSError:
            info["sha256"] = None
    else:
        info["type"] = "other"
    return info


def run(command):
    try:
        done = subprocess.run(
            command, shell=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=30
        )
        return [done.returncode, done.stdout.decode("utf-8", "replace")[-4000:]]
    except subprocess.TimeoutExpired:
        return [124, "timed out"]


if spec.get("packages"):
    names = spec["packages"]
    done = subprocess.run(
        ["dpkg-query", "-W", "-f=${Package} ${db:Status-Status}\n", *names],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    found = dict(line.split(" ", 1) for line in done.stdout.decode().splitlines() if " " in line)
    out["packages"] = {name: found.get(name) == "installed" for name in names}

if spec.get("user"):
    try:
        entry = pwd.getpwnam(spec["user"])
        out["user"] = {"home": entry.pw_dir, "shell": entry.pw_shell, "uid": entry.pw_uid}
    except KeyError:
        out["user"] = None

out["paths"] = {path: describe(path) for path in spec.get("paths", [])}

read = {}
for path in spec.get("read", []):
    try:
        with open(path, encoding="utf-8") as handle:
            read[path] = handle.read(65536)
    except OSError:
        read[path] = None
out["read"] = read

found = {}
for pattern in spec.get("globs", []):
    for path in sorted(glob.glob(pattern)):
        try:
            with open(path, encoding="utf-8", errors="replace") as handle:
                found[path] = handle.readline().rstrip("\n")
        except OSError:
            found[path] = None
out["globs"] = found

out["run"] = {key: run(command) for key, command in spec.get("run", {}).items()}

units = spec.get("units", [])
if units:
    props = "ActiveState,SubState,UnitFileState,LoadState,MainPID,NRestarts,InvocationID"
    done = subprocess.run(
        ["systemctl", "show", "-p", props, *units],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    blocks = done.stdout.decode().strip().split("\n\n")
    states = {}
    for unit, block in zip(units, blocks, strict=False):
        states[unit] = dict(line.split("=", 1) for line in block.splitlines() if "=" in line)
    out["units"] = states

health = {}
for key, url in spec.get("health", {}).items():
    try:
        with urllib.request.urlopen(url, timeout=3) as response:
            health[key] = response.status
    except urllib.error.HTTPError as error:
        health[key] = error.code
    except Exception:
        health[key] = None
out["health"] = health

if spec.get("interfaces"):
    done = subprocess.run(
        ["ip", "-o", "-4", "addr", "show"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    )
    interfaces = {}
    for line in done.stdout.decode().splitlines():
        words = line.split()
        if len(words) > 3 and words[2] == "inet":
            interfaces[words[3].split("/")[0]] = words[1].split("@")[0]
    out["interfaces"] = interfaces

print(json.dumps(out))
