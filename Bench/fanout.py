#!/usr/bin/env python3
"""Bench/fanout: one push to 1, 2, 4 and 8 GPU hosts, with and without the snapshot store.

Every host is a throwaway sshd on loopback with a home of its own. The laptop's one uplink, to the hosts and
to the store alike, is emulated by Bench/uplink.py (wanem's link model, one cap shared by every connection);
the hosts reach the store (SeaweedFS) directly, as hosts in the store's region do. For each host count:

  store    syncctl push with hosts: [...] and store: (each chunk leaves the laptop once)
  rsync    rsync -a to every host at once, through the same uplink (what SkyPilot does)
  serial   syncctl push to one host after the other, without a store

each for the initial push of the project and then for a 5-file edit. Bytes are counted at the uplink.

usage: Bench/fanout.py [--release DIR] [--size-mb 400] [--hosts 1,2,4,8] [--delay-ms 25] [--rate-mbit 100]

With --light 1,10,100, light hosts instead (issue 30): each host a `local:` agent of its own (a directory, no
sshd), every one of them in one store push, for projects of --files 1000,100000 files (12 KB each up to 12 MB
in all, smaller beyond). For a first push and then a 5-file edit: each host's link bytes (what the push counted
on it, both ways), the laptop's bytes to the store (at a counting proxy in front of SeaweedFS), the wall time of
the laptop's part (read, hash, upload, snapshot) and of the whole push, and syncctl's peak RSS and threads.

usage: Bench/fanout.py --light 1,10,100 [--files 1000,100000] [--release DIR]
"""
import argparse
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "lib"))
import weed  # noqa: E402
ADMIN = ("AKIAFANOUTBENCH00001", "fanoutbenchsecret0000000000000000000000")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, seconds=30):
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    sys.exit(f"fanout: nothing listens on {port} after {seconds} s")


class Bench:
    def __init__(self, args):
        self.args = args
        self.release = os.path.abspath(args.release)
        self.work = tempfile.mkdtemp(prefix="syncd-fanout.")
        self.procs = []
        self.hosts = max(int(n) for n in args.hosts.split(","))
        self.committed = {}

    # --- servers ---------------------------------------------------------------------------------------
    def start(self):
        w = self.work
        self.s3_port = weed.start(w, self.procs, *ADMIN)

        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", f"{w}/client"], check=True)
        os.makedirs("/run/sshd", exist_ok=True)
        self.sshd_ports = []
        for i in range(1, self.hosts + 1):
            d = f"{w}/host{i}"
            os.makedirs(f"{d}/home")
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", f"{d}/host_key"], check=True)
            shutil.copy(f"{w}/client.pub", f"{d}/authorized_keys")
            port = free_port()
            with open(f"{d}/sshd_config", "w") as f:
                f.write(f"Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/host_key\nAuthorizedKeysFile {d}/authorized_keys\n"
                        f"PidFile {d}/sshd.pid\nStrictModes no\nUsePAM no\nPasswordAuthentication no\n"
                        f"KbdInteractiveAuthentication no\nPubkeyAuthentication yes\nPermitRootLogin yes\n"
                        f"SetEnv HOME={d}/home\nLogLevel ERROR\nMaxStartups 100\n")
            self.procs.append(subprocess.Popen(["/usr/sbin/sshd", "-D", "-f", f"{d}/sshd_config", "-E", f"{d}/sshd.log"]))
            self.sshd_ports.append(port)
        for p in self.sshd_ports:
            wait_port(p)

        # The laptop's uplink in front of every host and of the store.
        self.proxy_ports = [free_port() for _ in self.sshd_ports]
        self.store_proxy = free_port()
        pairs = [f"127.0.0.1:{lp}=127.0.0.1:{tp}" for lp, tp in zip(self.proxy_ports, self.sshd_ports)]
        pairs.append(f"127.0.0.1:{self.store_proxy}=127.0.0.1:{self.s3_port}")
        self.stats_file = f"{w}/uplink.json"
        self.procs.append(subprocess.Popen(
            [sys.executable, f"{HERE}/uplink.py", "--delay-ms", str(self.args.delay_ms), "--rate-mbit", str(self.args.rate_mbit),
             "--stats", self.stats_file] + sum((["--pair", p] for p in pairs), [])))
        for p in self.proxy_ports + [self.store_proxy]:
            wait_port(p)

        with open(f"{w}/ssh_config", "w") as f:
            for i, port in enumerate(self.proxy_ports, 1):
                f.write(f"Host h{i}\n  HostName 127.0.0.1\n  Port {port}\n  User root\n  IdentityFile {w}/client\n"
                        f"  UserKnownHostsFile {w}/known_hosts\n  StrictHostKeyChecking accept-new\n")
        open(f"{w}/known_hosts", "w").close()

        # The agent is installed on each host at first contact (a 14 MB binary over the uplink, once per host):
        # done here, outside every measurement.
        warm = f"{w}/warmup"
        os.makedirs(warm)
        for i in range(1, self.hosts + 1):
            with open(f"{warm}/syncd.yaml", "w") as f:
                f.write(f"name: warmup\nremote: h{i}\nssh_config: {w}/ssh_config\nagent_path: {self.release}/syncd-agent\n")
            subprocess.run([f"{self.release}/syncctl", "push", warm, "--state-dir", f"{w}/warmup-state"], env=self.env(),
                           check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def stop(self):
        for p in reversed(self.procs):
            p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(self.work, ignore_errors=True)

    # --- helpers ---------------------------------------------------------------------------------------
    def uplink_bytes(self):
        with open(self.stats_file) as f:
            return json.load(f)["up_bytes"]

    def env(self):
        e = dict(os.environ)
        e.update({"AWS_ACCESS_KEY_ID": ADMIN[0], "AWS_SECRET_ACCESS_KEY": ADMIN[1], "SSH_AUTH_SOCK": "", "SYNCD_TRACE": "1"})
        return e

    def make_bucket(self, name):
        subprocess.run(["curl", "-sf", "-X", "PUT", "--aws-sigv4", "aws:amz:us-east-1:s3", "--user", f"{ADMIN[0]}:{ADMIN[1]}",
                        f"http://127.0.0.1:{self.s3_port}/{name}"], check=True)

    def wipe_hosts(self):
        for i in range(1, self.hosts + 1):
            shutil.rmtree(f"{self.work}/host{i}/home/proj", ignore_errors=True)
            shutil.rmtree(f"{self.work}/host{i}/home/rsync", ignore_errors=True)
        shutil.rmtree(f"{self.work}/state", ignore_errors=True)
        subprocess.run(["sync"])

    def make_project(self):
        p = f"{self.work}/proj"
        os.makedirs(f"{p}/data")
        rng = random.Random(7)
        small = 1000
        small_bytes = small * 4096
        big = (self.args.size_mb << 20) - small_bytes
        for i in range(4):
            with open(f"{p}/data/shard{i}.bin", "wb") as f:
                left = big // 4
                while left > 0:
                    n = min(left, 8 << 20)
                    f.write(os.urandom(n))
                    left -= n
        for i in range(small):
            os.makedirs(f"{p}/src/pkg{i % 20}", exist_ok=True)
            with open(f"{p}/src/pkg{i % 20}/m{i}.py", "w") as f:
                f.write(f"# module {i}\n" + "".join(f"value_{j} = {rng.random()!r}\n" for j in range(150))[:4000])
        self.project = p

    def edit(self, round_):
        for i in range(5):
            with open(f"{self.project}/src/pkg{i}/m{i}.py", "a") as f:
                f.write(f"edited = {round_}\n")

    def config(self, hosts, bucket=None):
        lines = ["name: proj", f"ssh_config: {self.work}/ssh_config", f"agent_path: {self.release}/syncd-agent"]
        if bucket:
            lines += ["hosts: [" + ", ".join(f"h{i}" for i in range(1, hosts + 1)) + "]", f"store: s3://{bucket}/team",
                      f"endpoint: http://127.0.0.1:{self.store_proxy}", f"host_endpoint: http://127.0.0.1:{self.s3_port}"]
        else:
            lines.append(f"remote: h{hosts}")
        with open(f"{self.project}/syncd.yaml", "w") as f:
            f.write("\n".join(lines) + "\n")

    def timed(self, commands, parallel):
        """Runs the commands (all at once or one after another); returns (seconds, uplink bytes). What the last
        one printed is in self.last_output."""
        before = self.uplink_bytes()
        t0 = time.monotonic()
        if parallel:
            running = [subprocess.Popen(c, env=self.env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for c in commands]
            for c, p in zip(commands, running):
                _, err = p.communicate()
                if p.returncode != 0:
                    sys.exit(f"fanout: {' '.join(c)} failed: {err.decode()[-2000:]}")
        else:
            for c in commands:
                r = subprocess.run(c, env=self.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
                if r.returncode != 0:
                    sys.exit(f"fanout: {' '.join(c)} failed: {r.stderr.decode()[-2000:]}")
                self.last_output = r.stdout.decode()
                self.last_trace = r.stderr.decode()
        seconds = time.monotonic() - t0
        time.sleep(0.3)  # the proxy's counts settle
        return seconds, self.uplink_bytes() - before

    def syncctl(self):
        return [f"{self.release}/syncctl", "push", self.project, "--state-dir", f"{self.work}/state", "--json"]

    # --- scenarios -------------------------------------------------------------------------------------
    def run_store(self, n):
        self.wipe_hosts()
        bucket = f"fanout{n}x{int(time.time())}"
        self.make_bucket(bucket)
        self.config(n, bucket)
        first = self.timed([self.syncctl()], False)
        self.committed[n] = self.report(first)
        self.edit(f"store{n}")
        edit = self.timed([self.syncctl()], False)
        self.report(edit)
        return first, edit

    def report(self, measured):
        """What syncctl counted itself, beside what the uplink saw; returns when the snapshot was in the store
        (seconds from the start: the laptop's upload is over then, the hosts' reading from the store follows)."""
        stats = json.loads(self.last_output)
        hosts = stats.get("hosts") or []
        committed = None
        for line in self.last_trace.splitlines():
            if "store push: uploaded" in line:
                committed = float(line.split("ms")[0].strip("[ ")) / 1000
        print(f"    uplink {measured[1] / 1e6:.2f} MB; syncctl: uploaded {stats.get('bytes_uploaded', 0) / 1e6:.2f} MB, "
              f"over SSH {sum(h.get('bytes_sent', 0) for h in hosts) / 1e6:.3f} MB to {len(hosts)} hosts; "
              f"snapshot in the store at {committed or 0:.2f} s", file=sys.stderr)
        return committed

    def run_serial(self, n):
        self.wipe_hosts()
        def all_hosts():
            total_s, total_b = 0.0, 0
            for i in range(1, n + 1):
                self.config(i)
                s, b = self.timed([self.syncctl()], False)
                total_s += s
                total_b += b
            return total_s, total_b
        first = all_hosts()
        self.edit(f"serial{n}")
        return first, all_hosts()

    def run_rsync(self, n):
        self.wipe_hosts()
        ssh = f"ssh -F {self.work}/ssh_config -o BatchMode=yes -o LogLevel=ERROR"
        commands = [["rsync", "-a", "--delete", "--exclude", "syncd.yaml", "-e", ssh, self.project + "/",
                     f"h{i}:{self.work}/host{i}/home/rsync/"]
                    for i in range(1, n + 1)]
        first = self.timed(commands, True)
        self.edit(f"rsync{n}")
        return first, self.timed(commands, True)


class LightBench:
    """Light hosts: `local:` agents, one directory each, all in one push through the store."""

    def __init__(self, args):
        self.args = args
        self.release = os.path.abspath(args.release)
        self.work = tempfile.mkdtemp(prefix="syncd-fanout-light.")
        self.procs = []

    def start(self):
        self.s3_port = weed.start(self.work, self.procs, *ADMIN)
        # Only the laptop's way to the store is counted: no delay, no cap.
        self.store_proxy = free_port()
        self.stats_file = f"{self.work}/uplink.json"
        self.procs.append(subprocess.Popen(
            [sys.executable, f"{HERE}/uplink.py", "--delay-ms", "0", "--rate-mbit", "100000", "--stats", self.stats_file,
             "--pair", f"127.0.0.1:{self.store_proxy}=127.0.0.1:{self.s3_port}"]))
        wait_port(self.store_proxy)

    stop = Bench.stop
    uplink_bytes = Bench.uplink_bytes
    env = Bench.env
    make_bucket = Bench.make_bucket

    def make_project(self, files):
        p = f"{self.work}/proj{files}"
        rng = random.Random(files)
        size = max(1024, min(12 << 10, (300 << 20) // files))
        for i in range(files):
            d = f"{p}/data/d{i // 100:05d}"
            if i % 100 == 0:
                os.makedirs(d)
            with open(f"{d}/f{i}.bin", "wb") as f:
                f.write(rng.randbytes(size))
        return p, size

    def push(self, project):
        """One store push to every host; (wall s, the laptop's part s, store bytes up, peak RSS MiB, the JSON)."""
        before = self.uplink_bytes()
        t0 = time.monotonic()
        out, err = tempfile.TemporaryFile(mode="w+"), tempfile.TemporaryFile(mode="w+")
        p = subprocess.Popen(["/usr/bin/time", "-f", "%M", f"{self.release}/syncctl", "push", project, "--state-dir",
                              f"{self.work}/state", "--json"], env=self.env(), stdout=out, stderr=err, text=True)
        threads = 0
        while p.poll() is None:  # syncctl's threads, sampled every 10 ms (it is time's child)
            try:
                for child in open(f"/proc/{p.pid}/task/{p.pid}/children").read().split():
                    for line in open(f"/proc/{child}/status"):
                        if line.startswith("Threads:"):
                            threads = max(threads, int(line.split()[1]))
            except OSError:
                pass
            time.sleep(0.01)
        wall = time.monotonic() - t0
        out.seek(0)
        err.seek(0)
        r = subprocess.CompletedProcess(p.args, p.returncode, out.read(), err.read())
        if r.returncode != 0:
            sys.exit(f"fanout: push of {project} failed: {r.stderr[-3000:]}")
        laptop = None
        for line in r.stderr.splitlines():
            if "store push: uploaded" in line:
                laptop = float(line.split("ms")[0].strip("[ ")) / 1000
        peak = int(r.stderr.strip().splitlines()[-1]) / 1024
        time.sleep(0.3)  # the proxy's counts settle
        return wall, laptop or 0.0, self.uplink_bytes() - before, peak, json.loads(r.stdout), threads

    def run(self, files, hosts):
        project, size = self.make_project(files) if files not in getattr(self, "projects", {}) else self.projects[files]
        self.projects = getattr(self, "projects", {})
        self.projects[files] = (project, size)
        shutil.rmtree(f"{self.work}/state", ignore_errors=True)
        for i in range(1, 1000):
            shutil.rmtree(f"{self.work}/h{i}", ignore_errors=True)
        bucket = f"light{files}x{hosts}x{int(time.time())}"
        self.make_bucket(bucket)
        roots = [f"{self.work}/h{i}" for i in range(1, hosts + 1)]
        for r in roots:
            os.makedirs(r)
        with open(f"{project}/syncd.yaml", "w") as f:
            f.write(f"name: proj\nhosts: [{', '.join('local:' + r for r in roots)}]\nstore: s3://{bucket}/team\n"
                    f"endpoint: http://127.0.0.1:{self.store_proxy}\nhost_endpoint: http://127.0.0.1:{self.s3_port}\n"
                    f"agent_path: {self.release}/syncd-agent\n")
        row = {"files": files, "hosts": hosts, "size": size}
        row["first"] = self.push(project)
        for i in range(5):
            with open(f"{project}/data/d{i:05d}/f{i * 100}.bin", "ab") as f:
                f.write(f"edited {hosts}\n".encode())
        row["edit"] = self.push(project)
        for phase in ("first", "edit"):
            stats = row[phase][4]
            per_host = [h.get("bytes_sent", 0) + h.get("bytes_received", 0) for h in stats.get("hosts") or []]
            failed = [h["host"] for h in stats.get("hosts") or [] if not h.get("ok")]
            if failed or len(per_host) != hosts:
                sys.exit(f"fanout: {phase} push to {hosts} hosts: {len(per_host)} answered, failed: {failed[:3]}")
            row[phase + " link"] = (max(per_host), sum(per_host))
        print(f"  {files} files, {hosts} hosts: first {row['first'][0]:.1f} s, edit {row['edit'][0]:.2f} s", file=sys.stderr, flush=True)
        return row


def light_main(args):
    b = LightBench(args)
    try:
        b.start()
        rows = [b.run(int(n), int(h)) for n in args.files.split(",") for h in args.light.split(",")]
    finally:
        b.stop()
    print("\nlight hosts (local: agents), one store push to all of them; link bytes are each host's, both ways\n")
    print("| files | hosts | push | per-host link KB (largest) | all links MB | laptop to store MB | laptop's part s | whole push s "
          "| syncctl peak MiB | syncctl peak threads |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        for phase in ("first", "edit"):
            wall, laptop, store, peak, _, threads = r[phase]
            largest, total = r[phase + " link"]
            print(f"| {r['files']:,} ({r['size'] // 1024} KB each) | {r['hosts']} | {phase} | {largest / 1e3:.1f} | {total / 1e6:.2f} | "
                  f"{store / 1e6:.2f} | {laptop:.2f} | {wall:.2f} | {peak:.0f} | {threads} |")
    one = {(r["files"]): r for r in rows if r["hosts"] == 1}
    for r in rows:
        if r["hosts"] > 1 and r["files"] in one:
            print(f"- {r['files']:,} files, {r['hosts']} hosts: syncctl peak {r['first'][3] - one[r['files']]['first'][3]:+.0f} MiB "
                  f"over one host's")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--release", default=os.path.join(HERE, "..", ".build", "release"))
    p.add_argument("--size-mb", type=int, default=400)
    p.add_argument("--hosts", default="1,2,4,8")
    p.add_argument("--delay-ms", type=float, default=25)
    p.add_argument("--rate-mbit", type=float, default=100)
    p.add_argument("--only", default="store,rsync,serial")
    p.add_argument("--light", default="", help="light hosts: local: agents, at these host counts (e.g. 1,10,100)")
    p.add_argument("--files", default="1000,100000", help="with --light: the projects' file counts")
    args = p.parse_args()
    if args.light:
        return light_main(args)
    b = Bench(args)
    try:
        b.start()
        b.make_project()
        rows = []
        for n in [int(x) for x in args.hosts.split(",")]:
            for kind in args.only.split(","):
                first, edit = getattr(b, f"run_{kind}")(n)
                rows.append((kind, n, first, edit))
                print(f"  {kind:6} {n} hosts: initial {first[0]:7.2f} s {first[1] / 1e6:9.1f} MB up; "
                      f"5-file edit {edit[0]:6.2f} s {edit[1] / 1e6:7.2f} MB up", file=sys.stderr, flush=True)
        print(f"\nproject: {args.size_mb} MB (4 random shards + 1000 small files); uplink {args.delay_ms:g} ms one-way, "
              f"{args.rate_mbit:g} Mbit/s, shared by every connection of the laptop; hosts to the store direct\n")
        print("| method | hosts | initial s | initial MB up | edit s | edit MB up |")
        print("|---|---|---|---|---|---|")
        for kind, n, first, edit in rows:
            print(f"| {kind} | {n} | {first[0]:.2f} | {first[1] / 1e6:.1f} | {edit[0]:.2f} | {edit[1] / 1e6:.3f} |")
        if b.committed:
            print("\nstore: the laptop's part (read, hash, upload, snapshot) ends at "
                  + ", ".join(f"{t:.1f} s for {n} host{'s' if n > 1 else ''}" for n, t in sorted(b.committed.items()) if t)
                  + "; the rest of the initial time is the hosts reading from the store and writing, all on this machine.")
        base = {k: (f, e) for k, n, f, e in rows if n == 1}
        print("\n| method | hosts | uplink bytes vs 1 host | wall vs 1 host | edit wall vs 1 host |")
        print("|---|---|---|---|---|")
        for kind, n, first, edit in rows:
            if kind in base and n != 1:
                f1, e1 = base[kind]
                print(f"| {kind} | {n} | {first[1] / f1[1]:.2f}x | {first[0] / f1[0]:.2f}x | {edit[0] / e1[0]:.2f}x |")
    finally:
        b.stop()


if __name__ == "__main__":
    main()
