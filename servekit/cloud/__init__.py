"""Terraform-style AWS provisioning: plan, apply, destroy, with a state file and a lock.

This package uses boto3 and sits above `servekit.inventory`. Each fleet's state (file, lock,
addresses) lives in `servekit.cloudstate`, which sits below the inventory and imports no boto3.
"""
