"""A mirror of CommonCrawl's layout on 127.0.0.1, built from ../shared/data, for the ingest tests.

Every path answers 503 on its first request (as the real service does under load); files named in
`slow` are served in small chunks with pauses, so a test can kill a run while they download; the
process that asks for a file named in `killing` is killed with SIGKILL from outside, as the kernel's
OOM killer would (the fault a run must survive: its code knows nothing of the test)."""

from __future__ import annotations

import gzip
import os
import shutil
import signal
import threading
import time
from collections import Counter
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import psutil

SNAPSHOT = "CC-MAIN-2020-05"
SEGMENT = "1579250589560.16"


def build_mirror(root: Path, files: list[Path], listed_but_missing: list[str] = (),
                 corrupt: list[str] = ()) -> list[str]:
    """Copies `files` under crawl-data/SNAPSHOT/segments/SEGMENT/warc/, adds `corrupt` segments
    (gzip, but no WARC inside) and writes warc.paths.gz."""
    paths = []
    for name in corrupt:
        path = f"crawl-data/{SNAPSHOT}/segments/{SEGMENT}/warc/{name}"
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_bytes(gzip.compress(b"<html>this is no WARC file</html>\n" * 100))
        paths.append(path)
    for source in files:
        path = f"crawl-data/{SNAPSHOT}/segments/{SEGMENT}/warc/{source.name}"
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(source, root / path)
        paths.append(path)
    paths += [f"crawl-data/{SNAPSHOT}/segments/{SEGMENT}/warc/{name}" for name in listed_but_missing]
    with gzip.open(root / f"crawl-data/{SNAPSHOT}/warc.paths.gz", "wt") as listing:
        listing.write("\n".join(paths) + "\n")
    return paths


class MirrorHandler(SimpleHTTPRequestHandler):
    requests_seen: Counter
    slow: set
    killing: set

    def do_GET(self):
        self.requests_seen[self.path] += 1
        if self.requests_seen[self.path] == 1:
            self.send_error(503, "Slow Down")
            return
        if Path(self.path).name in self.killing:
            return self.kill_requester()
        if Path(self.path).name in self.slow:
            return self.send_slowly()
        super().do_GET()

    def kill_requester(self):
        """SIGKILL to the process whose socket is the other end of this request's connection."""
        port = self.client_address[1]
        for connection in psutil.net_connections(kind="tcp"):
            if connection.laddr and connection.laddr.port == port and connection.pid:
                os.kill(connection.pid, signal.SIGKILL)

    def send_slowly(self):
        body = Path(self.translate_path(self.path)).read_bytes()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        for start in range(0, len(body), 16384):
            self.wfile.write(body[start:start + 16384])
            time.sleep(0.3)

    def log_message(self, *args):
        pass


class Mirror:
    def __init__(self, root: Path, slow: set[str] = frozenset(), killing: set[str] = frozenset()):
        handler = type("Handler", (MirrorHandler,), {"requests_seen": Counter(), "slow": set(slow),
                                                      "killing": set(killing)})
        self.requests_seen = handler.requests_seen
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), partial(handler, directory=str(root)))
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> Mirror:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
