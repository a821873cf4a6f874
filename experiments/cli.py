"""The `sottovoce` command line: demo, classify, keys, cluster, the deployment roles, bench."""

from __future__ import annotations

import argparse
import atexit
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

from experiments import importing
from mpc.errors import ConfigError, SottovoceError
from protocols import registry

DEFAULT_TIMEOUT = 60.0  # seconds a party waits for a peer; nn.inference.classify's default


def _features(paths: list[Path], config, bar) -> np.ndarray:
    import audio

    maps = []
    for path in paths:
        bar.set_postfix_str(f"features of {path.name}")
        maps.append(audio.features(audio.load(path, sample_rate=config.sample_rate), config))
        bar.update(1)
    return np.stack(maps)


def _classify_clips(paths: list[Path], model_path: Path, scheme: str, transport: str,
                    n_parties: int | None, as_json: bool, expected: dict[str, str] | None,
                    timeout: float = DEFAULT_TIMEOUT) -> int:
    from tqdm import tqdm

    from experiments.modelfile import load_model, plaintext_logits
    from nn.inference import classify

    t0 = time.perf_counter()
    with tqdm(total=len(paths) + 3, desc="sottovoce", unit="step", file=sys.stderr,
              leave=False, disable=None) as bar:  # disable=None: silent when not a terminal
        bar.set_postfix_str("loading and checking the model")
        loaded = load_model(model_path)
        bar.update(1)
        features = _features(paths, loaded.feature_config, bar)
        # the plaintext reference first: the parties' fork server is still starting
        bar.set_postfix_str("plaintext reference")
        plain = plaintext_logits(loaded, features).argmax(axis=1)
        bar.update(1)
        prep = time.perf_counter() - t0
        bar.set_postfix_str(f"secure computation ({scheme}, {transport})")
        result = classify(loaded.secure, features, scheme=scheme, transport=transport,
                          n_parties=n_parties, timeout=timeout)
        bar.update(1)
    labels = loaded.labels
    count = len(paths)
    rows = []
    for k, path in enumerate(paths):
        rows.append({"clip": path.name, "secure": labels[result.labels[k]],
                     "plaintext": labels[plain[k]],
                     "expected": (expected or {}).get(path.name)})
    summary = {
        "scheme": scheme, "transport": transport, "clips": count,
        "parties": len(result.parties), "online_seconds": result.online_seconds,
        "offline_seconds": result.offline_seconds, "online_rounds": result.online_rounds,
        "setup_seconds": result.setup_seconds, "setup_bytes_sent": result.bytes_sent("setup"),
        "online_bytes_sent": result.bytes_sent("online"),
        "offline_bytes_sent": result.bytes_sent("offline"),
        "agree": int(sum(r["secure"] == r["plaintext"] for r in rows)),
        "load_and_features_seconds": prep,
    }
    if as_json:
        print(json.dumps({"clips": rows, "summary": summary}, indent=2))
    else:
        print(f"{'clip':<34}{'secure':>12}{'plaintext':>12}")
        for r in rows:
            print(f"{r['clip']:<34}{r['secure']:>12}{r['plaintext']:>12}")
        print(f"\nscheme {scheme} over {transport} ({summary['parties']} processes, "
              "a dealer included)" if registry.get(scheme).dealer else
              f"\nscheme {scheme} over {transport} ({summary['parties']} parties)")
        print(f"{count} clips in one batch: online {summary['online_seconds'] * 1e3:.0f} ms "
              f"({summary['online_seconds'] * 1e3 / count:.0f} ms per clip), offline "
              f"{summary['offline_seconds'] * 1e3:.0f} ms, {summary['online_rounds']} rounds; "
              f"model sharing (once per model) {summary['setup_seconds'] * 1e3:.0f} ms")
        print(f"bytes sent online per party {summary['online_bytes_sent']}, offline "
              f"{summary['offline_bytes_sent']}")
        print(f"secure labels equal plaintext labels on {summary['agree']} of {count} clips")
    return 0 if summary["agree"] == count else 1


def cmd_demo(args: argparse.Namespace) -> int:
    from experiments.modelfile import BUNDLED_CLIPS, BUNDLED_MODEL

    clips = sorted(BUNDLED_CLIPS.glob("*.wav"))
    if not clips or not BUNDLED_MODEL.is_file():
        raise SottovoceError(f"bundled model or clips missing under {BUNDLED_MODEL.parent}")
    expected = None
    labels_file = BUNDLED_CLIPS / "labels.json"
    if labels_file.is_file():
        raw = json.loads(labels_file.read_text())
        expected = {k: (v.get("label") if isinstance(v, dict) else v) for k, v in raw.items()}
    return _classify_clips(clips, BUNDLED_MODEL, args.scheme, args.transport, args.parties,
                           args.json, expected, args.timeout)


def cmd_classify(args: argparse.Namespace) -> int:
    if args.cluster is not None:
        if args.model is not None:
            raise ConfigError("--model and --cluster exclude each other: a service serves "
                              "the model its owner published")
        from experiments.service.client import classify

        labels = classify(args.cluster, args.clips, client=args.client, lane=args.lane)
        if args.json:
            print(json.dumps([{"clip": c, "label": lab} for c, lab in zip(args.clips, labels,
                                                                         strict=True)]))
        else:
            for clip, label in zip(args.clips, labels, strict=True):
                print(f"{clip}: {label}")
        return 0
    if args.model is None:
        raise ConfigError("classify needs --model MODEL.npz (here) or --cluster FILE (a "
                          "running service)")
    return _classify_clips([Path(p) for p in args.clips], Path(args.model), args.scheme,
                           args.transport, args.parties, args.json, None, args.timeout)


TRIAL_ONLY = ("FOR A TRIAL ON THIS MACHINE ONLY: every role's private key is in one folder, "
              "so whoever holds it can be any role. Across hosts, each role makes its own key "
              "on its own host with `sottovoce keys` (README, \"Running across machines\").")


def cmd_keys(args: argparse.Namespace) -> int:
    from mpc.net.certs import make_identity

    identity = make_identity(args.directory, args.id, [args.host] if args.host else (),
                             replace=args.replace)
    print(f"endpoint {args.id}: private key {identity.key} (mode 0600; it never leaves this "
          f"host), certificate {identity.cert}")
    print(f"fingerprint {identity.fingerprint}")
    print(f"(also in {identity.cert.with_suffix('.fingerprint')}): give the fingerprint, "
          "which is public, to whoever writes the cluster file (`sottovoce cluster DIR "
          "--fingerprints ...`)")
    return 0


def cmd_certs(args: argparse.Namespace) -> int:
    from mpc.net.certs import make_certificates

    files = make_certificates(args.directory, args.parties)
    for party, tls in files.items():
        print(f"party {party}: {tls.cert} {tls.key} fingerprint {tls.pins[party]}")
    print(TRIAL_ONLY)
    return 0


def _fingerprint_argument(item: str) -> str:
    """A fingerprint given as its hex digits, or as a file holding them (what `sottovoce
    keys` writes) or a certificate."""
    from mpc.net.certs import fingerprint, normalize_fingerprint, read_certificate

    given = normalize_fingerprint(item)
    if given is not None:
        return given
    path = Path(item)
    if not path.is_file():
        raise SottovoceError(f"--fingerprints: {item!r} is neither 64 hex digits nor a file")
    text = path.read_text(errors="replace")
    if "BEGIN CERTIFICATE" in text:
        return fingerprint(read_certificate(path))
    found = normalize_fingerprint(text.strip())
    if found is None:
        raise SottovoceError(f"--fingerprints: {path} holds no fingerprint")
    return found


def cmd_cluster(args: argparse.Namespace) -> int:

    from experiments.deploy import Roles
    from mpc.cluster import load_cluster, write_cluster
    from mpc.net.certs import make_certificates

    scheme = registry.get(args.scheme)
    n = scheme.party_count(args.parties)
    total = scheme.endpoints(n) + 2  # and the client and the model owner
    hosts = args.hosts.split(",") if args.hosts else ["127.0.0.1"] * total
    if len(hosts) != total:
        raise SottovoceError(f"--hosts names {len(hosts)} hosts; {args.scheme} with {n} "
                             f"compute parties has {total} roles")
    if args.fingerprints and not args.base_port:
        raise SottovoceError("--fingerprints writes the file every host shares: give "
                             "--base-port (role i listens on base+i)")
    if args.base_port:
        ports = [args.base_port + i for i in range(total)]
    else:  # free ports on this machine, for a local trial
        from mpc.net.tcp import free_local_ports

        ports = free_local_ports(total)
    directory = Path(args.directory)
    if args.fingerprints:
        pins = [_fingerprint_argument(item) for item in args.fingerprints.split(",")]
        if len(pins) != total:
            raise SottovoceError(f"--fingerprints gives {len(pins)}; {args.scheme} with {n} "
                                 f"compute parties has {total} roles (ids 0..{total - 1})")
        path = write_cluster(directory / "cluster.toml", total, fingerprints=pins,
                             ports=ports, hosts=hosts, timeout=args.timeout,
                             scheme=args.scheme, compute_parties=n, keys=args.keys)
        print(f"wrote {path}: every role's address and pinned key fingerprint, nothing secret")
        print("copy it to every host, into the folder that holds that host's "
              f"{args.keys or 'keys'}/ (where `sottovoce keys` put its key)")
    else:
        make_certificates(directory / "keys", total, hosts=dict(enumerate(hosts)))
        path = write_cluster(directory / "cluster.toml", total, cert_dir=directory / "keys",
                             ports=ports, hosts=hosts, timeout=args.timeout,
                             scheme=args.scheme, compute_parties=n)
        print(f"wrote {path} and every role's key in {directory / 'keys'}")
        print(TRIAL_ONLY)
    roles = Roles.of(load_cluster(path))
    print(f"ids: compute parties 0..{n - 1}" + (f", dealer {roles.dealer}" if roles.dealer
                                                is not None else "") +
          f", client {roles.client}, model owner {roles.model_owner}")
    return 0


def cmd_party(args: argparse.Namespace) -> int:
    from experiments.deploy import compute_party

    compute_party(args.config, args.id)
    return 0


def cmd_dealer(args: argparse.Namespace) -> int:
    from experiments.deploy import dealer

    dealer(args.config)
    return 0


def cmd_model_owner(args: argparse.Namespace) -> int:
    from experiments.deploy import model_owner
    from experiments.modelfile import load_model

    loaded = load_model(args.model)
    model_owner(args.config, loaded.secure, loaded.feature_config.to_dict())
    return 0


def cmd_client(args: argparse.Namespace) -> int:
    from experiments.deploy import client

    labels = client(args.config, args.clips)
    if args.json:
        print(json.dumps({"clips": [{"clip": Path(c).name, "label": label}
                                    for c, label in zip(args.clips, labels, strict=True)]}))
    else:
        for clip, label in zip(args.clips, labels, strict=True):
            print(f"{Path(clip).name}: {label}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from experiments import bench

    return bench.main(args.rest)


def _seconds(text: str) -> float:
    """A positive, finite number of seconds (argparse type for --timeout)."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of seconds")
    return value


SCHEME_HELP = "; ".join(f"{s.name}: {s.cost}" + (" (default)" if s.name == registry.DEFAULT else "")
                        for s in registry.SCHEMES.values())
class _WhenShown(str):
    """A help text made only when help is printed (argparse formats it with `%`): this one
    reads every scheme's class, which a command that runs one scheme should not import."""

    def __new__(cls, make):  # noqa: ANN001 - a callable returning the text
        text = super().__new__(cls, "(see --help)")
        text.make = make
        return text

    def __mod__(self, params: object) -> str:
        return self.make() % params


PARTIES_HELP = _WhenShown(lambda: "compute parties (default: the scheme's own; " + ", ".join(
    f"{s.name} takes {s.protocol.min_parties} or more" for s in registry.SCHEMES.values()
    if s.protocol.max_parties is None) + ")")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sottovoce", description=(
        "Private speech classification by secure multiparty computation."))
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser, transport: str) -> None:
        p.add_argument("--scheme", choices=list(registry.SCHEMES), default=registry.DEFAULT,
                       help=SCHEME_HELP)
        p.add_argument("--parties", type=int, default=None,
                       help=PARTIES_HELP)
        p.add_argument("--transport", choices=("tcp", "threads"), default=transport,
                       help="tcp: one process per party, TCP with mutual TLS on loopback")
        p.add_argument("--json", action="store_true", help="machine-readable output")
        p.add_argument("--timeout", type=_seconds, default=DEFAULT_TIMEOUT, metavar="SECONDS",
                       help="seconds a party waits for a peer's message before it gives up "
                       f"(default: {DEFAULT_TIMEOUT:g} s)")

    demo = sub.add_parser("demo", help="classify the bundled clips with the bundled model")
    common(demo, "tcp")
    demo.set_defaults(fn=cmd_demo)
    classify = sub.add_parser("classify", help="classify your clips with a model file")
    classify.add_argument("clips", nargs="+", help="audio files to classify")
    classify.add_argument("--model", metavar="MODEL.npz",
                          help="a model file (make one with `sottovoce import`)")
    classify.add_argument("--cluster", metavar="FILE",
                          help="classify with a running service instead (its cluster file; "
                          "README \"A service\")")
    classify.add_argument("--client", help="with --cluster: the [[client]] entry whose key "
                          "this host holds (default: the first whose key is here)")
    classify.add_argument("--lane", type=int, help="with --cluster: which lane of the service "
                          "to use (default: one at random)")
    common(classify, "tcp")
    classify.set_defaults(fn=cmd_classify)
    keys = sub.add_parser("keys", help="make this host's key for one role of a deployment "
                          "and print its fingerprint (run it on the role's own host)")
    keys.add_argument("directory", help="the key folder (a deployment's default: keys/ "
                      "next to the cluster file)")
    keys.add_argument("--id", type=int, required=True,
                      help="the role's endpoint id: compute parties 0..n-1, then the dealer "
                      "(additive, spdz2k), the client, the model owner")
    keys.add_argument("--host", help="this host's name or address (recorded in the "
                      "certificate; peers identify the key, not the host)")
    keys.add_argument("--replace", action="store_true",
                      help="replace an existing key (a new identity: re-pin it everywhere)")
    keys.set_defaults(fn=cmd_keys)
    certs = sub.add_parser("certs", help="make every party's key in one folder (a trial on "
                           "one machine only)")
    certs.add_argument("directory")
    certs.add_argument("--parties", type=int, required=True)
    certs.set_defaults(fn=cmd_certs)
    cluster = sub.add_parser("cluster", help="write the cluster file of a deployment (compute "
                             "parties, dealer, client, model owner): from every role's key "
                             "fingerprint, or with every key made here for a one-machine "
                             "trial")
    cluster.add_argument("directory")
    cluster.add_argument("--scheme", choices=list(registry.SCHEMES), default=registry.DEFAULT,
                         help=SCHEME_HELP)
    cluster.add_argument("--parties", type=int, default=None, help="compute parties")
    cluster.add_argument("--hosts", help="comma-separated host of each role, in id order")
    cluster.add_argument("--base-port", type=int, default=None,
                         help="role i listens on base+i (default: free local ports)")
    cluster.add_argument("--timeout", type=float, default=60.0)
    cluster.add_argument("--fingerprints", help="comma-separated key fingerprint of each "
                         "role in id order (hex, or the .fingerprint file `sottovoce keys` "
                         "wrote): write the shared file of a multi-host deployment; without "
                         "it every key is made here, for a trial on this machine only")
    cluster.add_argument("--keys", help="with --fingerprints: the key folder every host "
                         "keeps, relative to the cluster file (default: keys)")
    cluster.set_defaults(fn=cmd_cluster)
    party = sub.add_parser("party", help="run one compute party of a cluster")
    party.add_argument("--config", required=True)
    party.add_argument("--id", type=int, required=True)
    party.set_defaults(fn=cmd_party)
    dealer = sub.add_parser("dealer", help="run the dealer of a cluster")
    dealer.add_argument("--config", required=True)
    dealer.set_defaults(fn=cmd_dealer)
    owner = sub.add_parser("model-owner", help="run Bob: share the model's weights")
    owner.add_argument("--config", required=True)
    owner.add_argument("--model", required=True, metavar="MODEL.npz",
                       help="the model file whose weights this role enters")
    owner.set_defaults(fn=cmd_model_owner)
    client = sub.add_parser("client", help="run Alice: share clips' features, get labels")
    client.add_argument("clips", nargs="+")
    client.add_argument("--config", required=True)
    client.add_argument("--json", action="store_true")
    client.set_defaults(fn=cmd_client)
    importing.add_parser(sub)
    from experiments.service import commands as service_commands

    service_commands.add_parsers(sub)
    bench = sub.add_parser("bench", help="run the benchmarks (make bench)")
    bench.add_argument("rest", nargs=argparse.REMAINDER)
    bench.set_defaults(fn=cmd_bench)
    return parser


def _start_parties_early(args: argparse.Namespace) -> None:
    """A command that runs the parties on this machine over TCP starts the fork server they
    start from (`mpc.forking`) before it imports anything heavy, loading only what the
    chosen scheme needs: the server's imports then overlap the command's own."""
    if args.fn not in (cmd_demo, cmd_classify) or getattr(args, "cluster", None) is not None \
            or args.transport != "tcp" or args.scheme not in registry.SCHEMES:
        return
    from mpc import forking

    # the parties run this command's script again on start: with this module loaded in the
    # server, that costs nothing
    forking.preload("protocols.preload", registry.get(args.scheme).module, "nn.inference",
                    "experiments.cli")
    forking.start_server()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _start_parties_early(args)
    try:
        return args.fn(args)
    except SottovoceError as exc:
        print(f"sottovoce: error: {exc}", file=sys.stderr)
        for note in getattr(exc, "__notes__", ()):  # what the other parties saw
            print(f"  {note}", file=sys.stderr)
        return 2


def run() -> None:
    """The `sottovoce` command: `main`, then an exit without the interpreter's teardown,
    which spends ~0.4 s unloading numba's compiler after every command. Output is flushed
    and the exit handlers run first (nothing is left half-written: files are written
    atomically and closed by then)."""
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    atexit._run_exitfuncs()
    os._exit(code)


if __name__ == "__main__":
    run()
