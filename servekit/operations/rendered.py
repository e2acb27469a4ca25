"""Uploading a rendered file as an operation, and telling whether any of some operations changed
the host: the two helpers every deploy's steps share."""

from __future__ import annotations

from collections.abc import Callable
from io import StringIO
from typing import Any

from pyinfra.api.operation import OperationMeta
from pyinfra.operations import files

from servekit.templating import RenderedFile


def put(
    file: RenderedFile, name: str, *, owner: bool = False, sudo: bool | None = None
) -> OperationMeta:
    """
    Upload a rendered file as it is rendered (the same bytes `servekit render` shows), with its
    mode, and with its owner and group when `owner`.

    **Example:**

    .. code:: python

        from servekit.operations.rendered import put

        unit = put(unit_file, "Install ollama.service", owner=True, sudo=True)
    """
    extra: dict[str, Any] = {}
    if owner:
        extra.update(user=file.user, group=file.group)
    if sudo is not None:
        extra["_sudo"] = sudo
    return files.put(name=name, src=StringIO(file.content), dest=file.path, mode=file.mode, **extra)


def any_changed(*operations: OperationMeta) -> Callable[[], bool]:
    """An `_if=` condition: true once any of `operations` changed the host."""
    return lambda: any(op.did_change() for op in operations)
