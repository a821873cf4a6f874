"""Optional Prometheus metrics of one role, in the text exposition format, on a local port.

`[service] metrics_port = P` serves them at http://127.0.0.1:(P + k)/metrics, where k counts
the roles in order (compute parties, the dealer) and lanes after lane 0. Only counts and
times, never a value.
"""

from __future__ import annotations

import http.server
import threading
from collections.abc import Callable


def exposition(stats: dict, labels: dict[str, str]) -> str:
    """The text format of `stats` (name -> (help, type, value))."""
    tags = ",".join(f'{k}="{v}"' for k, v in labels.items())
    lines = []
    for name, (text, kind, value) in stats.items():
        lines += [f"# HELP sottovoce_{name} {text}", f"# TYPE sottovoce_{name} {kind}",
                  f"sottovoce_{name}{{{tags}}} {float(value):g}"]
    return "\n".join(lines) + "\n"


def serve_metrics(port: int, render: Callable[[], str]) -> http.server.ThreadingHTTPServer:
    """Serve `render()` at /metrics on 127.0.0.1:`port`, from a daemon thread."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the standard library's name
            if self.path.rstrip("/") != "/metrics":
                self.send_error(404)
                return
            body = render().encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:  # quiet: the role logs requests
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True,
                     name="sottovoce-metrics").start()
    return server
