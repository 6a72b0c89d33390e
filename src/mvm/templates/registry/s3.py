"""An S3-compatible registry through boto3 (AWS, MinIO, moto, Ceph…).

Large artefacts go up as concurrent multipart uploads (``TransferConfig``)
with the sha256 stored as object metadata, so a later push can tell "already
there" from "half there" with one HEAD.  Every botocore/boto3 exception is
translated into ``RegistryError`` in :meth:`S3Registry._errors` — the one
seam — with a message that names the endpoint and bucket and says what to
fix, and never a credential (messages pass through :meth:`_redact` as a
second line of defence).  Creating the client is inside the seam too, so a
bad region or another botocore configuration error is a one-line
``ConfigError``.

Reads are capped: ``get_bytes`` reads at most ``max_bytes + 1`` bytes of the
body, and ``download`` checks the HEAD size first and then counts the bytes
the transfer manager hands to its progress callback, aborting the transfer
once more than ``max_bytes`` have arrived (a server may lie in HEAD).
"""

from __future__ import annotations

import contextlib
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mvm.errors import ConfigError, RegistryError
from mvm.log import get_logger
from mvm.templates.registry.base import (
    ENV,
    SMALL_OBJECT_MAX,
    Callback,
    ObjectInfo,
    Registry,
    check_key,
    too_large,
)

if TYPE_CHECKING:
    from mypy_boto3_s3.client import S3Client

log = get_logger(__name__)

MiB = 1 << 20
CREDENTIAL_CODES = {
    "InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken",
    "InvalidSecurity", "AuthorizationHeaderMalformed", "InvalidClientTokenId",
}  # fmt: skip
MISSING_CODES = {"NoSuchKey", "404", "NotFound"}
# botocore's own rule for region names; checked first for a message naming the variable
REGION_RE = re.compile(r"[a-zA-Z0-9](?:[a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?")


@dataclass(frozen=True)
class S3Config:
    """Where the registry is; the credentials are excluded from ``repr``."""

    endpoint: str
    bucket: str
    access_key_id: str = field(repr=False)
    secret_access_key: str = field(repr=False)
    region: str = "us-east-1"
    prefix: str = ""
    multipart_threshold: int = 8 * MiB
    multipart_chunksize: int = 8 * MiB
    max_concurrency: int = 10
    connect_timeout: float = 5.0
    read_timeout: float = 60.0
    max_attempts: int = 3


class _Missing(Exception):
    """Internal: the object does not exist (callers turn it into ``None``)."""


class _TooLarge(Exception):
    """Internal: raised from the progress callback to abort an oversized download."""


class _Capped:
    """A progress callback that aborts the transfer past ``limit`` bytes.

    s3transfer reports negative amounts when it retries a part; they are
    subtracted, so a retried part is not counted twice.
    """

    def __init__(self, progress: Callback, limit: int):
        self.progress, self.limit, self.seen = progress, limit, 0
        self._lock = threading.Lock()  # called from the transfer's worker threads

    def __call__(self, n: int) -> None:
        with self._lock:
            self.seen += n
            over = self.seen > self.limit
        if over:
            raise _TooLarge()
        self.progress(n)


class S3Registry(Registry):
    def __init__(self, cfg: S3Config):
        import boto3
        from boto3.s3.transfer import TransferConfig
        from botocore.config import Config

        if not re.fullmatch(r"https?://[^/\s]+(/\S*)?", cfg.endpoint):
            raise ConfigError(
                f"invalid {ENV}_ENDPOINT {cfg.endpoint!r}: use a URL such as https://s3.amazonaws.com"
            )
        if not REGION_RE.fullmatch(cfg.region):
            raise ConfigError(
                f"invalid {ENV}_REGION {cfg.region!r}: use a region name such as us-east-1"
            )
        self.cfg = cfg
        where = f"s3://{cfg.bucket}/{cfg.prefix + '/' if cfg.prefix else ''}"
        self.description = f"{where} at {cfg.endpoint}"
        with self._config_errors():
            self._client = self._make_client(boto3.session.Session(), Config)
        self._transfer = TransferConfig(
            multipart_threshold=cfg.multipart_threshold,
            multipart_chunksize=cfg.multipart_chunksize,
            max_concurrency=cfg.max_concurrency,
            use_threads=True,
        )

    @contextlib.contextmanager
    def _config_errors(self) -> Iterator[None]:
        """botocore refuses a setting (region, endpoint…) while making the client."""
        from botocore.exceptions import BotoCoreError

        try:
            yield
        except (BotoCoreError, ValueError) as exc:
            raise ConfigError(
                self._redact(f"invalid S3 registry configuration ({ENV}_*): {exc}")
            ) from exc

    def _make_client(self, session: Any, config: Any) -> S3Client:
        cfg = self.cfg
        client: S3Client = session.client(
            "s3",
            endpoint_url=cfg.endpoint,
            region_name=cfg.region,
            aws_access_key_id=cfg.access_key_id,
            aws_secret_access_key=cfg.secret_access_key,
            config=config(
                signature_version="s3v4",
                s3={"addressing_style": "path"},
                retries={"max_attempts": cfg.max_attempts, "mode": "standard"},
                connect_timeout=cfg.connect_timeout,
                read_timeout=cfg.read_timeout,
                max_pool_connections=max(10, cfg.max_concurrency),
            ),
        )
        return client

    def _key(self, key: str) -> str:
        check_key(key)
        return f"{self.cfg.prefix}/{key}" if self.cfg.prefix else key

    def _redact(self, text: str) -> str:
        """One line, without either key (too-short keys would mangle every word)."""
        text = " ".join(text.split())
        for secret in (self.cfg.secret_access_key, self.cfg.access_key_id):
            if len(secret) >= 6:
                text = text.replace(secret, "***")
        return text

    @contextlib.contextmanager
    def _errors(self, action: str, key: str) -> Iterator[None]:
        """The one seam: botocore/boto3/OS errors → ``RegistryError`` (or ``_Missing``)."""
        from boto3.exceptions import RetriesExceededError, S3UploadFailedError
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            yield
        except (S3UploadFailedError, RetriesExceededError) as exc:
            inner = getattr(exc, "last_exception", None) or exc.__context__
            if isinstance(inner, (ClientError, BotoCoreError)):
                raise self._translate(inner, action, key) from exc
            raise RegistryError(
                self._redact(f"registry {self.description}: {action} {key} failed: {exc}")
            ) from exc
        except (ClientError, BotoCoreError) as exc:
            raise self._translate(exc, action, key) from exc
        except OSError as exc:
            raise RegistryError(
                f"registry {self.description}: {action} {key}: {exc.strerror or exc}"
            ) from exc

    def _translate(self, exc: Exception, action: str, key: str) -> Exception:
        from botocore.exceptions import (
            ClientError,
            ConnectionError,
            HTTPClientError,
            NoCredentialsError,
            ParamValidationError,
        )

        cfg = self.cfg
        if isinstance(exc, ClientError):
            err = exc.response.get("Error", {})
            code = str(err.get("Code", "")) or "unknown"
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code == "NoSuchBucket":
                return RegistryError(
                    f"bucket {cfg.bucket!r} does not exist at {cfg.endpoint}",
                    hint=f"create it, or fix {ENV}_BUCKET",
                )
            if code in MISSING_CODES:
                return _Missing(key)
            if code in CREDENTIAL_CODES:
                return RegistryError(
                    f"registry {cfg.endpoint} rejected the credentials ({code})",
                    hint=f"check {ENV}_ACCESS_KEY_ID and {ENV}_SECRET_ACCESS_KEY",
                )
            if code in ("AccessDenied", "403", "Forbidden") or status == 403:
                return RegistryError(
                    f"registry {cfg.endpoint} denied {action} {key} "
                    f"in bucket {cfg.bucket!r} ({code})",
                    hint="check the credentials and the bucket policy",
                )
            message = self._redact(str(err.get("Message", "")))
            return RegistryError(
                f"registry {self.description}: {action} {key} failed: {code}"
                + (f": {message}" if message else "")
            )
        if isinstance(exc, NoCredentialsError):
            return RegistryError(f"no credentials for registry {cfg.endpoint}")
        if isinstance(exc, ParamValidationError):
            report = str(exc.kwargs.get("report", exc)).strip().splitlines()[0].split(": ")[0]
            return ConfigError(self._redact(f"invalid registry setting: {report}"))
        if isinstance(exc, (ConnectionError, HTTPClientError)):
            return RegistryError(
                f"registry {cfg.endpoint} unreachable or connection lost while {action} {key} "
                f"({type(exc).__name__})",
                hint=f"is the server up? check {ENV}_ENDPOINT",
            )
        return RegistryError(
            self._redact(f"registry {self.description}: {action} {key} failed: {exc}")
        )

    def get_bytes(self, key: str, max_bytes: int = SMALL_OBJECT_MAX) -> bytes | None:
        try:
            with self._errors("reading", key):
                resp = self._client.get_object(Bucket=self.cfg.bucket, Key=self._key(key))
                body = resp["Body"]
                try:
                    if int(resp.get("ContentLength", 0)) > max_bytes:
                        raise too_large(self, key, max_bytes)
                    data: bytes = body.read(max_bytes + 1)
                finally:
                    body.close()
        except _Missing:
            return None
        if len(data) > max_bytes:
            raise too_large(self, key, max_bytes)
        return data

    def put_bytes(self, key: str, data: bytes) -> None:
        with self._errors("writing", key):
            self._client.put_object(Bucket=self.cfg.bucket, Key=self._key(key), Body=data)

    def stat(self, key: str) -> ObjectInfo | None:
        try:
            with self._errors("checking", key):
                head = self._client.head_object(Bucket=self.cfg.bucket, Key=self._key(key))
        except _Missing:
            return None
        return ObjectInfo(int(head["ContentLength"]), head.get("Metadata", {}).get("sha256"))

    def upload(self, key: str, src: Path, sha256: str, progress: Callback) -> None:
        extra: dict[str, Any] = {"Metadata": {"sha256": sha256}}
        with self._errors("uploading", key):
            self._client.upload_file(
                str(src), self.cfg.bucket, self._key(key),
                ExtraArgs=extra, Callback=progress, Config=self._transfer,
            )  # fmt: skip

    def download(self, key: str, dest: Path, progress: Callback, *, max_bytes: int) -> None:
        info = self.stat(key)
        if info is None:
            raise RegistryError(f"registry {self.description}: {key} is missing")
        if info.size > max_bytes:
            raise too_large(self, key, max_bytes)
        try:
            with self._errors("downloading", key):
                self._client.download_file(
                    self.cfg.bucket, self._key(key), str(dest),
                    Callback=_Capped(progress, max_bytes), Config=self._transfer,
                )  # fmt: skip
        except _Missing:
            raise RegistryError(f"registry {self.description}: {key} is missing") from None
        except _TooLarge:
            dest.unlink(missing_ok=True)
            raise too_large(self, key, max_bytes) from None

    def list_dirs(self, key: str) -> list[str]:
        prefix = self._key(key).rstrip("/") + "/"
        out: list[str] = []
        with self._errors("listing", key):
            pages = self._client.get_paginator("list_objects_v2").paginate(
                Bucket=self.cfg.bucket, Prefix=prefix, Delimiter="/"
            )
            for page in pages:
                for cp in page.get("CommonPrefixes", []):
                    out.append(cp["Prefix"][len(prefix) :].rstrip("/"))
        return sorted(out)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._client.close()
