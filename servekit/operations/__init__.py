"""Reusable pyinfra operations servekit deploys are made of (each diffs facts, yields commands)."""
