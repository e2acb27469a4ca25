"""`servekit status`: every declared host and replica of a fleet, up or down, with its load.

One job per module:

- `report`: the snapshot (`FleetStatus`, its `--json` layout `servekit.status/1`);
- `declared`: what the fleet's plan declares (engines, scrape targets, the monitoring host);
- `expositions`: Prometheus' text format and `histogram_quantile`, for the engines' own /metrics;
- `prometheus`: the snapshot from Prometheus' HTTP API (instant queries, alerts);
- `engines`: the snapshot straight from each engine's /metrics (two samples make the rates);
- `view`: the terminal tables and the live, refreshing view.
"""
