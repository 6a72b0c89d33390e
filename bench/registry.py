"""Registry benchmark: template push/pull throughput against plain boto3.

Starts a real S3 server (moto in server mode on 127.0.0.1), builds the
examples/hello template once, then, interleaved over ``--runs`` rounds so
machine noise hits both sides alike, times:

* ``mvm push`` of the revision to a fresh prefix (verify, upload, HEAD-verify,
  commit checksums.json, move current) vs a plain ``boto3`` ``upload_file``
  of the same four files;
* ``mvm pull`` into an empty MVM_HOME (download, sha256-verify, atomic
  install) vs a plain ``boto3`` ``download_file`` of the same objects;
* the no-op push and pull (revision unchanged), in-process and as a whole
  ``mvmctl`` command.

Prints medians, MB/s and the mvm/boto3 ratios (goal ≥ 0.8).

Usage: python bench/registry.py [--runs N] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))

from mvm.templates import build as tbuild  # noqa: E402
from mvm.templates import store, sync  # noqa: E402
from mvm.templates.integrity import REVISION_FILES  # noqa: E402
from mvm.templates.registry import from_env  # noqa: E402

BIN = Path(sys.executable).parent
BUCKET = "mvm-bench"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_moto() -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = subprocess.Popen([str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(url + "/moto-api/", timeout=2).read()
            return proc, url
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                raise RuntimeError("moto_server did not start") from None
            time.sleep(0.05)


def timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def mvmctl(*args: str) -> None:
    subprocess.run([str(BIN / "mvmctl"), *args], env=dict(os.environ), check=True,
                   capture_output=True)  # fmt: skip


def one_round(i: int, t: dict[str, list[float]], tmp: Path, files: list[Path], client: Any) -> None:
    """One interleaved round: mvm and plain boto3 on a fresh prefix / fresh home."""
    os.environ["MVM_HOME"] = str(tmp / "home1")
    os.environ["MVM_TEMPLATE_REGISTRY_PREFIX"] = f"run{i}"
    reg = from_env()
    t["mvm_push"].append(timed(lambda: sync.push("hello", reg)))

    def upload() -> None:
        for f in files:
            client.upload_file(str(f), BUCKET, f"plain{i}/{f.name}")

    t["boto3_upload"].append(timed(upload))
    t["noop_push"].append(timed(lambda: sync.push("hello", reg)))
    t["noop_push_cli"].append(timed(lambda: mvmctl("template", "push", "hello")))

    os.environ["MVM_HOME"] = str(tmp / f"home-pull{i}")
    t["mvm_pull"].append(timed(lambda: sync.pull("hello", reg)))
    dl = tmp / f"plain-dl{i}"
    dl.mkdir()

    def download() -> None:
        for f in files:
            client.download_file(BUCKET, f"plain{i}/{f.name}", str(dl / f.name))

    t["boto3_download"].append(timed(download))
    t["noop_pull"].append(timed(lambda: sync.pull("hello", reg)))
    t["noop_pull_cli"].append(timed(lambda: mvmctl("template", "pull", "hello")))
    shutil.rmtree(tmp / f"home-pull{i}")
    shutil.rmtree(dl)
    reg.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--json", action="store_true", help="Print the figures as JSON.")
    args = ap.parse_args()

    import boto3
    from botocore.config import Config

    proc, endpoint = start_moto()
    tmp = Path(tempfile.mkdtemp(prefix="mvm-bench-registry-"))
    try:
        client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                              aws_access_key_id="bench", aws_secret_access_key="bench",
                              config=Config(s3={"addressing_style": "path"}))  # fmt: skip
        client.create_bucket(Bucket=BUCKET)
        env = {
            "MVM_TEMPLATE_REGISTRY_ENDPOINT": endpoint,
            "MVM_TEMPLATE_REGISTRY_BUCKET": BUCKET,
            "MVM_TEMPLATE_REGISTRY_ACCESS_KEY_ID": "bench",
            "MVM_TEMPLATE_REGISTRY_SECRET_ACCESS_KEY": "bench",
        }
        os.environ.update(env, MVM_HOME=str(tmp / "home1"))
        store.create("hello", store.Settings(flake=str(REPO / "examples" / "hello")))
        tbuild.build("hello")
        rev = store.verify("hello")
        files = [rev.path / f for f in REVISION_FILES]
        total = sum(f.stat().st_size for f in files)

        t: dict[str, list[float]] = {k: [] for k in (
            "mvm_push", "boto3_upload", "mvm_pull", "boto3_download",
            "noop_push", "noop_pull", "noop_push_cli", "noop_pull_cli",
        )}  # fmt: skip
        for i in range(args.runs):
            one_round(i, t, tmp, files, client)
    finally:
        proc.kill()
        proc.wait()
        shutil.rmtree(tmp, ignore_errors=True)

    med = {k: statistics.median(v) for k, v in t.items()}
    mbs = {
        k: total / 1e6 / med[k] for k in ("mvm_push", "boto3_upload", "mvm_pull", "boto3_download")
    }
    result = {
        "revision_bytes": total,
        "runs": args.runs,
        "push_mb_s": round(mbs["mvm_push"], 1),
        "boto3_upload_mb_s": round(mbs["boto3_upload"], 1),
        "push_ratio": round(mbs["mvm_push"] / mbs["boto3_upload"], 2),
        "pull_mb_s": round(mbs["mvm_pull"], 1),
        "boto3_download_mb_s": round(mbs["boto3_download"], 1),
        "pull_ratio": round(mbs["mvm_pull"] / mbs["boto3_download"], 2),
        "noop_push_s": round(med["noop_push"], 3),
        "noop_pull_s": round(med["noop_pull"], 3),
        "noop_push_cli_s": round(med["noop_push_cli"], 3),
        "noop_pull_cli_s": round(med["noop_pull_cli"], 3),
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"revision: {total / 1e6:.1f} MB (4 files), moto server on 127.0.0.1, "
          f"median of {args.runs} interleaved runs")  # fmt: skip
    print(
        f"push    mvm {result['push_mb_s']:7.1f} MB/s   boto3 upload_file   "
        f"{result['boto3_upload_mb_s']:7.1f} MB/s   ratio {result['push_ratio']:.2f} (goal ≥ 0.8)"
    )
    print(
        f"pull    mvm {result['pull_mb_s']:7.1f} MB/s   boto3 download_file "
        f"{result['boto3_download_mb_s']:7.1f} MB/s   ratio {result['pull_ratio']:.2f} (goal ≥ 0.8)"
    )
    print(f"no-op   push {result['noop_push_s'] * 1000:.0f} ms, "
          f"pull {result['noop_pull_s'] * 1000:.0f} ms (in-process); "
          f"mvmctl push {result['noop_push_cli_s']:.2f} s, "
          f"pull {result['noop_pull_cli_s']:.2f} s (whole command)")  # fmt: skip


if __name__ == "__main__":
    main()
