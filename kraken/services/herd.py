"""
The herd: every daemon in one process (``twistd -n kraken-herd``, ``kraken herd``).

Runs a tracker, an origin, a build-index, a proxy and an agent in one reactor, each the very
``MultiService`` tree its own plugin builds (:func:`~kraken.services.tracker.build_tracker`,
:func:`~kraken.services.origin.build_origin`, ...), on the default ports of DESIGN 11 on
127.0.0.1, with the filesystem backend under ``./kraken-data`` (``--data DIR`` moves it).

``--origins N`` runs N origins in one ring (origin ``i`` on ports ``15001 + 10 i`` (peer) and
``15002 + 10 i`` (HTTP)); ``--agents N`` adds N agents after the first, agent ``i`` on
``16000 + 1000 i`` (registry), ``+1`` (peer), ``+2`` (server): 17000/17001/17002,
18000/18001/18002, ...  ``--base-port`` and ``--agent-base-port`` move the two blocks (tests).

The herd writes a *plan*: for each member, its listen addresses and the addresses of the
members it calls.  A ``--config`` file (a ``herd`` configuration, docs/configuration.md) is
merged over the plan, member by member, so it can change anything; extra origins and agents
take their member section too, but keep the plan's listen addresses so that they do not
collide.  Member data directories are ``<data>/<daemon>`` (``<data>/agent-1``, ...).

``--tls`` makes, on first start, a development CA and the certificates of every member and of
``client`` in ``<data>/tls`` (:func:`kraken.certs.ensure_certificates`), gives every member a
``tls:`` section (agents and origins with ``peer: true``: mutual TLS on the peer ports), and
copies the CA and ``client``'s pair into ``<data>/tls/skopeo`` as ``ca.crt``, ``client.cert``
and ``client.key``, the directory ``skopeo copy --dest-cert-dir`` takes to verify the proxy and
present a client certificate (docs/security.md).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final

import yaml
from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.interfaces import IReactorCore
from twisted.logger import Logger
from twisted.python import usage

from kraken.certs import CA_CERT_FILE, cert_paths, ensure_certificates, export_cert_dir
from kraken.config import load_config
from kraken.config.loader import parse_config
from kraken.config.structure import ConfigError
from kraken.io.reactor import daemon_reactor
from kraken.logs import LOG_LEVEL_HELP, apply_log_level
from kraken.services.parts import lead_with_error, stop_and_exit
from kraken.tls import check_tls_files

if TYPE_CHECKING:
    from kraken.embed import DaemonKind, EmbeddedDaemon

__all__ = [
    "HERD_CERTIFICATES",
    "SKOPEO_CERT_DIR",
    "HerdPlan",
    "HerdService",
    "Options",
    "build_herd",
    "herd_plan",
    "makeService",
]

LOCALHOST: Final = "127.0.0.1"
BASE_PORT: Final = 15000
AGENT_BASE_PORT: Final = 16000
#: Port distance between consecutive origins (within the base block) and agents.
ORIGIN_STRIDE: Final = 10
AGENT_STRIDE: Final = 1000


class Options(usage.Options):
    """Command line of ``twistd kraken-herd``."""

    optParameters = [
        ["config", "c", None, "YAML herd configuration, merged over the herd's plan."],
        ["data", "d", None, "Parent of the members' data directories (default ./kraken-data)."],
        ["agents", None, 0, "Extra agents after the first (17000/17001/17002, ...).", int],
        ["origins", None, 1, "Origins in the ring (15001/15002, 15011/15012, ...).", int],
        ["base-port", None, BASE_PORT, "Proxy port; origins, tracker, build-index follow.", int],
        ["agent-base-port", None, AGENT_BASE_PORT, "First agent's registry port.", int],
        ["log-level", None, None, LOG_LEVEL_HELP],
    ]
    optFlags = [
        ["tls", None, "Mutual TLS between the components; CA and certificates in <data>/tls."],
    ]

    def postOptions(self) -> None:
        """Check the counts and the configuration now, so that twistd stops with a message."""
        try:
            self._check()
        except usage.UsageError as e:
            lead_with_error(self, e)
            raise

    def _check(self) -> None:
        apply_log_level(self, self["log-level"])
        if self["origins"] < 1 or self["agents"] < 0:
            raise usage.UsageError("--origins must be >= 1 and --agents >= 0")
        try:
            self["herd_plan"] = herd_plan(
                user=_read_yaml(self["config"]),
                data=self["data"],
                origins=self["origins"],
                agents=1 + self["agents"],
                base_port=self["base-port"],
                agent_base_port=self["agent-base-port"],
                tls=bool(self["tls"]),
            )
        except ConfigError as e:
            raise usage.UsageError(str(e)) from None
        except (OSError, ValueError) as e:  # --tls: <data>/tls cannot be made or read
            raise usage.UsageError(f"--tls: {e}") from None
        for kind, name, config in self["herd_plan"].members:  # a bad file: one line naming it
            check_tls_files(config.tls, serve=kind != "agent", section=f"{name}.tls")


def _read_yaml(path: str | None) -> dict[str, Any]:
    """The raw mapping of a herd configuration file (checked as a whole by :func:`herd_plan`)."""
    if path is None:
        return {}
    load_config("herd", path)  # every error, with key paths and the file name
    with open(path) as f:  # start-up only
        raw = yaml.safe_load(f) or {}
    return dict(raw)


def _merge(plan: Mapping[str, Any], user: Mapping[str, Any]) -> dict[str, Any]:
    """``user`` over ``plan``: sections merge, values (and host lists, lists) replace."""
    merged = dict(plan)
    for key, value in user.items():
        base = merged.get(key)
        if (
            isinstance(value, Mapping)
            and isinstance(base, Mapping)
            and not ({"static", "dns"} & (set(value) | set(base)))
        ):
            merged[key] = _merge(base, value)
        else:
            merged[key] = value
    return merged


def _listen(port: int) -> str:
    return f"tcp:{port}:interface={LOCALHOST}"


def _hosts(members: list[str]) -> dict[str, Any]:
    return {"static": members}


class HerdPlan:
    """Parsed member configurations: ``(kind, name, config)`` in start order."""

    def __init__(
        self, members: list[tuple[str, str, Any]], data: str, cert_dir: str | None = None
    ) -> None:
        self.members = members
        self.data = data
        #: With ``--tls``: skopeo's ``--dest-cert-dir`` for the proxy (CA and client pair).
        self.cert_dir = cert_dir

    def of(self, kind: str) -> list[Any]:
        """The configurations of every member of ``kind``."""
        return [config for k, _, config in self.members if k == kind]


#: Certificates ``--tls`` makes in ``<data>/tls`` (``client`` is for people and scripts).
HERD_CERTIFICATES = ("origin", "tracker", "build-index", "proxy", "agent", "client")
#: ``<data>/tls/<this>``: ``ca.crt``, ``client.cert``, ``client.key`` for skopeo and docker.
SKOPEO_CERT_DIR = "skopeo"


def herd_plan(
    *,
    user: Mapping[str, Any] | None = None,
    data: str | None = None,
    origins: int = 1,
    agents: int = 1,
    base_port: int = BASE_PORT,
    agent_base_port: int = AGENT_BASE_PORT,
    tls: bool = False,
) -> HerdPlan:
    """
    Every member's configuration: the plan (ports, wiring, data directories) under ``user``.

    ``user`` is a raw ``herd`` configuration mapping; ConfigError names bad keys.
    """
    user = dict(user or {})
    if data is None:
        data = str(user.get("data_dir") or "./kraken-data")
    user["data_dir"] = data
    parse_config("herd", user)  # whole-file check with herd.<member>.<key> paths
    root = data.rstrip("/") or "/"
    proxy_port, tracker_port, bi_port = base_port, base_port + 3, base_port + 4
    origin_ports = [
        (base_port + 1 + ORIGIN_STRIDE * i, base_port + 2 + ORIGIN_STRIDE * i)
        for i in range(origins)
    ]
    ring = [f"{LOCALHOST}:{http}" for _, http in origin_ports]
    tracker_addr, bi_addr = f"{LOCALHOST}:{tracker_port}", f"{LOCALHOST}:{bi_port}"

    def suffix(i: int) -> str:
        return "" if i == 0 else f"-{i}"

    # Every agent dials from 127.0.0.1: the per-address limit must let each hold a slot.
    loopback_peers = {"max_conns_per_address": max(2, agents)}

    members: list[tuple[str, str, Any]] = []

    tls_dir = f"{root}/tls"
    cert_dir = f"{tls_dir}/{SKOPEO_CERT_DIR}" if tls else None
    if cert_dir is not None:  # blocking, at start-up only: the dev CA and certificates, made once
        ensure_certificates(tls_dir, HERD_CERTIFICATES)
        export_cert_dir(tls_dir, "client", cert_dir)  # refreshed each start (after a re-issue)

    def add(kind: str, key: str, name: str, plan: dict[str, Any], keep: tuple[str, ...]) -> None:
        if tls:
            cert, cert_key = cert_paths(tls_dir, kind)
            plan["tls"] = {"ca": f"{tls_dir}/{CA_CERT_FILE}", "client_cert": cert}
            plan["tls"].update(client_key=cert_key, cert=cert, key=cert_key)
            if kind in ("agent", "origin"):
                plan["tls"]["peer"] = True  # mutual TLS on the peer ports too
        own = dict(user.get(key) or {})
        if name != kind:  # an extra member: the plan's listeners win
            for k in keep:
                own.pop(k, None)
            own.pop("data_dir", None)
        members.append((kind, name, parse_config(kind, _merge(plan, own))))

    add(
        "tracker",
        "tracker",
        "tracker",
        {
            "data_dir": f"{root}/tracker",
            "server": {"listen": _listen(tracker_port)},
            "origin": {"hosts": _hosts(ring)},
        },
        (),
    )
    for i, (peer, http) in enumerate(origin_ports):
        add(
            "origin",
            "origin",
            f"origin{suffix(i)}",
            {
                "data_dir": f"{root}/origin{suffix(i)}",
                "server": {"listen": _listen(http)},
                "peer": {"listen": _listen(peer)},
                "cluster": _hosts(ring),
                "scheduler": loopback_peers,
            },
            ("server", "peer"),
        )
    add(
        "build-index",
        "build_index",
        "build-index",
        {
            "data_dir": f"{root}/build-index",
            "server": {"listen": _listen(bi_port)},
            "cluster": {"hosts": _hosts([bi_addr])},
            "origin": {"hosts": _hosts(ring)},
        },
        (),
    )
    add(
        "proxy",
        "proxy",
        "proxy",
        {
            "data_dir": f"{root}/proxy",
            "server": {"listen": _listen(proxy_port)},
            "origin": {"hosts": _hosts(ring)},
            "build_index": {"hosts": _hosts([bi_addr])},
            "delete_enabled": True,
        },
        (),
    )
    for i in range(agents):
        port = agent_base_port + AGENT_STRIDE * i
        add(
            "agent",
            "agent",
            f"agent{suffix(i)}",
            {
                "data_dir": f"{root}/agent{suffix(i)}",
                "registry": {"listen": _listen(port)},
                "peer": {"listen": _listen(port + 1)},
                "server": {"listen": _listen(port + 2)},
                "tracker": {"hosts": _hosts([tracker_addr])},
                "build_index": {"hosts": _hosts([bi_addr])},
                "scheduler": loopback_peers,
            },
            ("registry", "peer", "server"),
        )
    return HerdPlan(members, root, cert_dir)


def _port(listen: str) -> str:
    """``tcp:15000:interface=127.0.0.1`` -> ``127.0.0.1:15000`` (else the string itself)."""
    parts = listen.split(":")
    if len(parts) >= 2 and parts[0] == "tcp" and parts[1].isdigit():
        interface = next((p.split("=", 1)[1] for p in parts if p.startswith("interface=")), "")
        return f"{interface or '0.0.0.0'}:{parts[1]}"  # noqa: S104 - a display string
    return listen


def _push_tls_option(plan: HerdPlan, proxy: Any) -> str:
    """skopeo's option for the proxy's registry port: plain HTTP, or TLS checked with the CA."""
    if proxy.tls.cert is None:
        return "--dest-tls-verify=false"
    if plan.cert_dir is not None and proxy.tls.ca == f"{plan.data}/tls/{CA_CERT_FILE}":
        return f"--dest-cert-dir {plan.cert_dir}"
    return "--dest-cert-dir <dir with ca.crt, client.cert, client.key>"


class _Banner(Service):
    """Logs where to push and pull once every member has started (and, when ``ready`` is
    set, once it fires: every listener is up)."""

    log = Logger()

    def __init__(self, lines: list[str]) -> None:
        self.lines = lines
        self.ready: Deferred[None] | None = None

    def startService(self) -> None:
        """Say what runs where and what to do next, once the listeners are up."""
        Service.startService(self)  # type: ignore[no-untyped-call]
        if self.ready is None:
            self._say()
        else:
            self.ready.addCallbacks(lambda _: self._say(), lambda _: None)

    def _say(self) -> None:
        for line in self.lines:
            self.log.info("{line}", line=line)


class HerdService(MultiService):
    """The herd's tree: one child tree per member, named ``tracker``, ``origin-1``, ..."""

    def __init__(self, plan: HerdPlan) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.plan = plan
        self.members: dict[str, MultiService] = {}
        #: Each member as :func:`kraken.embed.build` made it.
        self.daemons: dict[str, EmbeddedDaemon] = {}
        #: The lines logged once every member has started (where to push and pull).
        self.banner: list[str] = []
        self.banner_service: _Banner | None = None

    def ready(self) -> Deferred[None]:
        """Fires once every member listens; fails with the first
        :class:`~kraken.services.parts.ListenFailed`."""
        d: Deferred[Any] = gatherResults(
            [daemon.ready() for daemon in self.daemons.values()], consumeErrors=True
        )
        return d.addCallbacks(lambda _: None, lambda f: f.value.subFailure)


def build_herd(plan: HerdPlan, reactor: IReactorCore) -> HerdService:
    """
    Build every member's own service tree (as its plugin would) under one parent.

    Members are built by :func:`kraken.embed.build`, the API any application embedding
    several daemons in one reactor uses: the herd is one such application.
    """
    from kraken import embed

    herd = HerdService(plan)
    # Origins first, so that the tracker's and proxy's first health checks find them up.
    order: tuple[DaemonKind, ...] = ("origin", "tracker", "build-index", "proxy", "agent")
    for kind in order:
        for k, name, config in plan.members:
            if k != kind:
                continue
            daemon = embed.build(kind, config, reactor)
            tree = daemon.service
            tree.setName(name)  # type: ignore[no-untyped-call]
            tree.setServiceParent(herd)  # type: ignore[no-untyped-call]
            herd.members[name] = tree
            herd.daemons[name] = daemon
    proxy = plan.of("proxy")[0]
    agents = plan.of("agent")
    lines = [
        "Kraken herd is up: " + ", ".join(name for _, name, _ in plan.members),
        f"data and filesystem backend under {plan.data}",
        f"push:  skopeo copy {_push_tls_option(plan, proxy)} <image> "
        f"docker://{_port(proxy.server.listen)}/<repo>:<tag>",
    ]
    for agent in agents:
        lines.append(
            f"pull:  skopeo copy --src-tls-verify=false "
            f"docker://{_port(agent.registry.listen)}/<repo>:<tag> <dest>"
        )
    lines.append("containerd: see docs/containerd.md (hosts.toml mirror to the agent)")
    if plan.cert_dir is not None:
        tls_dir = f"{plan.data}/tls"
        lines.append(
            f"TLS:   CA and certificates in {tls_dir}; by hand: curl --cacert {tls_dir}/ca.pem "
            f"--cert {tls_dir}/client.pem --key {tls_dir}/client-key.pem https://..."
        )
    herd.banner = lines
    herd.banner_service = _Banner(lines)
    herd.banner_service.setServiceParent(herd)  # type: ignore[no-untyped-call]
    return herd


def makeService(options: usage.Options, reactor: IReactorCore | None = None) -> MultiService:
    """The twistd entry point: the herd for the parsed ``options``."""
    reactor = daemon_reactor(reactor)
    plan = options.get("herd_plan") or herd_plan()
    herd = build_herd(plan, reactor)
    # A port that cannot open has been logged (one line) by its member; end the process.
    herd.ready().addErrback(lambda _: stop_and_exit(reactor))
    if herd.banner_service is not None:
        herd.banner_service.ready = herd.ready()
    return herd
