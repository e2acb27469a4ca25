"""Run Debian's real Prometheus (not a stand-in) with the files servekit renders for a
monitoring host's plan, as Debian's unit would (its ARGS line), its data under a test folder."""

from __future__ import annotations

import shlex
import shutil
import subprocess
from pathlib import Path

from servekit.hostplan import HostPlan
from servekit.monitoring import MonitoringLayout, monitoring_files


def start_prometheus(plan: HostPlan, folder: Path) -> subprocess.Popen[bytes]:
    """Write the plan's monitoring files under `folder` and start Prometheus on them; the
    caller stops it (terminate, then wait)."""
    binary = shutil.which("prometheus")
    assert binary, "install prometheus (apt-get install prometheus; .ci/run does)"
    layout = MonitoringLayout.under(str(folder / "etc"))
    for rendered in monitoring_files(plan, None, layout):
        Path(rendered.path).parent.mkdir(parents=True, exist_ok=True)
        Path(rendered.path).write_text(rendered.content)
    defaults = Path(layout.prometheus_defaults).read_text().splitlines()[-1]
    args = shlex.split(defaults.removeprefix("ARGS="))[0].split()  # as Debian's unit passes them
    argv = [binary, f"--config.file={layout.prometheus_config}", *args]
    argv.append(f"--storage.tsdb.path={folder / 'data'}")
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
