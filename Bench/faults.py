#!/usr/bin/env python3
"""A fault campaign over real SSH (issue 24): pushes and pulls through a throwaway sshd and a wanem link, each hit
by one fault at a random moment, and after each the two promises checked:

- old-or-new: every file at a final path (on the remote after a push, here after a pull) is one whole version of
  it that was written at some point, never a mix and never a torn one;
- convergence: the next run without a fault exits 0 and leaves both sides equal, with no temporary file left.

Faults: kill -9 of syncctl, kill -9 of the agent, kill -9 of the sshd session, the link cut (wanem killed and
started again), and the link stalled (wanem stopped with SIGSTOP for longer than `timeout:`: the run must fail by
itself, in about that time). Some rounds use extra streams. Prints a markdown table per fault and writes JSON.

    python3 Bench/faults.py --faults 150 [--bin .build/release] [--seed 24]
"""
import argparse
import hashlib
import json
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
SSHD_LIB = os.path.join(HERE, "lib", "sshd.sh")
WANEM = os.path.normpath(os.path.join(REPO, "..", "shared", "tools", "wanem"))
FAULTS = ["kill-client", "kill-agent", "kill-session", "cut-link", "stall-link"]
TIMEOUT = 5  # syncd.yaml timeout: a stalled run must fail by itself within about this


def log(text):
    print(text, file=sys.stderr, flush=True)


def sh(cmd, **kw):
    return subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def digest(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(1 << 20)
            if not b:
                return h.hexdigest()
            h.update(b)


def files(root, skip=(".syncd",)):
    """Relative path -> sha256 of every regular file below root (temporary files listed apart)."""
    out, parts = {}, []
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root)
        dirnames[:] = [d for d in dirnames if os.path.normpath(os.path.join(rel_dir, d)) not in skip]
        for name in filenames:
            rel = os.path.normpath(os.path.join(rel_dir, name))
            full = os.path.join(dirpath, name)
            if name.startswith(".syncd-part."):
                parts.append(rel)
            elif os.path.isfile(full) and not os.path.islink(full):
                out[rel] = digest(full)
    return out, parts


class Link:
    """wanem between syncctl and sshd, on a fixed port, so that it can be killed and started again."""

    def __init__(self, target, rate_mbit):
        self.target, self.rate, self.port, self.proc = target, rate_mbit, free_port(), None
        self.start()

    def start(self):
        self.proc = subprocess.Popen([sys.executable, WANEM, "--listen", f"127.0.0.1:{self.port}", "--target", f"127.0.0.1:{self.target}",
                                      "--rate-mbit", str(self.rate), "--max-seconds", "7200"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(200):
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.02)
        raise SystemExit("faults: wanem did not start")

    def cut(self):
        self.proc.kill()
        self.proc.wait()
        self.start()

    def stall(self, seconds, run):
        """Stops the link for `seconds`, or until `run` (the session's process) ended by itself."""
        self.proc.send_signal(signal.SIGSTOP)
        deadline = time.time() + seconds
        while time.time() < deadline and run.poll() is None:
            time.sleep(0.05)
        self.proc.send_signal(signal.SIGCONT)

    def stop(self):
        self.proc.send_signal(signal.SIGCONT)
        self.proc.kill()
        self.proc.wait()


class Campaign:
    def __init__(self, work, bindir, seed):
        self.work, self.bin, self.rng = work, bindir, random.Random(seed)
        self.sshd_dir = os.path.join(work, "sshd")
        os.makedirs(self.sshd_dir)
        r = sh(["bash", "-c", f'source "{SSHD_LIB}" && bench_sshd_start "$1" && echo "$SSHD_PORT"', "_", self.sshd_dir])
        if r.returncode != 0:
            raise SystemExit(f"faults: sshd did not start: {r.stderr}")
        self.sshd_port = int(r.stdout.split()[-1])
        self.config = os.path.join(self.sshd_dir, "ssh_config")
        self.link = Link(self.sshd_port, rate_mbit=100)
        sh(["bash", "-c", f'source "{SSHD_LIB}" && bench_ssh_alias "$1" wan 127.0.0.1 "$2"', "_", self.sshd_dir, str(self.link.port)])
        self.project = os.path.join(work, "proj")
        self.remote_root = os.path.join(work, "remote")
        self.remote = os.path.join(self.remote_root, "proj")
        self.state = os.path.join(work, "state")
        os.makedirs(self.project)
        os.makedirs(self.remote_root)
        self.versions = {}  # path -> every sha256 written here (pushes)
        self.remote_versions = {}  # output path -> every sha256 written there (pulls)
        self.results = []

    def configure(self, alias, streams):
        with open(os.path.join(self.project, "syncd.yaml"), "w") as f:
            f.write(f"name: proj\nremote: {alias}\nremote_root: {self.remote_root}\nssh_config: {self.config}\n"
                    f"streams: {streams}\ntimeout: {TIMEOUT}\n")
        self.note(os.path.join(self.project, "syncd.yaml"))

    def note(self, path, remote=False):
        rel = os.path.relpath(path, self.remote if remote else self.project)
        (self.remote_versions if remote else self.versions).setdefault(rel, set()).add(digest(path))

    def write(self, path, data, remote=False):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)
        self.note(path, remote)

    def syncctl(self, verb):
        env = dict(os.environ, XDG_STATE_HOME=self.state, SYNCD_AGENT=os.path.join(self.bin, "syncd-agent"), SSH_AUTH_SOCK="")
        return subprocess.Popen([os.path.join(self.bin, "syncctl"), verb, self.project, "--json"], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)

    def agents(self):
        home = os.path.join(self.sshd_dir, "home", ".local", "lib", "syncd", "agent-")
        pids = []
        for name in os.listdir("/proc"):
            if name.isdigit():
                try:
                    with open(f"/proc/{name}/cmdline", "rb") as f:
                        if f.read().split(b"\0")[0].decode(errors="replace").startswith(home):
                            pids.append(int(name))
                except OSError:
                    pass
        return pids

    def sessions(self):
        with open(os.path.join(self.sshd_dir, "sshd.pid")) as f:
            listener = f.read().strip()
        try:
            with open(f"/proc/{listener}/task/{listener}/children") as f:
                return [int(p) for p in f.read().split()]
        except OSError:
            return []

    # ---------------------------------------------------------------- the tree

    def seed_project(self):
        for i in range(300):
            self.write(os.path.join(self.project, f"src/m{i // 50}/f{i}.py"), f"# file {i}\n".encode() + os.urandom(self.rng.randint(200, 4000)))
        for i, mb in enumerate([8, 24, 40]):
            self.write(os.path.join(self.project, f"data/blob{i}.bin"), os.urandom(mb << 20))
        self.configure("wan", 1)
        p = self.syncctl("push")
        out, err = p.communicate(timeout=600)
        if p.returncode != 0:
            raise SystemExit(f"faults: the first push failed: {err}")

    def change_here(self):
        r = self.rng
        for _ in range(10):
            i = r.randrange(300)
            self.write(os.path.join(self.project, f"src/m{i // 50}/f{i}.py"), f"# file {i} v{r.random()}\n".encode() + os.urandom(r.randint(200, 4000)))
        blob = os.path.join(self.project, f"data/blob{r.randrange(3)}.bin")
        with open(blob, "rb") as f:
            data = bytearray(f.read())
        start = r.randrange(len(data))
        data[start:start + (1 << 20)] = os.urandom(1 << 20)  # a changed MiB in the middle
        if r.random() < 0.5:
            data += os.urandom(r.randint(1, 8) << 20)  # and an append
        self.write(blob, bytes(data))
        self.write(os.path.join(self.project, f"src/new/n{r.randrange(10**9)}.py"), os.urandom(r.randint(100, 3000)))

    def change_there(self):
        r = self.rng
        step = r.randrange(10**9)
        for i in range(40):
            self.write(os.path.join(self.remote, f"output/run{step % 7}/m{i}.json"), f'{{"step": {step}, "i": {i}}}\n'.encode(), remote=True)
        self.write(os.path.join(self.remote, f"checkpoint/ckpt{step % 3}.pt"), os.urandom(r.randint(8, 32) << 20), remote=True)
        past = time.time() - 60
        for dirpath, _, names in os.walk(os.path.join(self.remote, "output")):
            for n in names:
                os.utime(os.path.join(dirpath, n), (past, past))
        for dirpath, _, names in os.walk(os.path.join(self.remote, "checkpoint")):
            for n in names:
                os.utime(os.path.join(dirpath, n), (past, past))

    # ---------------------------------------------------------------- one round

    def inject(self, fault, p):
        """Injects `fault` into the run `p`; false when there was nothing to hit (no agent or session yet)."""
        if fault == "kill-client":
            os.killpg(p.pid, signal.SIGKILL)
        elif fault in ("kill-agent", "kill-session"):
            killed = False
            for pid in self.agents() if fault == "kill-agent" else self.sessions():
                try:
                    os.kill(pid, signal.SIGKILL)
                    killed = True
                except ProcessLookupError:
                    pass  # it ended between the listing and the kill
            return killed
        elif fault == "cut-link":
            self.link.cut()
        elif fault == "stall-link":
            self.link.stall(TIMEOUT * 3, p)
        return True

    def round(self, n):
        r = self.rng
        verb = "push" if r.random() < 0.65 else "pull"
        fault = FAULTS[n % len(FAULTS)]
        streams = r.choice([1, 1, 3])
        self.configure("wan", streams)
        if verb == "push":
            self.change_here()
        else:
            self.change_there()
        delay = r.uniform(0.02, 0.8)
        p = self.syncctl(verb)
        started = time.time()
        time.sleep(delay)
        fault_at = time.time()
        injected = p.poll() is None and self.inject(fault, p)
        try:
            out, err = p.communicate(timeout=TIMEOUT * 3 + 60)
            hung = False
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            out, err = p.communicate()
            hung = True
        ended = time.time()
        torn = self.check_old_or_new(verb)
        # The agent of a killed or stalled session goes by itself (at most its timeout after its input stopped).
        deadline = time.time() + TIMEOUT * 2 + 10
        while self.agents() and time.time() < deadline:
            time.sleep(0.1)
        lingering = len(self.agents())
        converged, detail = self.converge(verb)
        result = dict(round=n, verb=verb, fault=fault, streams=streams, injected=injected, delay=round(delay, 3),
                      status=p.returncode, hung=hung, seconds_after_fault=round(ended - fault_at, 2),
                      seconds=round(ended - started, 2), torn=torn, lingering_agents=lingering, converged=converged, detail=detail,
                      stderr=err.strip().splitlines()[-1][:300] if err.strip() else "")
        self.results.append(result)
        log(f"round {n:3} {verb:4} {fault:12} streams {streams} {'fault' if injected else 'late '} after {delay:.2f} s: "
            f"exit {p.returncode} in {ended - started:.1f} s, torn {len(torn)}, converged {converged} {detail}")

    def check_old_or_new(self, verb):
        if verb == "push":
            there, _ = files(self.remote, skip=(".syncd", "output", "checkpoint"))
            return [p for p, d in there.items() if d not in self.versions.get(p, ())]
        here, _ = files(os.path.join(self.project))
        return [p for p, d in here.items() if (p.startswith("output/") or p.startswith("checkpoint/"))
                and d not in self.remote_versions.get(p, ())]

    def converge(self, verb):
        self.configure("wan", 1)
        p = self.syncctl(verb)
        try:
            out, err = p.communicate(timeout=600)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            return False, "the run after the fault hung"
        if p.returncode != 0:
            return False, f"the run after the fault exited {p.returncode}: {err.strip()[-300:]}"
        here, here_parts = files(self.project)
        there, there_parts = files(self.remote)
        if verb == "push":
            want = {k: v for k, v in here.items() if not (k.startswith("output/") or k.startswith("checkpoint/"))}
            got = {k: v for k, v in there.items() if not (k.startswith("output/") or k.startswith("checkpoint/"))}
            parts = there_parts
        else:
            want = {k: v for k, v in there.items() if k.startswith("output/") or k.startswith("checkpoint/")}
            got = {k: v for k, v in here.items() if k.startswith("output/") or k.startswith("checkpoint/")}
            parts = here_parts
        if want != got:
            diff = sorted(set(want.items()) ^ set(got.items()))[:3]
            return False, f"the sides differ: {diff}"
        if parts:
            return False, f"temporary files left: {parts[:3]}"
        return True, ""

    def report(self):
        rows = []
        for fault in FAULTS:
            rs = [r for r in self.results if r["fault"] == fault and r["injected"]]
            if not rs:
                continue
            failed = [r for r in rs if r["status"] != 0]
            after = [r["seconds_after_fault"] for r in failed]
            rows.append((fault, len(rs), sum(1 for r in rs if r["streams"] > 1), sum(1 for r in rs if r["verb"] == "pull"),
                         len(failed), sum(len(r["torn"]) for r in rs), sum(1 for r in rs if not r["converged"]),
                         sum(1 for r in rs if r["hung"]), sum(1 for r in rs if r["lingering_agents"]),
                         f"{statistics.median(after):.1f} / {max(after):.1f}" if after else "-"))
        total = [r for r in self.results if r["injected"]]
        print("| fault | injected | with streams | pulls | run failed | torn files | not converged | hung | agent left | s to fail after fault (median / max) |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for row in rows:
            print("| " + " | ".join(str(x) for x in row) + " |")
        print(f"| all | {len(total)} | {sum(1 for r in total if r['streams'] > 1)} | {sum(1 for r in total if r['verb'] == 'pull')} | "
              f"{sum(1 for r in total if r['status'] != 0)} | {sum(len(r['torn']) for r in total)} | "
              f"{sum(1 for r in total if not r['converged'])} | {sum(1 for r in total if r['hung'])} | "
              f"{sum(1 for r in total if r['lingering_agents'])} | |")
        late = [r for r in self.results if not r["injected"]]
        print(f"\n{len(late)} rounds ended before their fault; they count as plain runs and were checked the same way "
              f"(torn {sum(len(r['torn']) for r in late)}, not converged {sum(1 for r in late if not r['converged'])}).")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--faults", type=int, default=150, help="faults to inject (rounds that end first do not count)")
    ap.add_argument("--bin", default=None, help="directory with syncctl and syncd-agent (default: .build/release, else .build/debug)")
    ap.add_argument("--seed", type=int, default=24)
    ap.add_argument("--json", default=os.path.join(HERE, "faults-results.json"))
    args = ap.parse_args()
    bindir = args.bin or next(d for d in [os.path.join(REPO, ".build", "release"), os.path.join(REPO, ".build", "debug")]
                              if os.path.exists(os.path.join(d, "syncctl")))
    work = tempfile.mkdtemp(prefix="syncd-faults-")
    c = Campaign(work, os.path.abspath(bindir), args.seed)
    try:
        c.seed_project()
        n = 0
        while sum(1 for r in c.results if r["injected"]) < args.faults and n < args.faults * 3:
            c.round(n)
            n += 1
        c.report()
        with open(args.json, "w") as f:
            json.dump(dict(binaries=os.path.abspath(bindir), seed=args.seed, timeout=TIMEOUT, rounds=c.results), f, indent=1)
    finally:
        c.link.stop()
        sh(["bash", "-c", f'source "{SSHD_LIB}" && BENCH_SSHD_DIR="$1" bench_sshd_stop', "_", c.sshd_dir])
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
