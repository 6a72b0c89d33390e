"""QEMU backend: pure argv builder, accelerator probe, process + QMP control."""
