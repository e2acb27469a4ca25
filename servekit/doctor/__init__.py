"""`servekit doctor`: check on the real hosts everything a deploy depends on, before and after
a deploy, and say precisely what is wrong and what to do.

Layout (one job per module):

- `result`: `Check` (one row: check, expected, found, verdict, fix) and `HostFindings`;
- `gpu`, `system`, `network`, `engines`: turn facts (recorded outputs in tests) into checks;
- `run`: connect with pyinfra, gather facts per host, then the checks across hosts;
- `report`: the table per host and `--json`.
"""
