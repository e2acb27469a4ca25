"""`servekit cloud plan | apply | destroy | status | force-unlock`: the fleet's AWS machines.

Cheap to import (`servekit --help` loads it): boto3, botocore, paramiko and the inventory are
imported inside the commands that use them.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.markup import escape

from servekit.cloud.timeouts import Timeouts

if TYPE_CHECKING:
    from servekit.cloud.apply import ReadyCheck
    from servekit.cloud.desired import GroupIntent
    from servekit.cloud.plan import Plan
    from servekit.cloud.ssh import SshTarget
    from servekit.cloudstate.store import StateStore

cloud_app = typer.Typer(
    help="Create the fleet's AWS machines, Terraform-style: plan, apply, status, destroy.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
out = Console(width=None if sys.stdout.isatty() else 150, highlight=False)
err = Console(stderr=True, width=None if sys.stderr.isatty() else 150, highlight=False)
STYLES = {"<=": "cyan", "+": "green", "~": "yellow", "-/+": "magenta", "-": "red", "!": "yellow"}

Inventory = Annotated[Path, typer.Argument(help="inventory file, e.g. inventories/prod.py")]
LockTimeout = Annotated[
    float, typer.Option(help="seconds to wait for another operation's lock", min=0)
]


def fail(message: str) -> typer.Exit:
    err.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True)
    return typer.Exit(1)


@contextlib.contextmanager
def reported() -> Iterator[None]:
    """Every expected failure becomes one clear message and exit code 1, never a traceback."""
    from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

    from servekit.cloud.errors import CREDENTIAL_CODES, CloudError, error_code, error_message
    from servekit.cloudstate.store import StateError
    from servekit.errors import FleetError

    try:
        yield
    except (CloudError, StateError, FleetError) as error:
        raise fail(str(error)) from None
    except NoCredentialsError:
        raise fail("no AWS credentials found: configure them as for the AWS CLI") from None
    except ClientError as error:
        code = error_code(error)
        if code in CREDENTIAL_CODES:
            raise fail(f"AWS refused the credentials ({code}): {error_message(error)}") from None
        operation = error.operation_name
        raise fail(f"AWS {operation}: {code}: {error_message(error)}") from None
    except BotoCoreError as error:
        raise fail(f"AWS: {error}") from None


def echo(line: str) -> None:
    symbol = line.lstrip().split(" ", 1)[0]
    style = STYLES.get(symbol)
    out.print(f"[{style}]{escape(line)}[/]" if style else escape(line), soft_wrap=True)


def print_intro(fleet: str, intents: list[GroupIntent], store: StateStore) -> None:
    """What the inventory asks for, known offline, before AWS is asked anything."""
    out.print(escape(f"fleet {fleet}: state {store.path}"))
    if not intents:
        out.print("  no AWS node groups (AwsNodeGroup) in this inventory")
    for intent in intents:
        group = intent.group
        price = intent.cost_usd_hour()
        cost = f", ${price:,.2f}/h list price" if price is not None else ""
        out.print(
            escape(f"  {group.name}: {group.count} × {group.instance_type} in {group.region}{cost}")
        )


def print_plan(plan: Plan) -> None:
    from servekit.cloud.plan import describe

    out.print()
    for line in describe(plan):
        echo(line)


def wait_until_ready(target: SshTarget, timeout_s: float) -> str:
    """Wait until a new machine accepts an SSH login (paramiko loads only for this)."""
    from servekit.cloud.ssh import wait_until_ready as wait_for_login

    return wait_for_login(target, timeout_s)


def ssh_check(wait_ssh: bool) -> ReadyCheck | None:
    if not wait_ssh:
        return None

    def ready(target: SshTarget, timeout_s: float) -> str:
        return wait_until_ready(target, timeout_s)

    return ready


def read_plan(path: Path) -> Plan:
    from servekit.cloud.plan import load_plan

    try:
        return load_plan(path)
    except (OSError, ValueError) as error:
        raise fail(f"{path} is not a readable servekit plan: {error}") from None


def confirm(question: str) -> None:
    try:
        if typer.confirm(question, default=False):
            return
    except typer.Abort:
        pass
    raise fail("nothing changed (answer y, or pass --yes)")


@cloud_app.command()
def plan(
    inventory: Inventory,
    out_file: Annotated[
        Path | None, typer.Option("--out", help="save the plan for `apply --plan-file`")
    ] = None,
    destroy: Annotated[bool, typer.Option("--destroy", help="plan removing everything")] = False,
) -> None:
    """What apply would create, change or destroy, with the cost.

    Exit status: 0 no changes, 2 changes, 1 error.
    """
    from servekit.cloud.aws import Providers
    from servekit.cloud.plan import save_plan
    from servekit.cloud.workflow import load, refresh_and_plan
    from servekit.cloudstate.store import StateStore

    with reported():
        fleet, intents = load(inventory)
        store = StateStore(fleet.name)
        print_intro(fleet.name, intents, store)
        result = refresh_and_plan(
            fleet.name, intents, store, Providers(), "destroy" if destroy else "apply"
        )
    print_plan(result)
    if out_file is not None:
        save_plan(result, out_file)
        out.print(
            escape(f"Saved the plan to {out_file}: `servekit cloud apply --plan-file {out_file}`")
        )
    raise typer.Exit(2 if result.has_changes else 0)


@cloud_app.command()
def apply(
    inventory: Annotated[
        Path | None, typer.Argument(help="inventory file (not needed with --plan-file)")
    ] = None,
    plan_file: Annotated[
        Path | None, typer.Option(help="apply exactly this saved plan, without asking")
    ] = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="do not ask for confirmation")] = False,
    wait_ssh: Annotated[
        bool, typer.Option(help="wait until each new machine accepts an SSH login")
    ] = True,
    ssh_timeout: Annotated[float, typer.Option(help="seconds to wait for SSH", min=1)] = 600,
    lock_timeout: LockTimeout = 0,
) -> None:
    """Create or change the fleet's AWS resources; the state is written after each one."""
    from servekit.cloud.aws import Providers
    from servekit.cloud.workflow import execute, load, refresh_and_plan
    from servekit.cloudstate.store import StateStore
    from servekit.inventory import load_fleet

    with reported():
        saved = read_plan(plan_file) if plan_file else None
        if saved is None:
            if inventory is None:
                raise fail("give an INVENTORY, or --plan-file")
            fleet, intents = load(inventory)
            name = fleet.name
        else:
            name, intents = saved.fleet, []
            if inventory is not None and load_fleet(inventory).name != name:
                raise fail(f"{plan_file} is a plan for fleet {name!r}, not for {inventory}")
        store = StateStore(name)
        providers = Providers()
        with store.lock("apply", lock_timeout):
            if saved is None:
                print_intro(name, intents, store)
            result = saved or refresh_and_plan(name, intents, store, providers)
            print_plan(result)
            if not result.has_changes:
                return
            if saved is None and not yes:
                confirm("Apply these changes?")
            out.print()
            execute(
                result, store, providers, ssh_check(wait_ssh), Timeouts(ssh_s=ssh_timeout), echo
            )
    out.print(
        escape(
            f"Apply complete; state {store.path}. Next: pyinfra {inventory or 'INVENTORY'} "
            "deploys/gpu.py deploys/vllm.py"
        )
    )


@cloud_app.command()
def destroy(
    inventory: Inventory,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="do not ask for confirmation")] = False,
    lock_timeout: LockTimeout = 0,
) -> None:
    """Terminate the fleet's machines and delete everything servekit created for it."""
    from servekit.cloud.aws import Providers
    from servekit.cloud.workflow import execute, refresh_and_plan
    from servekit.cloudstate.store import StateStore
    from servekit.inventory import load_fleet

    with reported():
        fleet = load_fleet(inventory)
        store = StateStore(fleet.name)
        providers = Providers()
        with store.lock("destroy", lock_timeout):
            result = refresh_and_plan(fleet.name, [], store, providers, "destroy")
            print_plan(result)
            if not result.has_changes:
                return
            if not yes:
                confirm(f"Destroy all of fleet {fleet.name}'s AWS resources listed above?")
            out.print()
            execute(result, store, providers, None, Timeouts(), echo)
    out.print(escape(f"Destroy complete; {store.path} lists no resources."))


@cloud_app.command()
def status(inventory: Inventory) -> None:
    """Compare the state with AWS: machines missing or stopped, and unrecorded tagged resources.

    Exit status: 0 no drift, 2 drift, 1 error.
    """
    from rich.table import Table

    from servekit.cloud.aws import Providers
    from servekit.cloud.refresh import regions_of
    from servekit.cloud.status import fleet_status
    from servekit.cloudstate.store import StateStore
    from servekit.inventory import load_fleet
    from servekit.spec import AwsNodeGroup

    with reported():
        fleet = load_fleet(inventory)
        store = StateStore(fleet.name)
        state = store.load()
        declared = (m.region for m in fleet.machines if isinstance(m, AwsNodeGroup))
        regions = regions_of(declared, state)
        providers = Providers()
        if regions:
            providers(regions[0]).check_credentials()
        rows = fleet_status(fleet.name, state, regions, providers)
    table = Table(title=escape(f"fleet {fleet.name} ({store.path})"), title_justify="left")
    for column in ("resource", "id", "region", "status", "public", "private", "drift"):
        table.add_column(column)
    for row in rows:
        table.add_row(
            *(
                escape(cell)
                for cell in (
                    row.address,
                    row.id,
                    row.region,
                    row.status,
                    row.public_ip or "",
                    row.private_ip or "",
                )
            ),
            f"[yellow]{escape(row.drift)}[/]" if row.drift else "",
        )
    out.print(table)
    drifted = [row for row in rows if row.drift]
    out.print(f"{len(drifted)} drifted" if drifted else "No drift: AWS matches the state.")
    raise typer.Exit(2 if drifted else 0)


@cloud_app.command("force-unlock")
def force_unlock(
    inventory: Inventory,
    lock_id: Annotated[str, typer.Argument(help="the lock ID the refusal printed")],
) -> None:
    """Remove the lock of an apply or destroy that died (check `plan` first)."""
    from servekit.cloudstate import store as cloud_state
    from servekit.inventory import load_fleet

    with reported():
        store = cloud_state.StateStore(load_fleet(inventory).name)
        info = cloud_state.force_unlock(store, lock_id)
    out.print(
        escape(f"Removed {info.describe()}. Run `servekit cloud plan {inventory}` to review.")
    )
