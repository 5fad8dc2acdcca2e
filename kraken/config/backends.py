"""
The options of each backend kind, parsed like every other setting.

A ``backends:`` entry names exactly one backend and its options
(``backend: {fs: {root: /x}}``).  :class:`BackendChoice` has one optional section
per kind, so the options go through the same structurer as the rest of the file:
an unknown key, a wrong type or a bad combination is a
:class:`~kraken.config.ConfigError` line with its key path from the daemon's name
(``origin.backends[0].backend.fs.rooot: unknown key (did you mean "root"?)``) when
the configuration is loaded, before anything starts.  :mod:`kraken.backends.config`
builds backends from these values.
"""

# ruff: noqa: RUF009
# setting() is an attrs field specifier; RUF009 cannot tell it from an ordinary call.

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import Annotated, Any, ClassVar, Final

from attrs import fields, frozen

from kraken.config.structure import setting, unstructure
from kraken.config.values import (
    Duration,
    InvalidValue,
    Path,
    PositiveInt,
    Size,
    ValueKind,
    describe,
)
from kraken.core.names import is_segment

__all__ = [
    "BACKEND_KINDS",
    "DEFAULT_FS_ROOT",
    "DEFAULT_HTTP_DOWNLOAD_TIMEOUT",
    "DEFAULT_REGISTRY_TIMEOUT",
    "DEFAULT_S3_CONCURRENCY",
    "DEFAULT_S3_PART_SIZE",
    "MIN_S3_PART_SIZE",
    "BackendChoice",
    "FilesystemOptions",
    "HTTPOptions",
    "NoopOptions",
    "RegistryOptions",
    "S3Options",
]

#: The root of an ``fs`` backend given without one (the single-host layout's).
DEFAULT_FS_ROOT: Final = "./kraken-data/backend"
#: Bytes: S3's smallest part of a multipart upload.
MIN_S3_PART_SIZE: Final = 5 * 1024 * 1024
#: Bytes per part of an S3 multipart upload, and the size from which uploads are multipart.
DEFAULT_S3_PART_SIZE: Final = 64 * 1024 * 1024
#: Parts sent to S3 at once.
DEFAULT_S3_CONCURRENCY: Final = 10
#: Seconds for each request to an upstream registry.
DEFAULT_REGISTRY_TIMEOUT: Final = 60.0
#: Seconds for an http backend's download to start answering.
DEFAULT_HTTP_DOWNLOAD_TIMEOUT: Final = 180.0

Problems = Iterator[tuple[str | tuple[object, ...], str]]


def _parse_text(value: object) -> str:
    if not isinstance(value, str) or not value:
        raise InvalidValue(f"expected a non-empty string, got {describe(value)}")
    return value


#: A string that must not be empty (bucket names, addresses, credentials).
Text = Annotated[str, ValueKind("string", _parse_text, str)]


#: The name placeholder of an http backend's ``download_url``.
URL_PLACEHOLDER: Final = re.compile(r"\{name\}|%s")


def check_url_template(template: str) -> str:
    """Return ``template`` if it is an http(s) URL with one name placeholder, else ValueError."""
    if not template.startswith(("http://", "https://")):
        raise ValueError(f"download_url {template!r} must start with http:// or https://")
    if len(URL_PLACEHOLDER.findall(template)) != 1:
        raise ValueError(f"download_url {template!r} needs exactly one '{{name}}' or '%s'")
    return template


@frozen(kw_only=True)
class FilesystemOptions:
    """``fs``: blobs and tags as files under a directory."""

    root: Path = setting(
        DEFAULT_FS_ROOT,
        doc="Directory of the backend; relative paths are relative to the working directory.",
    )


@frozen(kw_only=True)
class NoopOptions:
    """``noop``: stores nothing, has nothing (for namespaces that need no backend)."""


@frozen(kw_only=True)
class S3Options:
    """``s3``: an S3 bucket (AWS, MinIO, any S3 API)."""

    bucket: Text = setting(doc="The bucket's name.")
    region: Text | None = setting(None, doc="The bucket's region; null: boto3's default.")
    root_directory: str = setting(
        "",
        doc="Key prefix of every object: `/`-separated segments of `[A-Za-z0-9][A-Za-z0-9._-]*`.",
    )
    endpoint_url: Text | None = setting(
        None, doc="e.g. `http://127.0.0.1:9000` for MinIO; null for AWS."
    )
    force_path_style: bool = setting(False, doc="Path-style addressing (MinIO and most others).")
    access_key_id: Text | None = setting(
        None, doc="Static credentials, with `secret_access_key`; null: boto3's default chain."
    )
    secret_access_key: Text | None = setting(None, doc="Goes with `access_key_id`.", secret=True)
    session_token: Text | None = setting(None, doc="For temporary credentials.", secret=True)
    part_size: Size = setting(
        DEFAULT_S3_PART_SIZE,
        doc="Part size of multipart uploads, and the size above which they are used.",
    )
    concurrency: PositiveInt = setting(
        DEFAULT_S3_CONCURRENCY, doc="Parts sent at once; connections to S3."
    )

    def config_problems(self) -> Problems:
        """Credentials come in pairs; a root of valid segments; S3's smallest part."""
        if (self.access_key_id is None) != (self.secret_access_key is None):
            missing = "secret_access_key" if self.secret_access_key is None else "access_key_id"
            yield (missing, "access_key_id and secret_access_key go together")
        root = self.root_directory.strip("/")
        if root and not all(is_segment(s) for s in root.split("/")):
            yield (
                "root_directory",
                f"invalid root_directory {self.root_directory!r}: expected '/'-separated "
                "segments of [A-Za-z0-9][A-Za-z0-9._-]*",
            )
        if self.part_size < MIN_S3_PART_SIZE:
            yield (
                "part_size",
                f"must be at least {MIN_S3_PART_SIZE} bytes (S3's minimum), got {self.part_size}",
            )


@frozen(kw_only=True)
class RegistryOptions:
    """``registry``: a Docker registry v2 to read blobs and tags from (read-only)."""

    address: Text = setting(doc="`host[:port]` (meaning https) or an `http(s)://` URL.")
    username: Text | None = setting(None, doc="Basic auth or token auth, with `password`.")
    password: Text | None = setting(None, doc="Goes with `username`.", secret=True)
    timeout: Duration = setting(
        DEFAULT_REGISTRY_TIMEOUT, doc="Time for each request to the registry."
    )

    def config_problems(self) -> Problems:
        """An http(s) address; username and password together; a timeout above 0."""
        if "://" in self.address and not self.address.startswith(("http://", "https://")):
            yield ("address", f"{self.address!r} must be host[:port] or an http(s) URL")
        if (self.username is None) != (self.password is None):
            yield (
                "password" if self.password is None else "username",
                "username and password go together",
            )
        if self.timeout <= 0:
            yield ("timeout", f"expected seconds > 0, got {self.timeout:g}")


@frozen(kw_only=True)
class HTTPOptions:
    """``http``: blobs read from a URL template (read-only; no tags)."""

    download_url: Text = setting(
        doc="http(s) URL with one `{name}` or `%s` for the blob's name "
        "(and optionally `{namespace}`)."
    )
    download_timeout: Duration = setting(
        DEFAULT_HTTP_DOWNLOAD_TIMEOUT, doc="Time for each download to start answering."
    )

    def config_problems(self) -> Problems:
        """A template the http backend can fill in; a timeout above 0."""
        try:
            check_url_template(self.download_url)
        except ValueError as e:
            yield ("download_url", str(e))
        if self.download_timeout <= 0:
            yield ("download_timeout", f"expected seconds > 0, got {self.download_timeout:g}")


@frozen(kw_only=True)
class BackendChoice:
    """Exactly one backend kind and its options: ``{fs: {root: /x}}``."""

    fs: FilesystemOptions | None = setting(None, doc="Blobs and tags as files in a directory.")
    s3: S3Options | None = setting(None, doc="An S3 bucket (AWS, MinIO, any S3 API).")
    registry: RegistryOptions | None = setting(
        None, doc="A Docker registry v2 to read blobs and tags from (read-only)."
    )
    http: HTTPOptions | None = setting(
        None, doc="Blobs read from a URL template (read-only, no tags)."
    )
    noop: NoopOptions | None = setting(
        None, doc="Stores and has nothing, for namespaces that need no backend (`noop: {}`)."
    )

    #: The options in YAML replace a default's whole.
    config_atomic: ClassVar[bool] = True

    @classmethod
    def config_prepare(cls, raw: Mapping[Any, Any]) -> Mapping[Any, Any]:
        """``noop:`` (or any kind) given with no options means its defaults, not "absent"."""
        return {key: ({} if value is None else value) for key, value in raw.items()}

    def config_problems(self) -> Problems:
        """Exactly one kind."""
        chosen = self.kinds()
        if len(chosen) != 1:
            yield (
                "",
                f"expected exactly one of {', '.join(BACKEND_KINDS)}, got "
                + (", ".join(chosen) or "none"),
            )

    def kinds(self) -> list[str]:
        """The kinds given (one, once the value is valid)."""
        return [kind for kind in BACKEND_KINDS if getattr(self, kind) is not None]

    @property
    def kind(self) -> str:
        """The backend's kind (``fs``, ``s3``...)."""
        return self.kinds()[0]

    @property
    def options(self) -> Any:
        """The options of :attr:`kind`."""
        return getattr(self, self.kind)

    def config_unstructure(self) -> dict[str, Any]:
        """Only the chosen kind, as a user writes it: ``{fs: {root: /x}}``."""
        return {kind: unstructure(getattr(self, kind)) for kind in self.kinds()}


#: Every backend kind, in the order the reference lists them.
BACKEND_KINDS: Final = tuple(f.name for f in fields(BackendChoice))
