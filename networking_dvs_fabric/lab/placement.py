"""An empty placement service: the lab's stand-in for the cloud's placement.

Neutron 29 always asks placement about the segments it deletes: every network delete
loads the segments plugin (``neutron/services/segments/db.py``) whose Nova notifier
then looks up and deletes the segment's resource provider. No option turns that off,
and with no placement to ask the notifier's thread dies with a traceback (the quiet
"placement not found" branch it has is no longer reached with neutron-lib 5). A cloud
without routed networks has placement, holding no segment providers: this is that
placement. Reads and deletes answer 404 (nothing there), as placement does; writes
answer 501, so that a lab that ever needs a real placement says so loudly.

Runs as a lab daemon: ``python -m networking_dvs_fabric.lab.placement HOST PORT``.
"""
from __future__ import annotations

import http.server
import json
import sys
from typing import Any


class _EmptyPlacement(http.server.BaseHTTPRequestHandler):
    server_version = "lab-placement"

    def _answer(self, status: int, title: str, detail: str) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        body = json.dumps({"errors": [{"status": status, "title": title,
                                       "detail": detail}]}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _nothing_here(self) -> None:
        self._answer(404, "Not Found", f"{self.path}: the lab's placement holds nothing")

    def _refused(self) -> None:
        self._answer(501, "Not Implemented",
                     f"{self.command} {self.path}: the lab's placement is read-only")

    do_GET = do_DELETE = _nothing_here
    do_POST = do_PUT = _refused

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: one line per Neutron lookup would only hide the lab's real logs."""


def main(argv: list[str]) -> int:
    host, port = argv[0], int(argv[1])
    server = http.server.ThreadingHTTPServer((host, port), _EmptyPlacement)
    print(f"placement (empty) listening on http://{host}:{port}", flush=True)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
