"""The service's commands: serve, publish, status, clients; `classify --cluster` is in
experiments/cli.py."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from mpc.errors import ConfigError


def cmd_serve(args: argparse.Namespace) -> int:
    from experiments.service.server import serve

    serve(args.cluster, args.role, args.lane)
    return 0


def cmd_publish(args: argparse.Namespace) -> int:
    from experiments.modelfile import load_model
    from experiments.service.client import publish

    loaded = load_model(args.model)
    publish(args.cluster, loaded.secure, loaded.feature_config.to_dict(), args.version,
            client=args.client)
    print(f"published {args.model} as version {args.version}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from experiments.service.client import status

    report = status(args.cluster, client=args.client)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for role, s in report.items():
            if not s.get("up"):
                print(f"{role}: down ({s.get('error')})")
                continue
            print(f"{role}: {'ready' if s['ready'] else s['state']}, model {s['version']}, "
                  f"{s['requests_served']} requests served in {s['batches']} batches, "
                  f"{s['queued']} queued, preprocessing pool {s['preprocessing_pool']}, "
                  f"last error: {s['last_error'] or 'none'}")
    return 0 if all(s.get("up") and s.get("ready") for s in report.values()) else 1


def cmd_clients_add(args: argparse.Namespace) -> int:
    from experiments.service.config import load_service
    from mpc.net.certs import normalize_fingerprint

    path = Path(args.cluster)
    config = load_service(path)
    text = args.fingerprint
    if Path(text).is_file():
        text = Path(text).read_text().strip()
    pin = normalize_fingerprint(text)
    if pin is None:
        raise ConfigError(f"{args.fingerprint!r} is not a key fingerprint (64 hex digits, or "
                          "the .fingerprint file `sottovoce clients key` wrote)")
    if any(k.name == args.name for k in config.clients):
        raise ConfigError(f"{path}: a client named {args.name!r} is listed already")
    entry = (f'\n[[client]]\nname = "{args.name}"\nfingerprint = "{pin}"\n'
             f"publish = {'true' if args.publish else 'false'}\n")
    candidate = path.read_text(encoding="utf-8") + entry
    tmp = path.with_name(f".{path.name}.partial")
    tmp.write_text(candidate, encoding="utf-8")
    try:
        load_service(tmp)  # the new file must be valid before it replaces the old one
    except ConfigError:
        tmp.unlink()
        raise
    tmp.replace(path)
    print(f"added client {args.name} to {path}; running roles allow it within a second")
    return 0


def cmd_clients_key(args: argparse.Namespace) -> int:
    from experiments.service.client import make_client_key

    fp = make_client_key(args.directory, args.name)
    print(fp)
    return 0


def cmd_service_init(args: argparse.Namespace) -> int:
    from experiments.service.local import write_local_service

    clients = tuple(c for c in args.clients.split(",") if c)
    path = write_local_service(args.directory, args.scheme, clients, args.owner,
                               args.window_ms, args.max_batch)
    print(f"wrote {path} and every key in {Path(args.directory) / 'keys'} (a trial on this "
          "machine; README \"A service\" says how each host makes its own)")
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    from protocols import registry

    serve = sub.add_parser("serve", help="run one role of a service (a compute party or the "
                           "dealer) until SIGTERM or Ctrl-C")
    serve.add_argument("--cluster", required=True, metavar="FILE",
                       help="the service's cluster file")
    serve.add_argument("--role", required=True,
                       help="which role this process is: a compute party's id (0, 1, ...) or "
                       "'dealer'")
    serve.add_argument("--lane", type=int, default=0,
                       help="which lane of the role this process runs (default: 0; lanes "
                       "1, 2, ... are [[lane]] entries of the cluster file)")
    serve.set_defaults(fn=cmd_serve)

    publish = sub.add_parser("publish", help="share a model with a running service, once "
                             "(the model owner)")
    publish.add_argument("--cluster", required=True, metavar="FILE",
                         help="the service's cluster file")
    publish.add_argument("--model", required=True, metavar="MODEL.npz",
                         help="the model file to publish (`sottovoce import` makes one)")
    publish.add_argument("--version", required=True,
                         help="a name for this version (letters, digits, '_.+-'); clients "
                         "are served the latest one published")
    publish.add_argument("--client", help="the [[client]] entry whose key this host holds "
                         "(default: the first with publish = true whose key is here)")
    publish.set_defaults(fn=cmd_publish)

    status = sub.add_parser("status", help="ask every role of a service how it is")
    status.add_argument("--cluster", required=True, metavar="FILE",
                        help="the service's cluster file")
    status.add_argument("--client", help="the [[client]] entry whose key this host holds")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.set_defaults(fn=cmd_status)

    clients = sub.add_parser("clients", help="manage the keys a service allows")
    csub = clients.add_subparsers(dest="clients_command", required=True)
    add = csub.add_parser("add", help="allow one more client key (running roles read the "
                          "file again within a second)")
    add.add_argument("--cluster", required=True, metavar="FILE")
    add.add_argument("name", help="the client's name (letters, digits, '_.-')")
    add.add_argument("fingerprint", help="its key's fingerprint (hex, or its .fingerprint "
                     "file)")
    add.add_argument("--publish", action="store_true", help="this key may publish models")
    add.set_defaults(fn=cmd_clients_add)
    key = csub.add_parser("key", help="make a client's key on its own host and print its "
                          "fingerprint")
    key.add_argument("directory", help="where to keep it (client-<name>.key, .pem)")
    key.add_argument("name")
    key.set_defaults(fn=cmd_clients_key)

    init = sub.add_parser("service-init", help="write keys and a cluster file for a service "
                          "whose roles all run on this machine (a trial)")
    init.add_argument("directory")
    init.add_argument("--scheme", choices=list(registry.SCHEMES), default=registry.DEFAULT,
                      help="the scheme the service runs (default: %(default)s)")
    init.add_argument("--clients", default="alice",
                      help="comma-separated client names (default: %(default)s)")
    init.add_argument("--owner", default="bob",
                      help="the model owner's client name (default: %(default)s)")
    init.add_argument("--window-ms", type=float, default=20,
                      help="batching window in milliseconds (default: %(default)s)")
    init.add_argument("--max-batch", type=int, default=16,
                      help="clips evaluated together at most (default: %(default)s)")
    init.set_defaults(fn=cmd_service_init)
