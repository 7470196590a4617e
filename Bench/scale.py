#!/usr/bin/env python3
"""Many files, side by side with rsync -a (issue 29): time and peak memory as the file count grows.

For each file count N, a project of N files of 1-4 KB, 100 per directory, on a fresh ext4 loop file system with
cold caches, pushed over one throwaway loopback sshd, by syncctl and by rsync -a (each into its own directory):

  first push, a no-op push, 100 files edited, and listing the project (syncctl ls against find)

with each tool's peak resident memory: syncctl's own (wait4's ru_maxrss), the agent's and each rsync process's
(VmHWM from /proc/PID/status, read every 20 ms while they run). The table goes to stdout, and the growth
exponents between the smallest and largest N (time ~ N^k: 1.0 is linear, 0 flat). Root only (mount).

    Bench/scale.py RELEASE_DIR [--files 100000,300000,1000000] [--large 4,8] [--keep-fs]

With --large, also one-file projects of those sizes (GiB): first push and 64 MiB appended, and each side's peak
per GiB of data (`--files ''` for those alone).
"""
import argparse
import math
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def sh(*args, **kw):
    return subprocess.run(args, check=True, **kw)


class PeakWatcher:
    """Samples VmHWM of every process whose name starts with one of `names` until stopped; the largest seen per
    name (the agent runs as `agent-<digest>`, its installed copy)."""

    def __init__(self, names):
        self.names = set(names)
        self.peaks = {}
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        while not self.stopping.is_set():
            for pid in os.listdir("/proc"):
                if not pid.isdigit():
                    continue
                try:
                    with open(f"/proc/{pid}/status") as f:
                        status = f.read()
                except OSError:
                    continue
                name = status.split("\n", 1)[0].split(":", 1)[1].strip()
                name = next((n for n in self.names if name.startswith(n)), None)
                if name is None:
                    continue
                for line in status.split("\n"):
                    if line.startswith("VmHWM:"):
                        kib = int(line.split()[1])
                        self.peaks[name] = max(self.peaks.get(name, 0), kib)
            self.stopping.wait(0.02)

    def stop(self):
        self.stopping.set()
        self.thread.join()
        return self.peaks


def timed(args, names=()):
    """Runs `args`; wall seconds, its own peak RSS (MiB) and the peaks of processes named `names` (MiB)."""
    watcher = PeakWatcher(names)
    start = time.monotonic()
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.monotonic() - start
    peaks = watcher.stop()
    err = proc.stderr.read().decode(errors="replace")
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"scale: {' '.join(args)} failed: {err}")
    if os.environ.get("SYNCD_TRACE") == "1" and "syncctl" in args[0]:
        print(f"scale: {' '.join(args[1:2])}: {wall:.2f} s\n{err}", file=sys.stderr)
    return wall, usage.ru_maxrss / 1024, {k: v / 1024 for k, v in peaks.items()}


class Bench:
    def __init__(self, release, work):
        self.release = release
        self.work = work
        self.mnt = f"{work}/mnt"
        os.makedirs(self.mnt, exist_ok=True)
        self.device = None
        out = subprocess.run(["bash", "-c", f"source {HERE}/lib/sshd.sh && bench_sshd_start {work}/sshd && echo $SSHD_PID"],
                             check=True, capture_output=True, text=True)
        self.sshd_pid = int(out.stdout.split()[-1])
        with open(f"{work}/sshd/ssh_options.bench") as f:
            self.ssh = f.read().strip()

    def close(self):
        self.detach()
        try:
            os.kill(self.sshd_pid, 15)
        except OSError:
            pass

    def detach(self):
        subprocess.run(["umount", self.mnt], stderr=subprocess.DEVNULL)
        if self.device:
            subprocess.run(["losetup", "-d", self.device], stderr=subprocess.DEVNULL)
        self.device = None

    def fresh(self, files):
        """A new file system for `files` files three times over (the project, syncd's copy, rsync's)."""
        self.detach()
        image = f"{self.work}/fs.img"
        if os.path.exists(image):
            os.remove(image)
        size = max(2 << 30, files * 3 * 8192 + (1 << 30))
        with open(image, "wb") as f:
            f.truncate(size)
        sh("mkfs.ext4", "-q", "-F", "-i", "4096", image)
        self.device = subprocess.run(["losetup", "--find", "--show", "--direct-io=on", image],
                                     check=True, capture_output=True, text=True).stdout.strip()
        sh("mount", self.device, self.mnt)

    def make_project(self, files):
        root = f"{self.mnt}/proj"
        rng = random.Random(files)
        for i in range(files):
            d = f"{root}/data/d{i // 100:05d}"
            if i % 100 == 0:
                os.makedirs(d)
            with open(f"{d}/f{i}.bin", "wb") as f:
                f.write(rng.randbytes(rng.randint(1024, 4096)))
        with open(f"{root}/syncd.yaml", "w") as f:
            f.write(f"name: scale\nremote: bench\nremote_root: {self.mnt}/remote\nssh_config: {self.work}/sshd/ssh_config\n"
                    f"agent_path: {self.release}/syncd-agent\n")
        return root

    def drop_caches(self):
        sh("sync")
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3")

    def syncd_push(self, root):
        # What the other tool left to write back is written first: syncd makes what it places durable (syncfs),
        # which would otherwise wait for rsync's dirty pages too.
        sh("sync")
        return timed([f"{self.release}/syncctl", "push", root, "--state-dir", f"{self.mnt}/state"], names=["agent-"])

    def rsync_push(self, root):
        sh("sync")
        return timed(["rsync", "-a", "--exclude", "syncd.yaml", "-e", self.ssh, f"{root}/", f"bench:{self.mnt}/r/"], names=["rsync"])

    def edit(self, root, files, count=100):
        rng = random.Random(files + 1)
        for i in rng.sample(range(files), count):
            with open(f"{root}/data/d{i // 100:05d}/f{i}.bin", "r+b") as f:
                f.seek(rng.randint(0, 900))
                f.write(rng.randbytes(64))

    def run(self, files):
        self.fresh(files)
        root = self.make_project(files)
        row = {"files": files}
        for phase in ("first", "noop"):
            # Each first push reads the project from a cold cache; the no-ops after them find it warm.
            if phase == "first":
                self.drop_caches()
            row[f"{phase} syncd"] = self.syncd_push(root)
            if phase == "first":
                self.drop_caches()
            row[f"{phase} rsync"] = self.rsync_push(root)
        self.edit(root, files)
        row["edit syncd"] = self.syncd_push(root)
        row["edit rsync"] = self.rsync_push(root)
        row["ls syncd"] = timed([f"{self.release}/syncctl", "ls", root])
        row["ls find"] = timed(["find", root])
        return row


def run_large(bench, gib):
    """A project of one random file of `gib` GiB: its first push, then 64 MiB appended and pushed, by each tool,
    with each side's peak (large data: memory per GiB of project, not per file). The tools take turns, so that the
    file system holds three copies of the data, not five: syncd's, whose copy is then removed and the project's
    file cut back to its first size, then rsync's."""
    # The project, and one tool's copy twice over: an appended file is written whole beside the old one.
    size = gib * 3 * (1 << 30) + (3 << 30)
    bench.detach()
    image = f"{bench.work}/fs.img"
    if os.path.exists(image):
        os.remove(image)
    with open(image, "wb") as f:
        f.truncate(size)
    sh("mkfs.ext4", "-q", "-F", image)
    bench.device = subprocess.run(["losetup", "--find", "--show", "--direct-io=on", image],
                                  check=True, capture_output=True, text=True).stdout.strip()
    sh("mount", bench.device, bench.mnt)
    root = f"{bench.mnt}/proj"
    big = f"{root}/data/big.bin"
    os.makedirs(f"{root}/data")
    with open(big, "wb") as f:
        for _ in range(gib * 16):
            f.write(os.urandom(64 << 20))
    with open(f"{root}/syncd.yaml", "w") as f:
        f.write(f"name: scale\nremote: bench\nremote_root: {bench.mnt}/remote\nssh_config: {bench.work}/sshd/ssh_config\n"
                f"agent_path: {bench.release}/syncd-agent\n")
    row = {"gib": gib}
    for tool, push in (("syncd", bench.syncd_push), ("rsync", bench.rsync_push)):
        bench.drop_caches()
        row[f"first {tool}"] = push(root)
        with open(big, "ab") as f:
            f.write(os.urandom(64 << 20))
        row[f"append {tool}"] = push(root)
        if tool == "syncd":
            for gone in ("remote", "state"):
                shutil.rmtree(f"{bench.mnt}/{gone}")
            os.truncate(big, gib << 30)
    return row


def show_large(rows):
    print("| project | first push syncd / rsync | 64 MiB appended syncd / rsync | syncctl peak MiB (first, append) | "
          "agent peak MiB (first, append) | largest peak per GiB of data |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        walls = [f"{r[p + ' syncd'][0]:.2f} / {r[p + ' rsync'][0]:.2f} s ({r[p + ' syncd'][0] / r[p + ' rsync'][0]:.2f}x)"
                 for p in ("first", "append")]
        own = [r[p + " syncd"][1] for p in ("first", "append")]
        agent = [r[p + " syncd"][2].get("agent-", 0) for p in ("first", "append")]
        print(f"| one {r['gib']} GiB file | {walls[0]} | {walls[1]} | {own[0]:.0f}, {own[1]:.0f} | {agent[0]:.0f}, {agent[1]:.0f} | "
              f"{max(own + agent) / r['gib']:.1f} MiB |")
    if len(rows) >= 2:
        a, b = rows[0], rows[-1]
        for side, pick in (("syncctl", lambda r: r["first syncd"][1]), ("agent", lambda r: r["first syncd"][2].get("agent-", 0))):
            print(f"- {side}'s first-push peak grows {(pick(b) - pick(a)) / (b['gib'] - a['gib']):.2f} MiB per GiB from "
                  f"{a['gib']} to {b['gib']} GiB")


def show(rows):
    print("| files | first push syncd / rsync | no-op syncd / rsync | 100 files edited syncd / rsync | ls / find | "
          "syncctl peak MiB (first, no-op, edit; ls) | agent peak MiB (first, no-op, edit) | rsync peak MiB (largest process) |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        phases = ["first", "noop", "edit"]
        walls = [f"{r[p + ' syncd'][0]:.2f} / {r[p + ' rsync'][0]:.2f} s ({r[p + ' syncd'][0] / r[p + ' rsync'][0]:.2f}x)" for p in phases]
        syncctl_peaks = ", ".join(f"{r[p + ' syncd'][1]:.0f}" for p in phases)
        agent_peaks = ", ".join(f"{r[p + ' syncd'][2].get('agent-', 0):.0f}" for p in phases)
        rsync_peak = max(max(list(r[p + " rsync"][2].values()) + [r[p + " rsync"][1]]) for p in phases)
        print(f"| {r['files']:,} | {walls[0]} | {walls[1]} | {walls[2]} | {r['ls syncd'][0]:.2f} / {r['ls find'][0]:.2f} s | "
              f"{syncctl_peaks}; {r['ls syncd'][1]:.0f} | {agent_peaks} | {rsync_peak:.0f} |")
    if len(rows) >= 2:
        a, b = rows[0], rows[-1]
        ratio = math.log(b["files"] / a["files"])
        def k(x, y):
            return f"{math.log(y / x) / ratio:.2f}" if x > 0 and y > 0 else "?"
        print()
        print(f"Growth exponents from {a['files']:,} to {b['files']:,} files (time or memory ~ files^k):")
        for key in ("first syncd", "noop syncd", "edit syncd", "noop rsync", "edit rsync", "ls syncd"):
            print(f"- {key}: time {k(a[key][0], b[key][0])}, own peak {k(a[key][1], b[key][1])}")
        agents = [(r["noop syncd"][2].get("agent-", 0)) for r in (a, b)]
        print(f"- agent peak in a no-op: {k(*agents)}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("release")
    parser.add_argument("--files", default="100000,300000,1000000")
    parser.add_argument("--large", default="", help="GiB sizes of one-file projects to measure too (e.g. 4,16)")
    parser.add_argument("--keep-fs", action="store_true", help="leave the last file system mounted (for a look)")
    args = parser.parse_args()
    release = os.path.abspath(args.release)
    work = tempfile.mkdtemp(prefix="syncd-scale.")
    bench = Bench(release, work)
    rows, large = [], []
    try:
        for n in [int(x) for x in args.files.split(",") if x]:
            rows.append(bench.run(n))
            print(f"scale: {n} files done", file=sys.stderr)
        for gib in [int(x) for x in args.large.split(",") if x]:
            large.append(run_large(bench, gib))
            print(f"scale: one {gib} GiB file done", file=sys.stderr)
    finally:
        if not args.keep_fs:
            bench.close()
            shutil.rmtree(work, ignore_errors=True)
    if rows:
        show(rows)
    if large:
        print()
        show_large(large)


if __name__ == "__main__":
    main()
