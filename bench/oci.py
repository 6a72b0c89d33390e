"""OCI benchmark: building an image-based project against a peer doing the same unpacking.

From one run, with one podman-built ``FROM scratch`` image (a static busybox and a
script) saved as an ``oci-archive``, prints medians of:

- **floor**: ``podman create`` + ``podman export`` of the same image into a tar (a
  container engine unpacking the same layers into a filesystem, from its own store);
- **mvm build (cold)**: ``mvmctl build --force`` of a project with ``image =
  "oci-archive:…"`` (skopeo copy, layer scan, umoci unpack, mvm's files, mkfs.ext4,
  initramfs), and its ratio to the floor, paired run by run;
- **mvm build (cached)**: the no-op build of the unchanged project;
- **cold run / cached run**: from ``mvmctl run --attached`` to the entrypoint's first line,
  in a fresh MVM_HOME (build + boot) and with the image built (boot only, TCG here).

``--payload DIR`` adds a copy of DIR (e.g. /usr/lib/python3.11: 54 MB, 1500 files) to
the image, for a size where unpacking dominates.

Usage: python bench/oci.py [--runs N] [--payload DIR]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from boot import first_line_time  # bench/ is on sys.path: python bench/oci.py

MVMCTL = str(Path(sys.executable).parent / "mvmctl")
MARKER = b"oci-first-line"
DOCKERFILE = """FROM scratch
COPY busybox /bin/busybox
COPY hello.sh /app/hello.sh
USER 1000
ENTRYPOINT ["/app/hello.sh"]
"""


def timed(argv: list[str], env: dict[str, str] | None = None) -> float:
    start = time.perf_counter()
    subprocess.run(argv, check=True, capture_output=True, env=env, timeout=1800)
    return time.perf_counter() - start


def first_line(argv: list[str], env: dict[str, str]) -> float:
    return first_line_time(argv, MARKER, env, wait=300)


def med(xs: list[float]) -> str:
    return f"{statistics.median(xs):.3f} s (min {min(xs):.3f}, max {max(xs):.3f})"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--payload", help="a directory to copy into the image as /opt/payload")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="mvmb-", dir="/tmp"))  # podman: runroot < 50 chars
    try:
        store = tmp / "s"
        podman = ["podman", "--root", str(store / "r"), "--runroot", str(store / "rr"),
                  "--storage-driver", "vfs"]  # fmt: skip
        ctx = tmp / "ctx"
        ctx.mkdir()
        shutil.copy("/bin/busybox", ctx / "busybox")
        (ctx / "hello.sh").write_text("#!/bin/busybox sh\necho oci-first-line\n")
        (ctx / "hello.sh").chmod(0o755)
        dockerfile = DOCKERFILE
        if args.payload:
            shutil.copytree(args.payload, ctx / "payload", symlinks=True)
            dockerfile = dockerfile.replace("USER", "COPY payload/ /opt/payload/\nUSER")
        (ctx / "Dockerfile").write_text(dockerfile)
        timed([*podman, "build", "--isolation", "chroot", "-t", "bench-oci", str(ctx)])
        proj = tmp / "proj"
        proj.mkdir()
        timed([*podman, "save", "--format", "oci-archive", "-o", str(proj / "app.tar"),
               "bench-oci"])  # fmt: skip
        (proj / "mvm.toml").write_text('name = "bench-oci"\nimage = "oci-archive:app.tar"\n')
        env = dict(os.environ, MVM_HOME=str(tmp / "home"), MVM_ACCEL="tcg")
        timed([MVMCTL, "build", str(proj)], env)  # warm the kernel cache and page cache

        floor, build, ratios, cached = [], [], [], []
        for i in range(args.runs):
            out = tmp / f"export-{i}.tar"
            t0 = time.perf_counter()
            cid = subprocess.run([*podman, "create", "bench-oci"], check=True,
                                 capture_output=True, text=True).stdout.strip()  # fmt: skip
            subprocess.run([*podman, "export", "-o", str(out), cid], check=True,
                           capture_output=True)  # fmt: skip
            floor.append(time.perf_counter() - t0)
            subprocess.run([*podman, "rm", cid], check=True, capture_output=True)
            out.unlink()
            build.append(timed([MVMCTL, "build", "--force", str(proj)], env))
            ratios.append(build[-1] / floor[-1])
            cached.append(timed([MVMCTL, "build", str(proj)], env))

        cold_run, warm_run = [], []
        for i in range(args.runs):
            fresh = dict(env, MVM_HOME=str(tmp / f"home-{i}"))
            cold_run.append(first_line([MVMCTL, "run", "--attached", "--name", f"c{i}",
                                        str(proj)], fresh))  # fmt: skip
            warm_run.append(first_line([MVMCTL, "run", "--attached", "--name", f"w{i}",
                                        str(proj)], env))  # fmt: skip
            subprocess.run([MVMCTL, "down", f"c{i}"], env=fresh, capture_output=True)
            subprocess.run([MVMCTL, "down", f"w{i}"], env=env, capture_output=True)

        what = f"busybox + a script{' + ' + args.payload if args.payload else ''}"
        print(f"runs: {args.runs} (one image: {what}; oci-archive "
              f"{(proj / 'app.tar').stat().st_size >> 10} KiB)")  # fmt: skip
        print(f"floor  podman create + export      {med(floor)}")
        print(f"mvm    build --force (cold)        {med(build)}")
        print(f"ratio  cold build / floor (paired) {statistics.median(ratios):.2f}x "
              f"(min {min(ratios):.2f}, max {max(ratios):.2f})")  # fmt: skip
        print(f"mvm    build (cached, no-op)       {med(cached)}")
        print(f"mvm    run: first line, cold       {med(cold_run)}")
        print(f"mvm    run: first line, cached     {med(warm_run)}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
