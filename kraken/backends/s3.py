"""
The S3 backend: objects in a bucket of any S3-compatible service (AWS, MinIO, Ceph, moto).

Every boto3 call (building the client included, since that reads model files and credential
files) runs through the :class:`~kraken.io.runner.BlockingRunner` given to the backend,
never on the reactor thread.

Keys
    A name maps to ``<root_directory>/<name>`` (``identity`` in Go Kraken's terms):
    ``root/<hex>`` for a blob, ``root/library/alpine:3.19`` for a tag.  Names are validated by
    :mod:`kraken.backends.names` first, so a key never holds ``..``, an empty segment, a
    backslash or a leading ``/``, and ``root_directory`` is checked the same way.  Because the
    key is the name behind a fixed prefix, :meth:`S3Backend.list` is one ``ListObjectsV2``
    call per page with ``Prefix = root/<prefix>``, in S3's (byte) order.

Transfers
    Uploads use boto3's managed transfer (``upload_file``/``upload_fileobj``): one
    ``PutObject`` below ``part_size``, a multipart upload of ``part_size`` parts with
    ``concurrency`` threads above it.  S3 makes an object visible only when its upload
    completes, so readers never see a torn object.  Downloads read the ``GetObject`` body in
    ``chunk_size`` reads, each in the runner, and hand every chunk to the consumer on the
    reactor thread; while the consumer is paused nothing is read (the connection waits), so
    memory stays at one chunk whatever the object's size.

Credentials
    ``access_key_id``/``secret_access_key``/``session_token`` when configured, else boto3's
    usual chain (environment, shared credentials file, instance metadata...).
"""

from __future__ import annotations

import io
import os
import threading
from collections.abc import Callable, Mapping
from typing import Any, BinaryIO, ClassVar, cast

from attrs import define, field, frozen
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.interfaces import IConsumer
from twisted.logger import Logger
from zope.interface import implementer

from kraken.backends.config import BackendContext
from kraken.backends.interface import (
    DEFAULT_LIST_LIMIT,
    BlobInfo,
    BlobNotFound,
    IBackend,
    InvalidName,
    ListResult,
    UploadSource,
)
from kraken.backends.names import (
    check_list_arguments,
    check_namespace,
    parse_name,
)
from kraken.backends.streams import DEFAULT_CHUNK_SIZE, FileSender
from kraken.config.backends import (
    DEFAULT_S3_CONCURRENCY,
    DEFAULT_S3_PART_SIZE,
    MIN_S3_PART_SIZE,
    S3Options,
)
from kraken.core.names import is_segment
from kraken.io.runner import BlockingRunner

#: Size of each part of a multipart upload, and the size above which uploads are multipart.
DEFAULT_PART_SIZE = DEFAULT_S3_PART_SIZE

#: S3 refuses parts smaller than this (except the last one).
MIN_PART_SIZE = MIN_S3_PART_SIZE

#: Threads one multipart upload uses.
DEFAULT_CONCURRENCY = DEFAULT_S3_CONCURRENCY

#: Longest continuation token accepted from a caller (S3's own are far shorter).
MAX_TOKEN_LENGTH = 1024

#: Error codes by which S3 (and look-alikes) say "no such object".
_NOT_FOUND_CODES = frozenset({"NoSuchKey", "NotFound", "404"})


def _root_directory(value: str) -> str:
    root = value.strip("/")
    if root and not all(is_segment(s) for s in root.split("/")):
        raise ValueError(
            f"invalid root_directory {value!r}: expected '/'-separated segments of "
            "[A-Za-z0-9][A-Za-z0-9._-]*"
        )
    return root


def _part_size(_instance: object, _attribute: object, value: int) -> None:
    if value < MIN_PART_SIZE:
        raise ValueError(f"part_size must be >= {MIN_PART_SIZE} (S3's minimum), got {value}")


def _positive(_instance: object, attribute: Any, value: int) -> None:
    if value < 1:
        raise ValueError(f"{attribute.name} must be >= 1, got {value}")


def is_not_found(error: BaseException) -> bool:
    """Whether a botocore error says the object (or, for HEAD, anything) does not exist."""
    response = getattr(error, "response", None)
    if not isinstance(response, Mapping):
        return False
    code = str(response.get("Error", {}).get("Code", ""))
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return code in _NOT_FOUND_CODES or (status == 404 and code != "NoSuchBucket")


@implementer(IBackend)
@define
class S3Backend:
    """An :class:`IBackend` over one S3 bucket; every boto3 call runs through ``run``."""

    bucket: str
    """The bucket, which must exist."""

    run: BlockingRunner
    """Where boto3 calls run (a thread pool; they block on the network)."""

    client_factory: Callable[[], Any]
    """Makes the boto3 S3 client; called once, in ``run``, on first use."""

    root_directory: str = field(default="", converter=_root_directory)
    """Key prefix of every object (without leading or trailing ``/``; ``""`` for none)."""

    part_size: int = field(default=DEFAULT_PART_SIZE, validator=_part_size)
    """Part size of multipart uploads, and the threshold above which they are used."""

    concurrency: int = field(default=DEFAULT_CONCURRENCY, validator=_positive)
    """Threads used by one multipart upload."""

    chunk_size: int = field(default=DEFAULT_CHUNK_SIZE, validator=_positive)
    """Bytes per read of a download body (and per write into the consumer)."""

    log: ClassVar[Logger] = Logger()

    _client: Any = field(default=None, init=False, repr=False)
    _client_lock: threading.Lock = field(factory=threading.Lock, init=False, repr=False)

    def key_of(self, name: str) -> str:
        """The S3 key that holds ``name`` (raises :class:`InvalidName`)."""
        return self._key(str(parse_name(name)))

    def _key(self, relative: str) -> str:
        return f"{self.root_directory}/{relative}" if self.root_directory else relative

    def _s3(self) -> Any:
        """The boto3 client, made on first use (call in ``run`` only: it may block)."""
        with self._client_lock:
            if self._client is None:
                self._client = self.client_factory()
            return self._client

    def _locate(self, namespace: str, name: str) -> str:
        check_namespace(namespace)
        return self.key_of(name)

    def stat(self, namespace: str, name: str) -> Deferred[BlobInfo]:
        """See :meth:`IBackend.stat` (a ``HeadObject``)."""
        return ensureDeferred(self._stat(namespace, name))

    async def _stat(self, namespace: str, name: str) -> BlobInfo:
        key = self._locate(namespace, name)
        return await self.run(self._head, namespace, name, key)

    def _head(self, namespace: str, name: str, key: str) -> BlobInfo:
        try:
            response = self._s3().head_object(Bucket=self.bucket, Key=key)
        except Exception as e:
            if is_not_found(e):
                raise BlobNotFound(namespace, name) from None
            raise
        return BlobInfo(int(response["ContentLength"]))

    def upload(self, namespace: str, name: str, source: UploadSource) -> Deferred[None]:
        """See :meth:`IBackend.upload` (managed transfer: multipart above ``part_size``)."""
        return ensureDeferred(self._upload(namespace, name, source))

    async def _upload(self, namespace: str, name: str, source: UploadSource) -> None:
        key = self._locate(namespace, name)
        if not isinstance(source, bytes | str | os.PathLike):
            raise TypeError(f"upload source must be bytes or a file path, got {type(source)!r}")
        await self.run(self._put, key, source)
        self.log.debug(
            "stored {name} ({namespace}) at {key}", name=name, namespace=namespace, key=key
        )

    def _transfer_config(self) -> Any:
        from boto3.s3.transfer import TransferConfig

        return TransferConfig(
            multipart_threshold=self.part_size,
            multipart_chunksize=self.part_size,
            max_concurrency=self.concurrency,
            use_threads=self.concurrency > 1,
        )

    def _put(self, key: str, source: UploadSource) -> None:
        s3 = self._s3()
        config = self._transfer_config()
        if isinstance(source, bytes):
            s3.upload_fileobj(io.BytesIO(source), self.bucket, key, Config=config)
            return
        # Open it here: a missing file is then an OSError before any request is made.
        with open(source, "rb") as f:
            s3.upload_fileobj(f, self.bucket, key, Config=config)

    def delete(self, namespace: str, name: str) -> Deferred[None]:
        """See :meth:`IBackend.delete` (``HeadObject``, since S3 deletes a missing key
        without complaint, then ``DeleteObject``)."""
        return ensureDeferred(self._delete(namespace, name))

    async def _delete(self, namespace: str, name: str) -> None:
        key = self._locate(namespace, name)
        await self.run(self._head, namespace, name, key)
        await self.run(self._remove, key)
        self.log.debug(
            "deleted {name} ({namespace}) at {key}", name=name, namespace=namespace, key=key
        )

    def _remove(self, key: str) -> None:
        self._s3().delete_object(Bucket=self.bucket, Key=key)

    def download(self, namespace: str, name: str, consumer: IConsumer) -> Deferred[int]:
        """See :meth:`IBackend.download` (a ``GetObject`` read chunk by chunk in ``run``)."""
        return ensureDeferred(self._download(namespace, name, consumer))

    async def _download(self, namespace: str, name: str, consumer: IConsumer) -> int:
        key = self._locate(namespace, name)
        body = await self.run(self._get, namespace, name, key)
        try:
            return await FileSender(cast(BinaryIO, body), self.run, self.chunk_size).send(consumer)
        finally:
            await self.run(body.close)

    def _get(self, namespace: str, name: str, key: str) -> Any:
        try:
            response = self._s3().get_object(Bucket=self.bucket, Key=key)
        except Exception as e:
            if is_not_found(e):
                raise BlobNotFound(namespace, name) from None
            raise
        return response["Body"]

    def list(
        self,
        prefix: str,
        limit: int = DEFAULT_LIST_LIMIT,
        continuation_token: str | None = None,
    ) -> Deferred[ListResult]:
        """See :meth:`IBackend.list`: one ``ListObjectsV2`` page; the token is S3's own."""
        return ensureDeferred(self._list(prefix, limit, continuation_token))

    async def _list(self, prefix: str, limit: int, token: str | None) -> ListResult:
        check_list_arguments(prefix, limit)
        if token is not None and (
            not isinstance(token, str) or not token or len(token) > MAX_TOKEN_LENGTH
        ):
            raise InvalidName(f"invalid continuation token {token!r}")
        return await self.run(self._list_page, prefix, limit, token)

    def _list_page(self, prefix: str, limit: int, token: str | None) -> ListResult:
        start = self._key("")
        arguments: dict[str, Any] = {
            "Bucket": self.bucket,
            "Prefix": start + prefix,
            "MaxKeys": limit,
        }
        if token is not None:
            arguments["ContinuationToken"] = token
        response = self._s3().list_objects_v2(**arguments)
        names = []
        for item in response.get("Contents", ()):
            relative = str(item["Key"])[len(start) :]
            try:
                parse_name(relative)
            except InvalidName:
                continue  # not ours (someone else's object under the same root)
            names.append(relative)
        more = bool(response.get("IsTruncated")) and response.get("NextContinuationToken")
        return ListResult(tuple(names), str(response["NextContinuationToken"]) if more else None)

    def close(self) -> Deferred[None]:
        """Close the client's connections (if it was ever made)."""
        return self.run(self._close)

    def _close(self) -> None:
        with self._client_lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()


@frozen
class S3Credentials:
    """Static credentials; without them boto3's default chain is used."""

    access_key_id: str
    secret_access_key: str = field(repr=False)
    session_token: str | None = field(default=None, repr=False)


def s3_client_factory(
    *,
    region: str | None = None,
    endpoint_url: str | None = None,
    force_path_style: bool = False,
    credentials: S3Credentials | None = None,
    max_connections: int = DEFAULT_CONCURRENCY,
    max_attempts: int = 3,
) -> Callable[[], Any]:
    """A function that makes a boto3 S3 client with these settings (call it off the reactor)."""

    def make() -> Any:
        import boto3.session
        from botocore.config import Config

        session = boto3.session.Session(
            aws_access_key_id=credentials.access_key_id if credentials else None,
            aws_secret_access_key=credentials.secret_access_key if credentials else None,
            aws_session_token=credentials.session_token if credentials else None,
            region_name=region,
        )
        return session.client(
            "s3",
            endpoint_url=endpoint_url,
            config=Config(
                s3={"addressing_style": "path" if force_path_style else "auto"},
                max_pool_connections=max(max_connections, 10),
                retries={"max_attempts": max_attempts, "mode": "standard"},
            ),
        )

    return make


def build_s3_backend(options: S3Options, context: BackendContext) -> IBackend:
    """An :class:`S3Backend` for the checked ``s3`` options; boto3 runs in the context's runner."""
    credentials = (
        S3Credentials(options.access_key_id, options.secret_access_key, options.session_token)
        if options.access_key_id is not None and options.secret_access_key is not None
        else None
    )
    return S3Backend(
        options.bucket,
        context.run,
        s3_client_factory(
            region=options.region,
            endpoint_url=options.endpoint_url,
            force_path_style=options.force_path_style,
            credentials=credentials,
            max_connections=options.concurrency,
        ),
        root_directory=options.root_directory,
        part_size=options.part_size,
        concurrency=options.concurrency,
    )
