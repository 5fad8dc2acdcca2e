"""
The ``kraken`` command line.

``kraken herd`` runs the whole system in one process; ``kraken blob``
pushes, stats and pulls blobs at an origin ring; ``kraken certs`` makes a
development CA and certificates; ``kraken digest FILE`` prints a file's
digest and, with ``--metainfo``, the metainfo an origin would generate;
``kraken gc`` removes blobs no manifest references from the backend
after a grace period (``--dry-run`` says what and why); ``kraken config
check`` loads a daemon's configuration file as the daemon would;
``kraken mirror containerd|docker`` points the host's container runtime
at its local agent.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from kraken import __version__
from kraken.core import DEFAULT_PIECE_LENGTHS, MetaInfo


def _digest(args: argparse.Namespace) -> int:
    for path in args.files:
        try:
            meta = MetaInfo.from_path(path, DEFAULT_PIECE_LENGTHS)
        except OSError as e:
            print(f"kraken digest: {path}: {e.strerror}", file=sys.stderr)
            return 1
        if args.metainfo:
            print(meta.to_json().decode("ascii"))
        else:
            print(f"{meta.digest}  {path}")
    return 0


def _certs_init(args: argparse.Namespace) -> int:
    from kraken.certs import CertificateExists, init_ca

    try:
        cert, key = init_ca(args.dir)
    except (CertificateExists, OSError) as e:
        print(f"kraken certs init: {e}", file=sys.stderr)
        return 1
    print(f"created {cert} and {key} (keep the key private)")
    return 0


def _certs_issue(args: argparse.Namespace) -> int:
    import datetime

    from kraken.certs import DEFAULT_SANS, CertificateExists, issue

    try:
        cert, key = issue(
            args.dir,
            args.name,
            args.san or DEFAULT_SANS,
            validity=datetime.timedelta(days=args.days),
        )
    except FileNotFoundError as e:
        print(
            f"kraken certs issue: {e.filename}: no CA (run kraken certs init first)",
            file=sys.stderr,
        )
        return 1
    except (CertificateExists, OSError, ValueError) as e:
        print(f"kraken certs issue: {e}", file=sys.stderr)
        return 1
    print(f"created {cert} and {key}")
    return 0


def _certs_export(args: argparse.Namespace) -> int:
    from kraken.certs import export_cert_dir

    try:
        paths = export_cert_dir(args.dir, args.name, args.out)
    except FileNotFoundError as e:
        print(
            f"kraken certs export: {e.filename}: missing (kraken certs init / issue first)",
            file=sys.stderr,
        )
        return 1
    except (OSError, ValueError) as e:
        print(f"kraken certs export: {e}", file=sys.stderr)
        return 1
    print(f"wrote {', '.join(paths)}")
    print(f"  skopeo copy --dest-cert-dir {args.out} ... docker://HOST:PORT/...")
    print("  docker: copy them into /etc/docker/certs.d/HOST:PORT/")
    return 0


def _positive_days(text: str) -> int:
    """``--days``: a whole number of days, at least 1 (0 would write an expired certificate)."""
    try:
        days = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number of days: {text!r}") from None
    if days < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1 day, not {days}")
    return days


def _add_certs(sub: Any) -> None:
    certs = sub.add_parser(
        "certs", help="development CA and certificates for mutual TLS (docs/security.md)"
    )
    certs_sub = certs.add_subparsers(dest="certs_command", required=True)
    init = certs_sub.add_parser("init", help="create a CA: DIR/ca.pem and DIR/ca-key.pem")
    init.add_argument("dir", metavar="DIR")
    init.set_defaults(func=_certs_init)
    issue = certs_sub.add_parser(
        "issue",
        help="issue DIR/NAME.pem and DIR/NAME-key.pem, signed by the CA in DIR, usable as "
        "server and client certificate",
    )
    issue.add_argument("dir", metavar="DIR")
    issue.add_argument("name", metavar="NAME")
    issue.add_argument(
        "--san",
        action="append",
        metavar="NAME_OR_IP",
        help="subject alternative name (repeatable; default: localhost and 127.0.0.1)",
    )
    issue.add_argument(
        "--days", type=_positive_days, default=365, help="validity in days (default 365)"
    )
    issue.set_defaults(func=_certs_issue)
    export = certs_sub.add_parser(
        "export",
        help="copy DIR/ca.pem and NAME's pair into OUT as ca.crt, NAME.cert and NAME.key "
        "(skopeo --dest-cert-dir, docker certs.d)",
    )
    export.add_argument("dir", metavar="DIR")
    export.add_argument("name", metavar="NAME")
    export.add_argument("out", metavar="OUT")
    export.set_defaults(func=_certs_export)


def _herd(args: argparse.Namespace) -> int:
    """Run ``twistd -n kraken-herd`` in this process with the given options."""
    from twisted.scripts.twistd import run

    options = []
    for name in (
        "config",
        "data",
        "agents",
        "origins",
        "base_port",
        "agent_base_port",
        "log_level",
    ):
        value = getattr(args, name)
        if value is not None:
            options.append(f"--{name.replace('_', '-')}={value}")
    if args.tls:
        options.append("--tls")
    sys.argv = ["twistd", "--nodaemon", "--pidfile=", "kraken-herd", *options]
    run()  # type: ignore[no-untyped-call]
    return 0


def _add_herd(sub: Any) -> None:
    herd = sub.add_parser(
        "herd",
        help="run tracker, origin, build-index, proxy and an agent in one process",
        description="Everything on 127.0.0.1: push to 127.0.0.1:15000, pull from "
        "127.0.0.1:16000 (the same as `twistd -n kraken-herd`).",
    )
    herd.add_argument("--config", help="YAML herd configuration, merged over the plan")
    herd.add_argument("--data", help="data directory (default ./kraken-data)")
    herd.add_argument("--agents", type=int, help="extra agents (17000/17001/17002, ...)")
    herd.add_argument("--origins", type=int, help="origins in the ring (default 1)")
    herd.add_argument("--base-port", type=int, help="proxy port; the others follow (15000)")
    herd.add_argument("--agent-base-port", type=int, help="first agent's registry port (16000)")
    herd.add_argument(
        "--log-level",
        choices=["debug", "info", "warn", "error", "critical"],
        help="lowest level logged (default info; factory start/stop lines are debug)",
    )
    herd.add_argument(
        "--tls",
        action="store_true",
        help="mutual TLS between the components (CA and certificates in <data>/tls)",
    )
    herd.set_defaults(func=_herd)


def _config_check(args: argparse.Namespace) -> int:
    """Load FILE as the daemon would at start-up; print every problem, one per line."""
    from kraken.config import ConfigError, HerdConfig, load_config

    try:
        config = load_config(args.daemon, args.file)
    except ConfigError as e:
        print(e, file=sys.stderr)
        return 1
    members = (
        [
            (name, getattr(config, name.replace("-", "_")))
            for name in ("tracker", "origin", "build-index", "proxy", "agent")
        ]
        if isinstance(config, HerdConfig)
        else [(args.daemon, config)]
    )
    problems = []
    for name, member in members:
        if args.files:
            from twisted.python.usage import UsageError

            from kraken.tls import check_tls_files

            try:
                check_tls_files(member.tls, serve=name != "agent", section=f"{name}.tls")
            except UsageError as e:
                problems.append(str(e))
    for problem in problems:
        print(f"{args.file}: {problem}", file=sys.stderr)
    if problems:
        return 1
    print(f"{args.file}: a valid {args.daemon} configuration")
    return 0


def _add_config(sub: Any) -> None:
    config = sub.add_parser("config", help="configuration files")
    config_sub = config.add_subparsers(dest="config_command", required=True)
    check = config_sub.add_parser(
        "check",
        help="check FILE as `twistd kraken-<daemon> --config FILE` would at start-up "
        "(every key and value, backend options; TLS files with --files)",
    )
    check.add_argument("file", metavar="FILE")
    check.add_argument(
        "--daemon",
        required=True,
        choices=["agent", "origin", "tracker", "build-index", "proxy", "herd"],
        help="the daemon the file is for",
    )
    check.add_argument(
        "--files",
        action="store_true",
        help="also read the TLS files the configuration names (as on the host that runs it)",
    )
    check.set_defaults(func=_config_check)


def _mirror_containerd(args: argparse.Namespace) -> int:
    from kraken.mirror import MirrorError, containerd_hosts_files, write_containerd_hosts

    try:
        if args.dry_run:
            for name, text in containerd_hosts_files(args.agent, args.registry or ()).items():
                print(f"# {args.dir}/{name}/hosts.toml\n{text}")
            return 0
        paths = write_containerd_hosts(args.dir, args.agent, args.registry or ())
    except (MirrorError, OSError) as e:
        print(f"kraken mirror containerd: {e}", file=sys.stderr)
        return 1
    for path in paths:
        print(f"wrote {path}")
    print(
        f"containerd's CRI reads them when config.toml sets "
        f'[plugins."io.containerd.grpc.v1.cri".registry] config_path = "{args.dir}"; '
        f"ctr: ctr images pull --hosts-dir {args.dir} ..."
    )
    return 0


def _mirror_docker(args: argparse.Namespace) -> int:
    import json

    from kraken.mirror import (
        MirrorError,
        docker_daemon_config,
        read_docker_daemon_config,
        write_docker_daemon_config,
    )

    try:
        if args.dry_run:
            config = docker_daemon_config(read_docker_daemon_config(args.file), args.agent)
            print(json.dumps(config, indent=2))
            return 0
        write_docker_daemon_config(args.file, args.agent)
    except (MirrorError, OSError) as e:
        print(f"kraken mirror docker: {e}", file=sys.stderr)
        return 1
    print(f"wrote {args.file}; restart dockerd (it mirrors Docker Hub only)")
    return 0


def _add_mirror(sub: Any) -> None:
    from kraken.mirror import DEFAULT_AGENT, DEFAULT_CONTAINERD_DIR, DEFAULT_DOCKER_FILE

    mirror = sub.add_parser(
        "mirror", help="point this host's container runtime at the local agent (docs/containerd.md)"
    )
    mirror_sub = mirror.add_subparsers(dest="mirror_command", required=True)
    agent_help = f"the agent's registry address (default {DEFAULT_AGENT})"
    containerd = mirror_sub.add_parser(
        "containerd",
        help="write hosts.toml files: _default (every registry), or one per --registry",
    )
    containerd.add_argument(
        "--registry",
        action="append",
        metavar="HOST",
        help="mirror only this registry (repeatable; docker.io for Docker Hub)",
    )
    containerd.add_argument(
        "--dir",
        default=DEFAULT_CONTAINERD_DIR,
        help=f"containerd's hosts directory (default {DEFAULT_CONTAINERD_DIR})",
    )
    containerd.add_argument("--agent", default=DEFAULT_AGENT, help=agent_help)
    containerd.add_argument(
        "--dry-run", action="store_true", help="print the files instead of writing them"
    )
    containerd.set_defaults(func=_mirror_containerd)
    docker = mirror_sub.add_parser(
        "docker", help="add the agent to registry-mirrors in docker's daemon.json"
    )
    docker.add_argument(
        "--file",
        default=DEFAULT_DOCKER_FILE,
        help=f"docker's daemon.json (default {DEFAULT_DOCKER_FILE}); other settings are kept",
    )
    docker.add_argument("--agent", default=DEFAULT_AGENT, help=agent_help)
    docker.add_argument(
        "--dry-run", action="store_true", help="print the new file instead of writing it"
    )
    docker.set_defaults(func=_mirror_docker)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand."""
    parser = argparse.ArgumentParser(prog="kraken", description=__doc__.splitlines()[1])
    parser.add_argument("--version", action="version", version=f"kraken {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    digest = sub.add_parser("digest", help="print the sha256 digest (or metainfo) of files")
    digest.add_argument("files", nargs="+", metavar="FILE")
    digest.add_argument(
        "--metainfo", action="store_true", help="print the metainfo JSON (default piece lengths)"
    )
    digest.set_defaults(func=_digest)
    _add_certs(sub)
    _add_herd(sub)
    _add_config(sub)
    _add_mirror(sub)
    from kraken.origin.blobcli import add_blob_parser

    add_blob_parser(sub)
    from kraken.gc import add_gc_parser

    add_gc_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``kraken`` console script."""
    args = build_parser().parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
