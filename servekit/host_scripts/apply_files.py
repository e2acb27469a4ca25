# Runs on a host as root (python3 -c): write files atomically, keeping a rollback copy if asked.
# stdin: JSON {"groups": [{"files": [{path, content (base64), mode, user, group}],
#                          "backup": DIR or null}], "restore": [DIR, ...], "remove": [DIR, ...],
#              "daemon_reload": bool}.
# A group with a backup DIR first saves the current version of its files there (a rollout's way
# back); "restore" puts such versions back, "remove" forgets them. Contents may be secrets: they
# are written with their final mode from the first byte and never printed.
import base64
import grp
import json
import os
import pwd
import shutil
import subprocess
import sys

job = json.load(sys.stdin)


def write(path, data, mode, user, group):
    os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
    temp = f"{path}.servekit-new"
    if os.path.lexists(temp):
        os.unlink(temp)
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.fchmod(fd, mode)
        os.fchown(fd, pwd.getpwnam(user).pw_uid, grp.getgrnam(group).gr_gid)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temp, path)


def save(directory, paths):
    """Keep the current version of `paths` in `directory` (a manifest says which existed)."""
    if os.path.isdir(directory):
        shutil.rmtree(directory)  # left by an interrupted run: what is on disk now is newer
    os.makedirs(directory, mode=0o700)
    manifest = {}
    for index, path in enumerate(paths):
        if os.path.lexists(path):
            copy = os.path.join(directory, str(index))
            shutil.copy2(path, copy)
            st = os.stat(path)
            os.chown(copy, st.st_uid, st.st_gid)
            manifest[path] = str(index)
        else:
            manifest[path] = None
    with open(os.path.join(directory, "manifest.json"), "w") as handle:
        json.dump(manifest, handle)


def restore(directory):
    with open(os.path.join(directory, "manifest.json")) as handle:
        manifest = json.load(handle)
    for path, copy in manifest.items():
        if copy is None:
            if os.path.lexists(path):
                os.unlink(path)
            print(f"removed {path}")
        else:
            os.replace(os.path.join(directory, copy), path)
            print(f"restored {path}")
    shutil.rmtree(directory)


for directory in job.get("restore", []):
    restore(directory)
for directory in job.get("remove", []):
    if os.path.isdir(directory):
        shutil.rmtree(directory)
for group in job.get("groups", []):
    if group.get("backup"):
        save(group["backup"], [item["path"] for item in group["files"]])
    for item in group["files"]:
        data = base64.b64decode(item["content"])
        write(item["path"], data, int(item["mode"], 8), item["user"], item["group"])
        print("wrote {} ({} {}:{})".format(item["path"], item["mode"], item["user"], item["group"]))
if job.get("daemon_reload"):
    subprocess.run(["systemctl", "daemon-reload"], check=True)
    print("systemctl daemon-reload")
