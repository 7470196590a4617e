#!/usr/bin/env python3
"""Bench/history: `syncctl snapshots` and `store gc` on a store holding a long history (issue 25, item 7).

A SeaweedFS store on loopback gets one real snapshot from a push, then N-1 more refs naming the same manifest
(written directly with boto3, one second apart): a project with N snapshots. Then, each cold (a new state
directory: no ref read before) and warm (the refs cached from the cold run):

  snapshots   syncctl snapshots --json, on loopback and through wanem at --delay-ms one way
  gc          syncctl store gc --keep N (nothing to delete: every ref and the manifest are read)

The target: snapshots for 1,000 snapshots under 1 s on loopback and under 3 s through a 25 ms link.

usage: Bench/history.py [--release DIR] [--refs 1000] [--delay-ms 25]
(boto3 comes from the moto venv that `make test-deps` installs; the script re-runs itself there.)
"""
import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

MOTO_PYTHON = "/opt/syncd-test/moto/bin/python"
try:
    import boto3
except ImportError:
    if os.path.exists(MOTO_PYTHON) and sys.executable != MOTO_PYTHON:
        os.execv(MOTO_PYTHON, [MOTO_PYTHON] + sys.argv)
    sys.exit("history: needs boto3 (make test-deps installs it in /opt/syncd-test/moto)")

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "lib"))
import weed  # noqa: E402
KEY, SECRET = "AKIAHISTORYBENCH0001", "historybenchsecret000000000000000000000"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ref_key(project, manifest, nanos):
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(nanos // 1_000_000_000)) + ".%09dZ" % (nanos % 1_000_000_000)
    return f"team/projects/{project}/snapshots/{stamp}-{manifest[:12]}"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--release", default=os.path.join(HERE, "..", ".build", "release"))
    ap.add_argument("--refs", type=int, default=1000)
    ap.add_argument("--delay-ms", type=int, default=25)
    args = ap.parse_args()
    syncctl = os.path.join(os.path.abspath(args.release), "syncctl")
    work = tempfile.mkdtemp(prefix="syncd-history.")
    procs = []
    try:
        port = weed.start(work, procs, KEY, SECRET)
        endpoint = f"http://127.0.0.1:{port}"
        s3 = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=KEY, aws_secret_access_key=SECRET, region_name="us-east-1")
        s3.create_bucket(Bucket="hist")
        project = f"{work}/proj"
        os.makedirs(f"{project}/src")
        os.makedirs(f"{work}/host")
        for i in range(20):
            with open(f"{project}/src/m{i}.py", "w") as f:
                f.write(f"value = {i}\n")

        def configure(ep):
            with open(f"{project}/syncd.yaml", "w") as f:
                f.write(f"name: proj\nhosts: [\"local:{work}/host\"]\nstore: s3://hist/team\nendpoint: {ep}\n")
        configure(endpoint)
        env = dict(os.environ, AWS_ACCESS_KEY_ID=KEY, AWS_SECRET_ACCESS_KEY=SECRET, XDG_STATE_HOME=f"{work}/state0")
        push = subprocess.run([syncctl, "push", project, "--json"], env=env, capture_output=True, text=True)
        if push.returncode != 0:
            sys.exit("history: push failed: " + push.stderr)
        first = s3.list_objects_v2(Bucket="hist", Prefix="team/projects/proj/snapshots/")["Contents"][0]["Key"]
        body = s3.get_object(Bucket="hist", Key=first)["Body"].read().decode()
        manifest = next(line.split()[1] for line in body.splitlines() if line.startswith("manifest "))
        start = time.time_ns() - args.refs * 1_000_000_000
        for n in range(args.refs - 1):
            nanos = start + n * 1_000_000_000
            text = body.replace(next(l for l in body.splitlines() if l.startswith("created ")), f"created {nanos}")
            s3.put_object(Bucket="hist", Key=ref_key("proj", manifest, nanos), Body=text.encode())

        wanem_port = free_port()
        procs.append(subprocess.Popen(["python3",
                                       os.path.join(HERE, "..", "..", "shared", "tools", "wanem"),
                                       "--listen", f"127.0.0.1:{wanem_port}", "--target", f"127.0.0.1:{port}",
                                       "--delay-ms", str(args.delay_ms)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        time.sleep(1)

        rows = []
        for link, ep in [("loopback", endpoint), (f"{args.delay_ms} ms", f"http://127.0.0.1:{wanem_port}")]:
            configure(ep)
            state = f"{work}/state-{len(rows)}"
            for temperature in ["cold", "warm"]:
                e = dict(env, XDG_STATE_HOME=state)
                t = time.time()
                out = subprocess.run([syncctl, "snapshots", project, "--json"], env=e, capture_output=True, text=True)
                took = time.time() - t
                if out.returncode != 0:
                    sys.exit("history: snapshots failed: " + out.stderr)
                count = len(json.loads(out.stdout)["snapshots"])
                t = time.time()
                gc = subprocess.run([syncctl, "store", "gc", project, "--keep", str(args.refs * 2), "--json"], env=e,
                                    capture_output=True, text=True)
                gc_took = time.time() - t
                if gc.returncode != 0:
                    sys.exit("history: gc failed: " + gc.stderr)
                rows.append((link, temperature, count, took, gc_took))
        print(f"\n{args.refs} snapshots of one project (SeaweedFS; wanem {args.delay_ms} ms each way for the second link)\n")
        print("| link | refs cached | listed | snapshots | store gc |")
        print("|---|---|---|---|---|")
        for link, temperature, count, took, gc_took in rows:
            print(f"| {link} | {'no (new state dir)' if temperature == 'cold' else 'yes'} | {count} | {took:.2f} s | {gc_took:.2f} s |")
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
