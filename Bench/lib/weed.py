"""SeaweedFS for the benches: `weed server` with an S3 endpoint on free loopback ports, one admin identity."""
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import time
import urllib.request


def binary():
    for c in [os.environ.get("SYNCD_WEED", ""), "/opt/syncd-test/seaweedfs/bin/weed", shutil.which("weed") or ""]:
        if c and os.access(c, os.X_OK):
            return c
    sys.exit("no weed binary (make test-deps installs SeaweedFS)")


def _is_free(port):
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def start(work, procs, key, secret):
    """Starts SeaweedFS under WORK/weed (its process appended to PROCS); returns the S3 port once it answers."""
    os.makedirs(f"{work}/weed/data")
    with open(f"{work}/weed/s3.json", "w") as f:
        json.dump({"identities": [{"name": "admin", "credentials": [{"accessKey": key, "secretKey": secret}],
                                   "actions": ["Admin", "Read", "List", "Tagging", "Write"]}]}, f)
    for _ in range(1000):
        base = random.randint(12000, 19000)  # weed puts each HTTP port's gRPC port 10000 above it
        ports = [base, base + 1, base + 2, base + 3]
        if all(_is_free(p) and _is_free(p + 10000) for p in ports):
            break
    log = open(f"{work}/weed/log", "w")
    procs.append(subprocess.Popen(
        [binary(), "server", f"-dir={work}/weed/data", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
         f"-master.port={ports[0]}", f"-volume.port={ports[1]}", "-filer", f"-filer.port={ports[2]}",
         "-s3", f"-s3.port={ports[3]}", f"-s3.config={work}/weed/s3.json", "-s3.port.iceberg=0", "-s3.port.lance=0",
         "-master.telemetry=false", "-master.volumeSizeLimitMB=1024", "-volume.max=0"], stdout=log, stderr=log))
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{ports[3]}/healthz", timeout=1)
            return ports[3]
        except Exception:
            time.sleep(0.3)
    sys.exit(f"SeaweedFS did not start; see {work}/weed/log")
