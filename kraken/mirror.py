"""
Pointing a node's container runtime at its local Kraken agent.

containerd reads one ``hosts.toml`` per registry from a directory (by default
``/etc/containerd/certs.d``): :func:`containerd_hosts_files` says what to write there, and
:func:`write_containerd_hosts` writes it.  The docker daemon takes mirrors of Docker Hub from
``registry-mirrors`` in ``/etc/docker/daemon.json``: :func:`docker_daemon_config` adds the
agent to that file's existing settings.  Both write atomically (a temporary file renamed over
the old one), so a runtime reading the file never sees half of it.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Iterable, Mapping
from typing import Any, Final

from kraken.config.values import InvalidValue, join_host_port, split_host_port

__all__ = [
    "DEFAULT_AGENT",
    "DEFAULT_CONTAINERD_DIR",
    "DEFAULT_DOCKER_FILE",
    "MirrorError",
    "containerd_hosts_files",
    "docker_daemon_config",
    "hosts_toml",
    "read_docker_daemon_config",
    "registry_server",
    "write_containerd_hosts",
    "write_docker_daemon_config",
]

#: The agent's registry in the single-host defaults (``registry.listen``).
DEFAULT_AGENT: Final = "127.0.0.1:16000"
DEFAULT_CONTAINERD_DIR: Final = "/etc/containerd/certs.d"
DEFAULT_DOCKER_FILE: Final = "/etc/docker/daemon.json"

#: containerd's directory for "every registry without a directory of its own".
_DEFAULT_HOST_DIR: Final = "_default"
#: Names under which images of Docker Hub are written; containerd's directory is ``docker.io``.
_DOCKER_HUB_NAMES: Final = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io"})
_DOCKER_HUB_SERVER: Final = "https://registry-1.docker.io"
#: A registry host as it appears in an image reference: a DNS name or IPv4 address, a port.
_REGISTRY: Final = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?(?::[0-9]{1,5})?")


class MirrorError(ValueError):
    """A mirror set-up that cannot be written; the message names the offending value."""


def _agent_address(agent: str) -> str:
    try:
        host, port = split_host_port(agent)
    except InvalidValue as e:
        raise MirrorError(f"--agent: {e}") from None
    return join_host_port(host, port)


def _registry_name(registry: str) -> str:
    if registry in _DOCKER_HUB_NAMES:
        return "docker.io"
    if not _REGISTRY.fullmatch(registry) or not 0 < int(registry.partition(":")[2] or 1) < 65536:
        raise MirrorError(
            f"--registry: {registry!r} is not a registry host (host or host:port, "
            "as in an image reference)"
        )
    return registry


def registry_server(registry: str) -> str:
    """The upstream URL containerd falls back to when the agent fails for ``registry``."""
    name = _registry_name(registry)
    return _DOCKER_HUB_SERVER if name == "docker.io" else f"https://{name}"


def hosts_toml(agent: str, registry: str | None = None) -> str:
    """
    The ``hosts.toml`` that makes containerd pull and resolve through ``agent``.

    With ``registry`` the file names that registry as ``server`` (containerd's fallback
    when the agent fails); without, it is the ``_default`` file, which falls back to the
    registry named in each image reference.
    """
    lines = []
    if registry is not None:
        lines += [f'server = "{registry_server(registry)}"', ""]
    lines += [f'[host."http://{_agent_address(agent)}"]', '  capabilities = ["pull", "resolve"]']
    return "\n".join(lines) + "\n"


def containerd_hosts_files(agent: str, registries: Iterable[str] = ()) -> dict[str, str]:
    """
    Directory name under ``certs.d`` -> ``hosts.toml`` content.

    No ``registries``: only ``_default`` (every registry).  Otherwise one directory per
    registry (``docker.io`` for Docker Hub), and no ``_default``: other registries are
    pulled as before.
    """
    names = [_registry_name(r) for r in registries]
    if not names:
        return {_DEFAULT_HOST_DIR: hosts_toml(agent)}
    return {name: hosts_toml(agent, name) for name in dict.fromkeys(names)}


def _write_atomically(path: str, text: str) -> None:
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".kraken-", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def write_containerd_hosts(directory: str, agent: str, registries: Iterable[str] = ()) -> list[str]:
    """Write :func:`containerd_hosts_files` under ``directory``; the paths written."""
    written = []
    for name, text in containerd_hosts_files(agent, registries).items():
        path = os.path.join(directory, name, "hosts.toml")
        _write_atomically(path, text)
        written.append(path)
    return written


def docker_daemon_config(existing: Mapping[str, Any] | None, agent: str) -> dict[str, Any]:
    """
    ``existing`` daemon.json settings with ``http://<agent>`` first in ``registry-mirrors``.

    Every other setting, and mirrors already listed, are kept.  Raises
    :class:`MirrorError` when ``registry-mirrors`` is not a list of strings.
    """
    config = dict(existing or {})
    mirror = f"http://{_agent_address(agent)}"
    mirrors = config.get("registry-mirrors", [])
    if not isinstance(mirrors, list) or not all(isinstance(m, str) for m in mirrors):
        raise MirrorError(f'"registry-mirrors" is {mirrors!r}, expected a list of URLs')
    config["registry-mirrors"] = [mirror, *(m for m in mirrors if m.rstrip("/") != mirror)]
    return config


def read_docker_daemon_config(path: str) -> dict[str, Any] | None:
    """The settings in ``path`` (None when there is no such file); bad JSON is a MirrorError."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        return None
    if not text.strip():
        return None
    try:
        data = json.loads(text)
    except ValueError as e:
        raise MirrorError(f"{path}: not JSON ({e}); fix or remove it first") from None
    if not isinstance(data, dict):
        raise MirrorError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def write_docker_daemon_config(path: str, agent: str) -> dict[str, Any]:
    """Add the agent to the mirrors in ``path`` (created if missing); the settings written."""
    config = docker_daemon_config(read_docker_daemon_config(path), agent)
    _write_atomically(path, json.dumps(config, indent=2) + "\n")
    return config
