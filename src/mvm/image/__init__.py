"""Image building: kernel provider, initramfs, rootfs, Debian packages, cache."""
