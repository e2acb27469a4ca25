"""The cloud state of one fleet (`cloud/<fleet>.json`) and the lock that guards it.

The format follows Terraform's state: a format version, a `serial` raised on every write, a
`lineage` fixed when the file is created (a write over a file of another lineage is refused), and
the resources with their AWS ids and addresses::

    {"format_version": 1, "servekit_version": "0.1.0", "fleet": "prod", "serial": 9,
     "lineage": "5f0c...", "generations": {"a100-0": 1},
     "resources": [{"type": "aws_instance", "name": "a100-0", "id": "i-0abc", "region":
                    "us-east-1", "attributes": {"public_ip": "...", "private_ip": "...", ...}}]}

`generations` counts how often a node's instance was destroyed; it is part of the launch's
ClientToken, so a relaunch after a destroy is a new request while a retry after a crash is not.
The file holds ids and addresses only, never credentials or keys; it is still written 0600,
atomically, after every resource change, so a crash loses nothing that was created.

Next to it, `cloud/<fleet>.known_hosts` (0600) holds the SSH host keys pinned from each
instance's console output (attribute `host_keys`, see servekit/cloud/hostkeys.py) under its
public and private address (known_hosts.py); it is rewritten from the state on every save, so
it never lists a machine the state has forgotten. The inventory points pyinfra at it with strict
host key checking.

The lock is `cloud/<fleet>.lock`: `fcntl.flock` held by the running apply/destroy, plus JSON
saying who holds it (ID, Operation, Who, Version, Created, Path, PID). A lock left behind by a
process that died stays until `servekit cloud force-unlock INVENTORY ID`, as in Terraform: the
state may be mid-change, and a person should look at `servekit cloud plan` first.

This module is imported when an inventory loads, so it stays free of boto3 (and of
servekit.inventory and servekit.cloud, which sit above it).
"""

from __future__ import annotations

import contextlib
import fcntl
import getpass
import os
import socket
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field

from servekit import __version__
from servekit.cloudstate.known_hosts import known_hosts_lines, write_known_hosts
from servekit.placement import NodeAddress

FORMAT_VERSION = 1

ResourceType = Literal[
    "aws_key_pair", "aws_security_group", "aws_placement_group", "aws_instance", "aws_eip"
]


class StateError(Exception):
    """The state file or its lock stops the operation; the message says what to do."""


def state_dir() -> Path:
    """Where `servekit cloud` keeps fleet state: $SERVEKIT_STATE_DIR, else ./cloud."""
    return Path(os.environ.get("SERVEKIT_STATE_DIR", "cloud"))


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class Resource(BaseModel):
    """One AWS resource servekit created: `name` is its node group or node, `id` its AWS id."""

    model_config = ConfigDict(extra="forbid")

    type: ResourceType
    name: str
    id: str
    region: str
    attributes: dict[str, Any] = Field(default_factory=dict)

    @property
    def address(self) -> str:
        """Terraform-style address, e.g. `aws_instance.a100-0`."""
        return f"{self.type}.{self.name}"


class State(BaseModel):
    model_config = ConfigDict(extra="forbid")

    format_version: int = FORMAT_VERSION
    servekit_version: str = __version__
    fleet: str
    serial: int = 0
    lineage: str
    generations: dict[str, int] = Field(default_factory=dict)
    resources: list[Resource] = Field(default_factory=list)

    def find(self, type_: ResourceType, name: str) -> Resource | None:
        return next((r for r in self.resources if r.type == type_ and r.name == name), None)

    def of_type(self, type_: ResourceType) -> list[Resource]:
        return [r for r in self.resources if r.type == type_]


class StateStore:
    """Reads and writes one fleet's state file; every save is atomic and raises the serial."""

    def __init__(self, fleet: str, directory: Path | None = None) -> None:
        self.fleet = fleet
        self.directory = directory or state_dir()
        self.path = self.directory / f"{fleet}.json"
        self.lock_path = self.directory / f"{fleet}.lock"
        self.known_hosts_path = self.directory / f"{fleet}.known_hosts"

    def load(self) -> State | None:
        if not self.path.is_file():
            return None
        try:
            state = State.model_validate_json(self.path.read_text())
        except ValueError as error:
            raise StateError(f"{self.path} is not a servekit state file: {error}") from None
        if state.format_version > FORMAT_VERSION:
            raise StateError(
                f"{self.path} has format {state.format_version}; this servekit reads "
                f"{FORMAT_VERSION}: upgrade servekit"
            )
        if state.fleet != self.fleet:
            raise StateError(f"{self.path} holds fleet {state.fleet!r}, not {self.fleet!r}")
        return state

    def load_or_create(self) -> State:
        """The current state, or a new empty one (written, so its lineage is fixed from now)."""
        return self.load() or self.save(State(fleet=self.fleet, lineage=str(uuid.uuid4())))

    def save(self, state: State) -> State:
        """Write `state` with serial + 1; refuses if the file changed under us."""
        on_disk = self.load()
        if on_disk is not None:
            if on_disk.lineage != state.lineage:
                raise StateError(
                    f"{self.path} now has lineage {on_disk.lineage}, not {state.lineage}: "
                    "another state replaced it; nothing was written"
                )
            if on_disk.serial != state.serial:
                raise StateError(
                    f"{self.path} was written by someone else (serial {on_disk.serial}, "
                    f"expected {state.serial}); nothing was written"
                )
        saved = state.model_copy(update={"serial": state.serial + 1})
        self.directory.mkdir(parents=True, exist_ok=True)
        fd, temp = tempfile.mkstemp(prefix=f".{self.fleet}.", dir=self.directory)
        try:
            with os.fdopen(fd, "w") as file:  # mkstemp creates it 0600
                file.write(saved.model_dump_json(indent=2) + "\n")
                file.flush()
                os.fsync(file.fileno())
            os.replace(temp, self.path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp)
            raise
        write_known_hosts(self.known_hosts_path, pinned_known_hosts(saved))
        return saved

    @contextlib.contextmanager
    def lock(self, operation: str, timeout_s: float = 0) -> Iterator[LockInfo]:
        """Hold the fleet's lock for `operation`; StateError naming the holder if taken."""
        held = _acquire(self.lock_path, operation, self.path, timeout_s)
        try:
            yield held.info
        finally:
            held.release()


class StateWriter:
    """The state of a running apply: each change is saved at once (crash-safe)."""

    def __init__(self, store: StateStore, state: State) -> None:
        self.store = store
        self.state = state

    def record(self, resource: Resource) -> Resource:
        others = [
            r
            for r in self.state.resources
            if not (r.type == resource.type and r.name == resource.name)
        ]
        self._save([*others, resource])
        return resource

    def update(self, resource: Resource, **attributes: Any) -> Resource:
        changed = resource.model_copy(update={"attributes": {**resource.attributes, **attributes}})
        return self.record(changed)

    def forget(self, type_: ResourceType, name: str) -> None:
        self._save([r for r in self.state.resources if not (r.type == type_ and r.name == name)])

    def bump_generation(self, node: str) -> None:
        generations = {**self.state.generations, node: self.state.generations.get(node, 0) + 1}
        self.state = self.store.save(self.state.model_copy(update={"generations": generations}))

    def _save(self, resources: list[Resource]) -> None:
        order = {t: i for i, t in enumerate(get_args(ResourceType))}
        resources = sorted(resources, key=lambda r: (order[r.type], r.name))
        self.state = self.store.save(self.state.model_copy(update={"resources": resources}))


def node_addresses(fleet: str) -> dict[str, NodeAddress]:
    """Public and private address of each recorded instance (none before `cloud apply`)."""
    state = StateStore(fleet).load()
    if state is None:
        return {}
    return {
        r.name: NodeAddress(
            public=r.attributes.get("public_ip"),
            private=r.attributes.get("private_ip"),
            instance_type=r.attributes.get("instance_type"),
        )
        for r in state.of_type("aws_instance")
    }


def pinned_known_hosts(state: State) -> list[str]:
    """known_hosts lines for every instance whose host keys were pinned, at each address."""
    hosts = []
    for record in state.of_type("aws_instance"):
        keys = record.attributes.get("host_keys") or []
        addresses = (record.attributes.get("public_ip"), record.attributes.get("private_ip"))
        for address in dict.fromkeys(a for a in addresses if a):
            hosts.append((str(address), 22, [str(k) for k in keys]))
    return known_hosts_lines(hosts)


def pinned_nodes(fleet: str) -> set[str]:
    """Nodes whose host keys `cloud apply` pinned (not those applied with --no-wait-ssh)."""
    state = StateStore(fleet).load()
    if state is None:
        return set()
    return {r.name for r in state.of_type("aws_instance") if r.attributes.get("host_keys")}


def known_hosts_file(fleet: str) -> Path:
    """The fleet's known_hosts file (absolute: pyinfra may run from another directory)."""
    return StateStore(fleet).known_hosts_path.absolute()


# Lock ---------------------------------------------------------------------------------------


class LockInfo(BaseModel):
    """Who holds a fleet's lock, in Terraform's lock-info shape."""

    model_config = ConfigDict(populate_by_name=True)

    id: str = Field(alias="ID")
    operation: str = Field(alias="Operation")
    who: str = Field(alias="Who")
    version: str = Field(alias="Version")
    created: str = Field(alias="Created")
    path: str = Field(alias="Path")
    pid: int = Field(alias="PID")

    def describe(self) -> str:
        return (
            f"lock {self.id}: {self.operation} by {self.who} (pid {self.pid}) since {self.created}"
        )


@dataclass
class _Held:
    fd: int
    path: Path
    info: LockInfo

    def release(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        os.close(self.fd)  # closing drops the flock


def _who() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return f"{user}@{socket.gethostname()}"


def _read_info(fd: int) -> LockInfo | None:
    os.lseek(fd, 0, os.SEEK_SET)
    text = os.read(fd, 65536).decode(errors="replace")
    if not text.strip():
        return None
    try:
        return LockInfo.model_validate_json(text)
    except ValueError:
        return LockInfo(
            id="?", operation="?", who="?", version="?", created="?", path=text[:80], pid=0
        )


def _open_locked(path: Path) -> tuple[int, bool]:
    """Open the lock file and try its flock: (fd, whether we hold it now)."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return fd, False
        # The holder may have unlinked the file between our open and our flock: retry on the
        # file that is now at `path`, or two processes could each hold a different inode.
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd, True
        os.close(fd)


def _refusal(info: LockInfo | None, alive: bool, lock_path: Path) -> StateError:
    holder = info.describe() if info else "a lock without details"
    if alive:
        return StateError(
            f"the state is locked ({holder}); wait for it to finish (or use --lock-timeout)"
        )
    lock_id = info.id if info else "ID"
    return StateError(
        f"the state is locked by an operation that did not finish ({holder}). The state was "
        "saved after each resource: check `servekit cloud plan`, then release the lock with "
        f"`servekit cloud force-unlock INVENTORY {lock_id}` ({lock_path})"
    )


def _acquire(lock_path: Path, operation: str, state_path: Path, timeout_s: float) -> _Held:
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + timeout_s
    while True:
        fd, held = _open_locked(lock_path)
        info = _read_info(fd)
        if held and info is None:
            break
        os.close(fd)
        if time.monotonic() >= deadline:
            raise _refusal(info, alive=not held, lock_path=lock_path)
        time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
    info = LockInfo(
        id=str(uuid.uuid4()),
        operation=operation,
        who=_who(),
        version=__version__,
        created=now(),
        path=str(state_path),
        pid=os.getpid(),
    )
    os.ftruncate(fd, 0)
    os.pwrite(fd, info.model_dump_json(by_alias=True, indent=2).encode() + b"\n", 0)
    os.fsync(fd)
    return _Held(fd, lock_path, info)


def force_unlock(store: StateStore, lock_id: str) -> LockInfo:
    """Remove a lock left by an operation that died; refuses a live holder or a wrong ID."""
    if not store.lock_path.exists():
        raise StateError(f"fleet {store.fleet!r} is not locked ({store.lock_path} is absent)")
    fd, held = _open_locked(store.lock_path)
    try:
        info = _read_info(fd)
        if not held:
            raise StateError(
                f"{info.describe() if info else 'the lock'} is held by a running process; "
                "force-unlock only removes locks of operations that died"
            )
        if info is None or info.id != lock_id:
            found = info.id if info else "no ID"
            raise StateError(f"lock ID {lock_id!r} does not match the lock ({found})")
        os.unlink(store.lock_path)
        return info
    finally:
        os.close(fd)
