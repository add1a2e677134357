"""The floor for `kvtool apply`: the same server-side-apply requests from a minimal concurrent client.

Standard library only (plus PyYAML for the kubeconfig): one keep-alive HTTPS connection per thread,
one PATCH (application/apply-patch+yaml) per object, as many threads as kvtool apply uses. What it
does not do is what kvtool apply adds: validation, the plan, the ownership checks. Run as its own
process, so its start-up counts like kvtool's.

Usage: python bench/ssa_floor.py KUBECONFIG MANIFESTS.yaml [--concurrency 16] [--delete]
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import queue
import ssl
import sys
import tempfile
import threading
import time
import urllib.parse
from typing import Any

import yaml


def connection_factory(kubeconfig: str) -> tuple[Any, str]:
    with open(kubeconfig) as f:
        cfg = yaml.safe_load(f)
    ctx_name = cfg.get("current-context")
    ctx = next(c["context"] for c in cfg["contexts"] if c["name"] == ctx_name)
    cluster = next(c["cluster"] for c in cfg["clusters"] if c["name"] == ctx["cluster"])
    user = next(u["user"] for u in cfg["users"] if u["name"] == ctx["user"])
    tls = ssl.create_default_context(cadata=base64.b64decode(cluster["certificate-authority-data"]).decode())
    token = user.get("token")
    if "client-certificate-data" in user:
        with tempfile.TemporaryDirectory() as tmp:
            cert, key = os.path.join(tmp, "c"), os.path.join(tmp, "k")
            for path, field in ((cert, "client-certificate-data"), (key, "client-key-data")):
                with open(path, "wb") as f:
                    f.write(base64.b64decode(user[field]))
            tls.load_cert_chain(cert, key)
    url = urllib.parse.urlsplit(cluster["server"])
    auth = f"Bearer {token}" if token else ""
    return (lambda: http.client.HTTPSConnection(url.hostname, url.port or 443, context=tls, timeout=60)), auth


def path_of(doc: dict[str, Any]) -> str:
    group_version = doc["apiVersion"]
    plural = doc["kind"].lower() + "s"
    base = f"/apis/{group_version}" if "/" in group_version else f"/api/{group_version}"
    meta = doc["metadata"]
    return f"{base}/namespaces/{meta.get('namespace', 'default')}/{plural}/{meta['name']}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("kubeconfig")
    parser.add_argument("manifests")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--delete", action="store_true", help="DELETE each object instead")
    args = parser.parse_args()
    connect, auth = connection_factory(args.kubeconfig)
    with open(args.manifests) as f:
        text = f.read()
    try:  # the bench writes JSON documents between `---` lines: no YAML parser needed
        docs = [json.loads(chunk) for chunk in text.split("\n---\n") if chunk.strip()]
    except json.JSONDecodeError:
        docs = [d for d in yaml.load_all(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)) if d]
    work: queue.Queue[dict[str, Any]] = queue.Queue()
    for d in docs:
        work.put(d)
    failures: list[str] = []

    def worker() -> None:
        conn = connect()
        while True:
            try:
                doc = work.get_nowait()
            except queue.Empty:
                conn.close()
                return
            headers = {"Authorization": auth} if auth else {}
            if args.delete:
                conn.request("DELETE", path_of(doc), headers=headers)
            else:
                body = json.dumps(doc).encode()
                conn.request("PATCH", path_of(doc) + "?fieldManager=ssa-floor&force=true", body=body,
                             headers={**headers, "Content-Type": "application/apply-patch+yaml"})
            resp = conn.getresponse()
            resp.read()
            if resp.status >= 300 and not (args.delete and resp.status == 404):
                failures.append(f"{doc['metadata']['name']}: HTTP {resp.status}")

    started = time.monotonic()
    threads = [threading.Thread(target=worker) for _ in range(max(1, args.concurrency))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(json.dumps({"objects": len(docs), "seconds": round(time.monotonic() - started, 3),
                      "failures": failures[:5]}))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
