"""Orchestration of a VM's life: the only place that combines build, drives,
backend and state."""
