"""A fleet's cloud state on disk: the state file, its lock, the addresses and the pinned host keys.

boto3-free and below `servekit.inventory` (which reads the addresses when an inventory loads);
`servekit.cloud` (boto3) writes it through `store.StateStore`.
"""
