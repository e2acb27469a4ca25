"""Terraform-style AWS provisioning: plan, apply, destroy, with a state file and a lock."""
