"""Small pieces operations share: the command type of an operation, typed `host.loop`, and
stopping one host with a message.

A problem that stops one host is a command that prints the problem and fails, so pyinfra stops
that host and reports why while the others carry on; raising from an operation would stop every
host.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterable, Iterator
from typing import TypeVar

from pyinfra.api.command import PyinfraCommand, QuoteString, StringCommand
from pyinfra.api.operation import operation
from pyinfra.context import host

Commands = Generator[PyinfraCommand | str, None, None]
T = TypeVar("T")


def each(items: Iterable[T]) -> Iterator[T]:
    """`host.loop`, typed: operations called in a loop keep one order on every host."""
    loop: Callable[[Iterable[T]], Iterator[T]] = host.loop
    yield from loop(items)


def failure(message: str) -> StringCommand:
    """A command that prints `message` to stderr and fails."""
    return StringCommand("printf '%s\\n'", QuoteString(message), ">&2", "&&", "false")


@operation(is_idempotent=False)
def problem(message: str) -> Commands:
    """
    Stop this host with a message (what is wrong and what to do).

    + message: the explanation printed as the host's error

    **Example:**

    .. code:: python

        problem(name="Read the fleet's secrets", message="the HF token file is missing")
    """
    yield failure(f"servekit: {host.name}: {message}")


@operation()
def barrier() -> Commands:
    """
    Nothing, on every host that calls it: one step of pyinfra's order shared by those hosts, so
    that what follows it on one host runs only after what precedes it on all of them. (pyinfra
    orders each host's own steps, and runs a step of another host's chain as soon as that chain
    allows: without a shared step, a deploy file given last could act first on a host the
    earlier files skip.)

    **Example:**

    .. code:: python

        barrier(name="Wait for the earlier steps on every host")
    """
    host.noop("every host reached this step")
    return
    yield
