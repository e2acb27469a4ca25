"""A small deploy for the bench's pyinfra test: a system user, an apt package, a systemd service.

The service is Python's HTTP server run as the user, answering on `web_port` with a page that names
the host, so another host can tell whom it reached.
"""

from io import StringIO

from pyinfra import host
from pyinfra.operations import apt, files, server, systemd

USER = "skweb"
HOME = f"/var/lib/{USER}"
PORT = host.data.get("web_port", 8080)

UNIT = f"""\
[Unit]
Description=servekit test web service
After=network-online.target

[Service]
User={USER}
ExecStart=/usr/bin/python3 -m http.server {PORT} --bind 0.0.0.0 --directory {HOME}/www
Restart=on-failure

[Install]
WantedBy=multi-user.target
"""

server.user(
    name="Create the service user",
    user=USER,
    system=True,
    home=HOME,
    shell="/usr/sbin/nologin",
)

apt.packages(
    name="Install jq from Debian",
    packages=["jq"],
    update=True,
    cache_time=3600,
)

files.directory(name="Create the web root", path=f"{HOME}/www", user=USER, group=USER)

files.put(
    name="Write the page",
    src=StringIO(f"hello from {host.name}\n"),
    dest=f"{HOME}/www/index.html",
    user=USER,
    group=USER,
    mode="644",
)

unit = files.put(
    name="Install the unit",
    src=StringIO(UNIT),
    dest="/etc/systemd/system/skweb.service",
    mode="644",
)

systemd.daemon_reload(name="Reload systemd", _if=unit.did_change)

systemd.service(
    name="Run the service",
    service="skweb.service",
    running=True,
    enabled=True,
)

systemd.service(
    name="Restart after a unit change",
    service="skweb.service",
    restarted=True,
    _if=unit.did_change,
)
