"""A pod's plain process for network tests and bench/net.py: every GET answers "kvtool pod <its pod's name>".

Run as `python3 -c <this file's text> PORT` in a container of the launcher image; it exits at once on
SIGTERM (as PID 1 of its container it would otherwise ignore it and hold the deletion for the grace period).
"""

import http.server
import os
import signal
import sys

signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
BODY = f"kvtool pod {os.environ['KVTOOL_POD_NAME']}\n".encode()


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(BODY)))
        self.end_headers()
        self.wfile.write(BODY)


http.server.ThreadingHTTPServer(("", int(sys.argv[1])), Handler).serve_forever()
