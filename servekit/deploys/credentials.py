"""Moved to `servekit.operations.credentials`; re-exported here for the deploys that still
import it from this path."""

from servekit.operations.credentials import mirror_login_files, secret_file, write_command

__all__ = ["mirror_login_files", "secret_file", "write_command"]
