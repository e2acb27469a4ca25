"""Templates and the files rendered from them: the one Jinja2 environment servekit renders every
host file with (systemd's quoting as filters), shared by `servekit.render` and `servekit.firewall`.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from servekit import systemd

if TYPE_CHECKING:
    import jinja2


@dataclass(frozen=True)
class RenderedFile:
    """A file for a host: its absolute path there, content, mode and owner."""

    path: str
    content: str
    mode: str = "0644"
    user: str = "root"
    group: str = "root"


def templates_dir() -> Path:
    """Templates ship inside the wheel as servekit/templates; a checkout keeps them at the top."""
    packaged = Path(str(resources.files("servekit"))) / "templates"
    return packaged if packaged.is_dir() else Path(__file__).resolve().parent.parent / "templates"


@cache
def environment() -> jinja2.Environment:
    """Templates with systemd's quoting as filters: every unit value from a plan goes through
    one of them (servekit/systemd.py). jinja2 loads with the first file rendered, not with
    every command."""
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(templates_dir()),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,
    )
    env.filters.update(
        systemd_quote=systemd.quote,
        systemd_env=systemd.environment,
        systemd_exec=systemd.exec_argv,
        systemd_path=systemd.path,
        systemd_bare_path=systemd.bare_path,
        systemd_name=systemd.name,
    )
    return env


def render_template(name: str, **values: object) -> str:
    return environment().get_template(name).render(**values)
