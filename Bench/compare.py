#!/usr/bin/env python3
"""syncd side by side with rsync and the DOCKER_HOST workflow. Run it through Bench/compare (which installs
packages and builds); see Bench/RESULTS.md for what it printed last.

Every scenario runs with syncctl, rsync -a and rsync -az over the same throwaway sshd, each tool into its own
remote copy, once on loopback and once through wanem (25 ms one-way, 100 Mbit/s). Wall time is taken around the
command; bytes on the wire come from nftables counters on the port the client connects to, never from a tool.
Medians over --rounds runs. Prints markdown tables and writes a JSON file.
"""
import argparse
import datetime
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
SSHD_LIB = os.path.join(HERE, "lib", "sshd.sh")
WANEM = os.path.normpath(os.path.join(REPO, "..", "shared", "tools", "wanem"))
# Lines added to syncd's syncd.yaml (`--syncd-setting`).
SYNCD_SETTINGS = []
MB = 1_000_000
LINK_MBIT = 100
LINK_DELAY_MS = 25


def log(text):
    print(text, file=sys.stderr, flush=True)


def run(cmd, env=None, check=True, capture=True):
    r = subprocess.run(cmd, env=env, stdout=subprocess.PIPE if capture else None,
                       stderr=subprocess.PIPE if capture else None, text=True)
    if check and r.returncode != 0:
        shown = " ".join(cmd) if isinstance(cmd, list) else cmd
        raise SystemExit(f"compare: `{shown}` exited with {r.returncode}:\n{r.stderr}{r.stdout}")
    return r


# ---------------------------------------------------------------- the test project

def write_random(path, size):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        left = size
        while left > 0:
            n = min(left, 4 << 20)
            f.write(os.urandom(n))
            left -= n


def source_text(rng, size):
    lines = []
    total = 0
    i = 0
    while total < size:
        name = rng.choice(["loss", "batch", "model", "step", "grad", "feat", "emb", "head"])
        line = (f"def {name}_{i}(x, scale={rng.randint(1, 99)}):\n"
                f"    # {rng.choice(['normalise', 'project', 'pool', 'mask', 'clip'])} the {name} tensor\n"
                f"    return x * scale + {rng.random():.6f}\n\n")
        lines.append(line)
        total += len(line)
        i += 1
    return "".join(lines)


def make_project(root, scale):
    """About 400 MB at scale 1: sources, configs, three large binaries, a growing CSV, 3000 small images."""
    rng = random.Random(42)
    for i in range(400):
        path = os.path.join(root, "src", f"pkg{i % 20}", f"module{i}.py")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(source_text(rng, rng.randint(2_000, 15_000)))
    for i in range(30):
        path = os.path.join(root, "configs", f"exp{i}.yaml")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(f"lr: {rng.random() / 100:.6f}\nbatch: {rng.choice([16, 32, 64])}\nepochs: {rng.randint(5, 90)}\n")
    for name, mb in (("weights_a.bin", 120), ("weights_b.bin", 100), ("embeddings.bin", 40)):
        write_random(os.path.join(root, "data", name), int(mb * MB * scale))
    with open(os.path.join(root, "data", "train.csv"), "w") as f:
        f.write("step,loss,accuracy,learning_rate,grad_norm\n")
        written, step = 0, 0
        target = int(60 * MB * scale)
        while written < target:
            block = "".join(f"{step + k},{rng.random() * 3:.5f},{rng.random():.5f},{rng.random() / 1000:.7f},{rng.random() * 10:.4f}\n"
                            for k in range(10_000))
            f.write(block)
            written += len(block)
            step += 10_000
    for i in range(2000):
        write_random(os.path.join(root, "data", "images", f"img{i:05d}.jpg"), rng.randint(15_000, 45_000))
    for i in range(1000):
        write_random(os.path.join(root, "data", "thumbs", f"t{i:05d}.jpg"), rng.randint(4_000, 16_000))
    files = {
        "Dockerfile": "FROM python:3.11-slim\nWORKDIR /app\nCOPY requirements.txt .\nRUN pip install -r requirements.txt\n"
                      "COPY src/ src/\nCOPY configs/ configs/\nCMD [\"python\", \"-m\", \"src.train\"]\n",
        "compose.yaml": "services:\n  train:\n    build: .\n    volumes:\n      - ./data:/app/data\n      - ./output:/app/output\n"
                        "      - ./checkpoint:/app/checkpoint\n",
        "requirements.txt": "torch==2.4.0\nnumpy==2.0.1\npandas==2.2.2\n",
        "README.md": "# object tracking experiments\n",
        ".dockerignore": "data/\noutput/\ncheckpoint/\n",
    }
    for name, text in files.items():
        with open(os.path.join(root, name), "w") as f:
            f.write(text)


def tree_bytes(root):
    total = 0
    for d, _, names in os.walk(root):
        for n in names:
            total += os.lstat(os.path.join(d, n)).st_size
    return total


# ---------------------------------------------------------------- servers and counters

class Sshd:
    def __init__(self, directory, setenv=""):
        self.dir = directory
        os.makedirs(directory, exist_ok=True)
        env = dict(os.environ, BENCH_SSHD_SETENV=setenv)
        r = run(["bash", "-c", f'source "{SSHD_LIB}" && bench_sshd_start "$1" && echo "$SSHD_PORT"', "_", directory], env=env)
        self.port = int(r.stdout.strip().splitlines()[-1])
        self.config = os.path.join(directory, "ssh_config")

    def alias(self, name, port):
        run(["bash", "-c", f'source "{SSHD_LIB}" && bench_ssh_alias "$1" "$2" 127.0.0.1 "$3"', "_", self.dir, name, str(port)])

    def ssh_command(self):
        return f"ssh -F {self.config} -o BatchMode=yes -o LogLevel=ERROR"

    def stop(self):
        try:
            with open(os.path.join(self.dir, "sshd.pid")) as f:
                os.kill(int(f.read().strip()), 15)
        except (OSError, ValueError):
            pass


def free_port():
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class WireCounter:
    """nftables counters on the output hook: packets to a port (client to server) and from it (server to client).
    On loopback every packet passes the output hook once, so nothing is counted twice."""

    def __init__(self, ports):
        self.table = f"syncd_compare_{os.getpid()}"
        run(["nft", "add", "table", "inet", self.table])
        run(["nft", "add", "chain", "inet", self.table, "out", "{ type filter hook output priority 0; policy accept; }"])
        for p in ports:
            run(["nft", "add", "rule", "inet", self.table, "out", "tcp", "dport", str(p), "counter"])
            run(["nft", "add", "rule", "inet", self.table, "out", "tcp", "sport", str(p), "counter"])

    def read(self, port):
        data = json.loads(run(["nft", "-j", "list", "table", "inet", self.table]).stdout)
        up = down = 0
        for item in data.get("nftables", []):
            rule = item.get("rule")
            if not rule:
                continue
            field, value, count = None, None, 0
            for e in rule.get("expr", []):
                if "match" in e:
                    field = e["match"]["left"].get("payload", {}).get("field")
                    value = e["match"]["right"]
                if "counter" in e:
                    count = e["counter"]["bytes"]
            if value == port and field == "dport":
                up = count
            elif value == port and field == "sport":
                down = count
        return up, down

    def close(self):
        run(["nft", "delete", "table", "inet", self.table], check=False)


class Wanem:
    def __init__(self, target_port, stats):
        self.port = free_port()
        self.proc = subprocess.Popen([sys.executable, WANEM, "--listen", f"127.0.0.1:{self.port}", "--target", f"127.0.0.1:{target_port}",
                                      "--delay-ms", str(LINK_DELAY_MS), "--rate-mbit", str(LINK_MBIT), "--stats", stats,
                                      "--max-seconds", "7200"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        import socket
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise SystemExit("compare: wanem did not start listening")

    def stop(self):
        self.proc.terminate()
        self.proc.wait()


# ---------------------------------------------------------------- tools

class Tool:
    def __init__(self, name, work, link, alias, sshd, release, project):
        self.name, self.link, self.alias, self.sshd, self.release, self.project = name, link, alias, sshd, release, project
        self.remote_root = os.path.join(work, "remote", link, name)
        self.remote = os.path.join(self.remote_root, "proj")
        self.state = os.path.join(work, "state", link)
        self.pulled = os.path.join(work, "pulled", link, name)

    def reset_remote(self):
        shutil.rmtree(self.remote_root, ignore_errors=True)
        if self.name == "syncd":
            shutil.rmtree(self.state, ignore_errors=True)
        else:
            os.makedirs(self.remote, exist_ok=True)

    def configure(self):
        if self.name == "syncd":
            text = (f"name: proj\nremote: {self.alias}\nremote_root: {self.remote_root}\nssh_config: {self.sshd.config}\n"
                    f"agent_path: {os.path.join(self.release, 'syncd-agent')}\n")
            text += "".join(f"{line}\n" for line in SYNCD_SETTINGS)
            path = os.path.join(self.project, "syncd.yaml")
            # Rewritten only when it changes (a new link), so it does not count as an edit in every scenario.
            if not os.path.exists(path) or open(path).read() != text:
                with open(path, "w") as f:
                    f.write(text)

    def push_command(self):
        if self.name == "syncd":
            return [os.path.join(self.release, "syncctl"), "push", self.project, "--json", "--state-dir", self.state]
        flags = "-a" if self.name == "rsync-a" else "-az"
        return ["rsync", flags, "--delete", "--exclude=/output/", "--exclude=/checkpoint/", "--exclude=.git/",
                "-e", self.sshd.ssh_command(), self.project + "/", f"{self.alias}:{self.remote}/"]

    def pull_command(self):
        if self.name == "syncd":
            return [os.path.join(self.release, "syncctl"), "pull", self.project, "--json", "--state-dir", self.state]
        flags = "-a" if self.name == "rsync-a" else "-az"
        os.makedirs(os.path.join(self.pulled, "checkpoint"), exist_ok=True)
        return ["rsync", flags, "-e", self.sshd.ssh_command(), f"{self.alias}:{self.remote}/checkpoint/",
                os.path.join(self.pulled, "checkpoint") + "/"]


def measure(cmd, counter, port):
    # Nobody starts while the disk is still busy with someone else's writes (the scenario's own setup, or the
    # tool before): the tools that fsync would pay for it, the ones that do not would not.
    os.sync()
    up0, down0 = counter.read(port)
    t0 = time.monotonic()
    r = run(cmd, check=False)
    seconds = time.monotonic() - t0
    up1, down1 = counter.read(port)
    if r.returncode != 0:
        raise SystemExit(f"compare: `{' '.join(cmd)}` exited with {r.returncode}:\n{r.stderr}")
    return {"seconds": seconds, "up": up1 - up0, "down": down1 - down0, "bytes": (up1 - up0) + (down1 - down0)}


# ---------------------------------------------------------------- scenarios

def age(path, seconds=10):
    t = time.time() - seconds
    os.utime(path, (t, t))


def insert_bytes(path, offset, data):
    with open(path, "r+b") as f:
        f.seek(offset)
        tail = f.read()
        f.seek(offset)
        f.write(data + tail)


def scenarios(project, work, scale):
    """(name, kind, prepare(round, tools)): prepare mutates the project or the remotes before every tool runs."""
    ckpt_size = int(200 * MB * scale)

    def initial(r, tools):
        pass

    def edit5(r, tools):
        for i in range(5):
            path = os.path.join(project, "src", f"pkg{(r * 5 + i) % 20}", f"module{r * 5 + i}.py")
            with open(path, "a") as f:
                f.write(f"\n# edited in round {r}\n")

    def insert_and_append(r, tools):
        path = os.path.join(project, "data", "weights_a.bin")
        insert_bytes(path, os.path.getsize(path) // 2 + r * 123_457, os.urandom(100))
        with open(os.path.join(project, "data", "train.csv"), "a") as f:
            rng = random.Random(os.urandom(8))  # new rows every time, never a copy of earlier ones
            text = "".join(f"{10**7 + k},{rng.random() * 3:.5f},{rng.random():.5f},{rng.random() / 1000:.7f},{rng.random() * 10:.4f}\n"
                           for k in range(20_000))
            f.write(text[: MB])

    def rename_dir(r, tools):
        data = os.path.join(project, "data")
        current = next(n for n in sorted(os.listdir(data)) if n.startswith("images"))
        os.rename(os.path.join(data, current), os.path.join(data, f"images_{os.urandom(3).hex()}"))

    def new_checkpoint(r, tools):
        source = os.path.join(work, f"ckpt-{r}.pt")
        write_random(source, ckpt_size)
        for t in tools:
            dest = os.path.join(t.remote, "checkpoint", f"ckpt-{r}.pt")
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            shutil.copyfile(source, dest)
            age(dest)

    def similar_checkpoint(r, tools):
        source = os.path.join(work, f"ckpt-{r}.pt")
        tuned = os.path.join(work, f"ckpt-{r}-ft.pt")
        if not os.path.exists(source):  # the new-checkpoint scenario was left out (--only)
            write_random(source, ckpt_size)
        shutil.copyfile(source, tuned)
        with open(tuned, "r+b") as f:
            # 10% changed, in ten 1% regions spread over the file (some layers fine-tuned).
            region = ckpt_size // 100
            for k in range(10):
                f.seek(k * (ckpt_size // 10) + region // 2)
                f.write(os.urandom(region))
        for t in tools:
            dest = os.path.join(t.remote, "checkpoint", f"ckpt-{r}-ft.pt")
            shutil.copyfile(tuned, dest)
            age(dest)

    return [
        ("initial push", "push-fresh", initial),
        ("no-op push", "push", lambda r, tools: None),
        ("5 source files edited", "push", edit5),
        ("100 B inserted in a 120 MB file + 1 MB appended to the CSV", "push", insert_and_append),
        ("directory of 2000 files renamed", "push", rename_dir),
        ("new 200 MB checkpoint pulled", "pull", new_checkpoint),
        ("second checkpoint (90% shared) pulled", "pull", similar_checkpoint),
    ]


def run_link(link, port, alias, args, work, project, sshd, counter):
    tools = [Tool(n, work, link, alias, sshd, args.release, project) for n in ("syncd", "rsync-a", "rsync-az")]
    # Install the agent on the "remote" first, as any earlier use would have: not part of any measurement.
    warm = os.path.join(work, "warm")
    os.makedirs(warm, exist_ok=True)
    with open(os.path.join(warm, "syncd.yaml"), "w") as f:
        f.write(f"name: warm\nremote: {alias}\nremote_root: {work}/remote/warm-{link}\nssh_config: {sshd.config}\n"
                f"agent_path: {os.path.join(args.release, 'syncd-agent')}\n")
    run([os.path.join(args.release, "syncctl"), "push", warm, "--state-dir", os.path.join(work, "state", "warm-" + link)])
    results = []
    for name, kind, prepare in scenarios(project, work, args.scale):
        # The initial push always runs: every later scenario starts from the tree it leaves on the remotes.
        if args.only and kind != "push-fresh" and not any(o in name for o in args.only):
            continue
        rows = {t.name: [] for t in tools}
        for r in range(args.rounds):
            prepare(r, tools)
            for t in tools[r % len(tools):] + tools[:r % len(tools)]:  # each tool goes first once in three rounds
                if kind == "push-fresh":
                    t.reset_remote()
                t.configure()
                cmd = t.pull_command() if kind == "pull" else t.push_command()
                rows[t.name].append(measure(cmd, counter, port))
        summary = {}
        for tool, runs in rows.items():
            summary[tool] = {"seconds": statistics.median(x["seconds"] for x in runs),
                             "bytes": statistics.median(x["bytes"] for x in runs), "runs": runs}
        log(f"[{link}] {name}: " + ", ".join(f"{k} {v['seconds']:.2f} s {v['bytes'] / MB:.1f} MB" for k, v in summary.items()))
        results.append({"scenario": name, "tools": summary})
    return results


def ratio(a, b):
    return a / b if b else float("inf")


def table(link, results):
    out = [f"\n### {link}\n",
           "| scenario | syncd s | rsync -a s | rsync -az s | wall syncd/rsync -a | syncd MB | rsync -a MB | rsync -az MB | bytes syncd/rsync -az |",
           "|---|---|---|---|---|---|---|---|---|"]
    for res in results:
        s, a, z = (res["tools"][k] for k in ("syncd", "rsync-a", "rsync-az"))
        out.append(f"| {res['scenario']} | {s['seconds']:.2f} | {a['seconds']:.2f} | {z['seconds']:.2f} | "
                   f"{ratio(s['seconds'], a['seconds']):.2f}x | {s['bytes'] / MB:.2f} | {a['bytes'] / MB:.2f} | {z['bytes'] / MB:.2f} | "
                   f"{ratio(s['bytes'], z['bytes']):.3f}x |")
    return "\n".join(out)


def targets(link, results, project_bytes):
    by = {r["scenario"]: r["tools"] for r in results}
    checks = []

    def check(label, ok, detail):
        checks.append(f"- [{'x' if ok else ' '}] {link}: {label} ({detail})")

    def ran(s):
        return s in by

    def wall(s, k):
        return by[s][k]["seconds"]

    def nbytes(s, k):
        return by[s][k]["bytes"]

    x = ratio(wall("initial push", "syncd"), wall("initial push", "rsync-a"))
    check("initial push wall within 1.0x of rsync -a", x <= 1.0, f"{x:.2f}x")
    for s in filter(ran, ("no-op push", "5 source files edited")):
        x = ratio(wall(s, "syncd"), wall(s, "rsync-a"))
        check(f"{s}: wall 0.5x of rsync -a or less", x <= 0.5, f"{x:.2f}x")
    s = "100 B inserted in a 120 MB file + 1 MB appended to the CSV"
    if ran(s):
        x = ratio(nbytes(s, "syncd"), nbytes(s, "rsync-az"))
        check("insert/append: bytes within 1.0x of rsync -az", x <= 1.0, f"{x:.2f}x")
    s = "directory of 2000 files renamed"
    if ran(s):
        x = ratio(nbytes(s, "syncd"), min(nbytes(s, "rsync-a"), nbytes(s, "rsync-az")))
        check("directory rename: bytes 1% of rsync's or less", x <= 0.01, f"{100 * x:.2f}%")
    s = "second checkpoint (90% shared) pulled"
    if ran(s):
        x = ratio(nbytes(s, "syncd"), min(nbytes(s, "rsync-a"), nbytes(s, "rsync-az")))
        check("second checkpoint pull: bytes 15% of rsync's or less", x <= 0.15, f"{100 * x:.1f}%")
    if link == "slow":
        rate = nbytes("initial push", "syncd") / wall("initial push", "syncd")
        link_rate = LINK_MBIT * 1e6 / 8
        check("initial push at 85% of link rate or more", rate >= 0.85 * link_rate,
              f"{rate / MB:.2f} MB/s on the wire = {100 * rate / link_rate:.0f}% of {link_rate / MB:.1f} MB/s")
    return checks


# ---------------------------------------------------------------- the DOCKER_HOST workflow

class Dockerd:
    def __init__(self, root):
        self.root = root
        self.socket = os.path.join(root, "docker.sock")
        os.makedirs(root, exist_ok=True)
        self.log = open(os.path.join(root, "dockerd.log"), "w")
        self.proc = None
        if not shutil.which("dockerd"):
            self.error = "dockerd is not installed"
            return
        self.proc = subprocess.Popen(["dockerd", "--data-root", os.path.join(root, "data"), "--exec-root", os.path.join(root, "exec"),
                                      "--host", "unix://" + self.socket, "--pidfile", os.path.join(root, "docker.pid"),
                                      "--iptables=false", "--bridge=none"], stdout=self.log, stderr=self.log)
        self.error = None
        for _ in range(60):
            if self.proc.poll() is not None:
                break
            if run(["/usr/bin/docker", "-H", "unix://" + self.socket, "info"], check=False).returncode == 0:
                return
            time.sleep(0.5)
        self.stop()
        with open(os.path.join(root, "dockerd.log")) as f:
            self.error = "dockerd did not start: " + " ".join(f.read().strip().splitlines()[-3:])

    def docker(self, *args, env=None):
        return run(["/usr/bin/docker", "-H", "unix://" + self.socket, *args], env=env)

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def docker_workflow(args, work, sshd, counter, dockerd):
    base = os.path.join(work, "rootfs")
    os.makedirs(os.path.join(base, "bin"), exist_ok=True)
    os.makedirs(os.path.join(base, "tmp"), exist_ok=True)
    shutil.copy("/bin/busybox", os.path.join(base, "bin", "busybox"))
    for c in ("sh", "ls", "cat", "wc", "echo", "mkdir"):
        os.symlink("busybox", os.path.join(base, "bin", c))
    tar = subprocess.Popen(["tar", "-C", base, "-c", "."], stdout=subprocess.PIPE)
    subprocess.run(["/usr/bin/docker", "-H", "unix://" + dockerd.socket, "import", "-", "syncd-bench-base:latest"],
                   stdin=tar.stdout, check=True, stdout=subprocess.DEVNULL)
    tar.wait()

    project = os.path.join(work, "dproj")
    rng = random.Random(7)
    for i in range(300):
        path = os.path.join(project, "src", f"m{i}.py")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(source_text(rng, 5_000))
    with open(os.path.join(project, "requirements.txt"), "w") as f:
        f.write("numpy\n")
    with open(os.path.join(project, "Dockerfile"), "w") as f:
        f.write("FROM syncd-bench-base\nARG WORKFLOW\nRUN echo $WORKFLOW > /workflow\nWORKDIR /app\nCOPY requirements.txt .\n"
                "RUN wc -c requirements.txt > deps.txt\nCOPY src/ src/\nRUN ls src | wc -l > files.txt\n")
    remote_root = os.path.join(work, "remote", "docker")
    state = os.path.join(work, "state", "docker")
    with open(os.path.join(project, "syncd.yaml"), "w") as f:
        f.write(f"name: dproj\nremote: bench\nremote_root: {remote_root}\nssh_config: {sshd.config}\n"
                f"agent_path: {os.path.join(args.release, 'syncd-agent')}\n")
    # The docker CLI runs `ssh` from PATH for ssh:// hosts: a wrapper gives it this bench's ssh_config.
    bindir = os.path.join(work, "bin")
    os.makedirs(bindir, exist_ok=True)
    with open(os.path.join(bindir, "ssh"), "w") as f:
        f.write(f"#!/bin/sh\nexec /usr/bin/ssh -F {sshd.config} -o BatchMode=yes -o LogLevel=ERROR \"$@\"\n")
    os.chmod(os.path.join(bindir, "ssh"), 0o755)

    def env(buildkit, docker_host=None):
        e = dict(os.environ, DOCKER_BUILDKIT="1" if buildkit else "0", PATH=bindir + ":" + os.environ["PATH"])
        if docker_host:
            e["DOCKER_HOST"] = docker_host
        return e

    def via_docker_host(buildkit):
        return (["/usr/bin/docker", "build", "-q", "--network", "none", "--build-arg", f"WORKFLOW=dh{int(buildkit)}",
                 "-t", f"bench-dh{int(buildkit)}", project], env(buildkit, "ssh://root@bench"))

    def via_syncd(buildkit):
        remote_build = (f"DOCKER_BUILDKIT={int(buildkit)} /usr/bin/docker build -q --network none --build-arg WORKFLOW=sy{int(buildkit)} "
                        f"-t bench-sy{int(buildkit)} {remote_root}/dproj")
        return ["sh", "-c", f"{os.path.join(args.release, 'syncctl')} push {project} --state-dir {state} >/dev/null && "
                            f"/usr/bin/ssh -F {sshd.config} -o BatchMode=yes -o LogLevel=ERROR bench '{remote_build}'"], env(buildkit)

    counter_port = sshd.port
    results = []
    edit = [0]

    def one_edit():
        edit[0] += 1
        with open(os.path.join(project, "src", f"m{edit[0] % 300}.py"), "a") as f:
            f.write(f"\n# edit {edit[0]}\n")

    for variant in ("clean context", "context holding a 300 MB data file"):
        if variant != "clean context":
            write_random(os.path.join(project, "data", "raw.bin"), int(300 * MB * args.scale))
        for label, make in (("DOCKER_HOST=ssh:// classic", lambda: via_docker_host(False)),
                            ("DOCKER_HOST=ssh:// BuildKit", lambda: via_docker_host(True)),
                            ("syncctl push + remote build, classic", lambda: via_syncd(False)),
                            ("syncctl push + remote build, BuildKit", lambda: via_syncd(True))):
            cmd, e = make()
            run(cmd, env=e)  # warm: the first build fills the layer cache, the first push fills the remote
            runs = []
            for _ in range(args.rounds):
                one_edit()
                os.sync()
                up0, down0 = counter.read(counter_port)
                t0 = time.monotonic()
                run(cmd, env=e)
                seconds = time.monotonic() - t0
                up1, down1 = counter.read(counter_port)
                runs.append({"seconds": seconds, "bytes": (up1 - up0) + (down1 - down0)})
            med = {"seconds": statistics.median(r["seconds"] for r in runs), "bytes": statistics.median(r["bytes"] for r in runs)}
            log(f"[docker] {variant}, {label}: {med['seconds']:.2f} s, {med['bytes'] / MB:.2f} MB")
            results.append({"variant": variant, "workflow": label, **med, "runs": runs})
    return results


def docker_table(results):
    out = ["\n### Rebuild after a one-file change (loopback)\n",
           "| context | workflow | wall s | MB on the wire |", "|---|---|---|---|"]
    for r in results:
        out.append(f"| {r['variant']} | {r['workflow']} | {r['seconds']:.2f} | {r['bytes'] / MB:.2f} |")
    return "\n".join(out)


# ---------------------------------------------------------------- main

def main():
    p = argparse.ArgumentParser(description="syncd vs rsync and DOCKER_HOST, on loopback and a slow link")
    p.add_argument("--release", required=True, help="directory with syncctl and syncd-agent")
    p.add_argument("--rounds", type=int, default=3, help="runs per scenario and tool (median reported)")
    p.add_argument("--links", default="loopback,slow", help="comma list of loopback, slow")
    p.add_argument("--scale", type=float, default=1.0, help="multiplies the large files (1.0: about 400 MB)")
    p.add_argument("--no-docker", action="store_true", help="skip the DOCKER_HOST workflow")
    p.add_argument("--syncd-setting", action="append", default=[], metavar="'KEY: VALUE'",
                   help="a line added to syncd's syncd.yaml (as in --syncd-setting 'streams: 1'); repeatable")
    p.add_argument("--only", action="append", default=[], metavar="TEXT",
                   help="run only the scenarios whose name contains TEXT (and the initial push); repeatable")
    p.add_argument("--json", default=os.path.join(HERE, "compare-results.json"), help="where to write all numbers")
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    p.add_argument("--fs", choices=["loop", "loop-buffered", "tmp"], default="loop",
                   help="loop (default): a fresh ext4 image mounted for the run through a direct-I/O loop device, so "
                        "no tool pays for the inode allocator's memory of earlier runs; loop-buffered: the same through "
                        "a buffered loop device (every byte written back is copied again, by the loop worker, into "
                        "the host's page cache); tmp: a directory under $TMPDIR")
    args = p.parse_args()
    SYNCD_SETTINGS.extend(args.syncd_setting)
    args.release = os.path.abspath(args.release)
    links = [l for l in args.links.split(",") if l]
    if os.geteuid() != 0:
        raise SystemExit("compare: run as root (nftables counters, sshd, dockerd)")
    if "slow" in links and not os.path.exists(WANEM):
        raise SystemExit(f"compare: {WANEM} is missing (../shared beside the repository)")

    base = tempfile.mkdtemp(prefix="syncd-compare.")
    cleanup = []
    work = base
    fs_note = f"a directory on {base}'s file system"
    if args.fs in ("loop", "loop-buffered"):
        image = os.path.join(base, "fs.img")
        mnt = os.path.join(base, "mnt")
        os.makedirs(mnt)
        with open(image, "wb") as f:
            f.truncate(24 << 30)
        made = run(["mkfs.ext4", "-q", "-F", image], check=False)
        device = None
        if made.returncode == 0 and args.fs == "loop":
            # Direct I/O: written-back pages go to the disk as they would from a real one. A buffered loop device
            # copies each of them once more into the host file system's page cache, on the same cores, which
            # only a tool that makes its writes durable pays inside its timing (rsync's wait for the kernel).
            attached = run(["losetup", "--find", "--show", "--direct-io=on", image], check=False)
            if attached.returncode == 0:
                device = attached.stdout.strip()
            else:
                log(f"compare: no direct-I/O loop device ({attached.stderr.strip()}); using a buffered one")
        if device:
            mounted = run(["mount", device, mnt], check=False).returncode == 0
            if not mounted:
                run(["losetup", "-d", device], check=False)
        else:
            mounted = made.returncode == 0 and run(["mount", "-o", "loop", image, mnt], check=False).returncode == 0
        if mounted:
            work = mnt
            fs_note = (f"a fresh ext4 file system (loop device{', direct I/O' if device else ', buffered'}, "
                       "24 GB sparse image)")

            def unmount(device=device):
                # Recursive, for dockerd's overlay mounts below; lazy if something still holds it (a busy loop
                # device then detaches itself once free).
                done = run(["umount", "-R", mnt], check=False).returncode == 0 or run(["umount", "-l", mnt], check=False)
                if device:
                    run(["losetup", "-d", device], check=False)
                return done
            cleanup.append(unmount)
        else:
            log("compare: cannot mount a loop ext4 image; using a plain directory (numbers carry this disk's history)")
    try:
        project = os.path.join(work, "project")
        log(f"generating the project in {project} …")
        make_project(project, args.scale)
        project_bytes = tree_bytes(project)
        log(f"project: {project_bytes / MB:.0f} MB")
        docker_root = os.path.join(work, "docker")
        sshd = Sshd(os.path.join(work, "sshd"), setenv=f"DOCKER_HOST=unix://{docker_root}/docker.sock")
        cleanup.append(sshd.stop)
        ports = [sshd.port]
        wanem = None
        if "slow" in links:
            wanem = Wanem(sshd.port, os.path.join(work, "wanem.json"))
            cleanup.append(wanem.stop)
            sshd.alias("slow", wanem.port)
            ports.append(wanem.port)
        counter = WireCounter(ports)
        cleanup.append(counter.close)

        report = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                  "commit": run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"], check=False).stdout.strip(),
                  "machine": f"{os.cpu_count()} cores, {platform.machine()}, {platform.release()}",
                  "project_bytes": project_bytes, "rounds": args.rounds, "file_system": fs_note, "links": {}, "docker": None}
        tables = []
        checks = []
        for link in links:
            port, alias = (sshd.port, "bench") if link == "loopback" else (wanem.port, "slow")
            results = run_link(link, port, alias, args, work, project, sshd, counter)
            report["links"][link] = results
            tables.append(table(f"{link}" + ("" if link == "loopback" else f" (wanem {LINK_DELAY_MS} ms one-way, {LINK_MBIT} Mbit/s)"),
                                results))
            checks += targets(link, results, project_bytes)
            # The next link starts from empty remotes; checkpoints pulled over this one are not in its way.
            for d in (os.path.join(work, "remote", link), os.path.join(work, "pulled", link), os.path.join(project, "checkpoint")):
                shutil.rmtree(d, ignore_errors=True)

        if not args.no_docker:
            dockerd = Dockerd(docker_root)
            cleanup.append(dockerd.stop)
            if dockerd.error:
                log(f"skipping the DOCKER_HOST workflow: {dockerd.error}")
                report["docker"] = {"skipped": dockerd.error}
            else:
                results = docker_workflow(args, work, sshd, counter, dockerd)
                report["docker"] = results
                tables.append(docker_table(results))

        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
        print(f"\nProject {project_bytes / MB:.0f} MB; median of {args.rounds} runs; wall includes connection setup; "
              f"bytes are both directions, counted by nftables on the sshd (or wanem) port.\n"
              f"Machine: {report['machine']}. Files on {fs_note}. Commit {report['commit']}, {report['date']}.")
        print("\n".join(tables))
        print("\n### Targets\n")
        print("\n".join(checks))
        print(f"\nAll runs: {args.json}")
    finally:
        for stop in reversed(cleanup):
            try:
                stop()
            except Exception as e:  # keep cleaning up
                log(f"cleanup: {e}")
        if args.keep:
            log(f"kept {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
