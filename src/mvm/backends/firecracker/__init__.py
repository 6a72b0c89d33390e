"""The Firecracker backend (docs/firecracker.md)."""
