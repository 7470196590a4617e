#!/usr/bin/env python3
"""The daemon's targets, measured: a throwaway sshd on 127.0.0.1 and a project of FILES small files (100 a
directory) registered with syncd, which runs as under systemd. Measures:
  - start-up: inotify watches set up (from the daemon's log line), the first push of everything;
  - latency, RUNS times each: a small local edit until it is on the remote; a remote file written in place
    and closed until it is whole on the laptop (the agent's watch, no periodic pull); `syncctl push --wait`
    with nothing changed;
  - idle: CPU of the daemon and of the remote agent over IDLE seconds with nothing happening;
  - memory: the daemon's resident set (now and at its peak).
Prints markdown tables.
With --compare-cli before (or after), `syncctl push` pushes the same tree before the daemon starts (or once it
stopped), with its own state and remote root, caches dropped before each, so that the daemon's first full push can
be set beside the CLI's on the same file system. Whichever goes first meets the file system still busy with the
tree just made, so run both orders.
usage: Bench/daemon.py [--release DIR] [--runs N] [--files N] [--idle SECONDS] [--compare-cli before|after]"""
import argparse, os, re, shutil, signal, subprocess, sys, tempfile, time

HERE = os.path.dirname(os.path.abspath(__file__))
ap = argparse.ArgumentParser()
ap.add_argument("--release", default=os.path.join(HERE, "..", ".build", "release"))
ap.add_argument("--runs", type=int, default=50)
ap.add_argument("--files", type=int, default=200)
ap.add_argument("--idle", type=float, default=30)
ap.add_argument("--compare-cli", choices=["before", "after"])
args = ap.parse_args()
release = os.path.abspath(args.release)
work = tempfile.mkdtemp(prefix="syncd-daemon-bench.")
env = dict(os.environ, XDG_CONFIG_HOME=f"{work}/config", XDG_STATE_HOME=f"{work}/state", XDG_RUNTIME_DIR=f"{work}/run")
os.makedirs(f"{work}/run", mode=0o700)
port = subprocess.run(["bash", "-c", f'source "{HERE}/lib/sshd.sh" && bench_sshd_start "$1" && echo "$SSHD_PORT"', "_", f"{work}/sshd"],
                      check=True, capture_output=True, text=True).stdout.split()[-1]
project, remote = f"{work}/project", f"{work}/remote"
last = None
for i in range(args.files):
    d = f"{project}/src/d{i // 100}"
    if i % 100 == 0:
        os.makedirs(d)
    last = f"src/d{i // 100}/m{i}.py"
    with open(f"{project}/{last}", "w") as f:
        f.write(f"x = {i}\n" * 20)


def configure(root):
    with open(f"{project}/syncd.yaml", "w") as f:
        f.write(f"name: p\nremote: bench\nremote_root: {root}\nssh_config: {work}/sshd/ssh_config\nagent_path: {release}/syncd-agent\n")


def drop_caches():
    subprocess.run(["sync"])
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
    except OSError:
        pass


def cli_push():
    configure(f"{work}/remote-cli")
    drop_caches()
    t0 = time.monotonic()
    child = subprocess.Popen([f"{release}/syncctl", "push", project, "--json"], stdout=subprocess.DEVNULL,
                             stderr=open(os.environ.get("BENCH_CLI_LOG", "/dev/null"), "w"), env=dict(env, XDG_STATE_HOME=f"{work}/state-cli"))
    _, status, usage = os.wait4(child.pid, 0)
    took = (time.monotonic() - t0, usage.ru_maxrss / 1024, status, usage.ru_utime + usage.ru_stime)
    configure(remote)
    drop_caches()  # its remote copy is kept: deleting a million files leaves the file system busy for a while
    return took


cli = cli_push() if args.compare_cli == "before" else None
configure(remote)
subprocess.run([f"{release}/syncctl", "add", project], env=env, check=True, capture_output=True)
log_path = f"{work}/syncd.log"
drop_caches()  # the daemon starts from a cold cache, as the CLI does
started = time.monotonic()
daemon = subprocess.Popen([f"{release}/syncd", "--pull-interval", "3600"], env=env, stdout=subprocess.DEVNULL,
                          stderr=open(log_path, "w"))


def pct(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def wait_until(check, limit, what):
    t0 = time.monotonic()
    while not check():
        if time.monotonic() - t0 > limit:
            raise SystemExit(f"{what} did not happen within {limit} s; daemon log:\n" + open(log_path).read())
        time.sleep(0.001)
    return time.monotonic() - t0


def content_is(path, data):
    try:
        with open(path, "rb") as f:
            return f.read() == data
    except OSError:
        return False


def cpu_seconds(pid):
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def status_kb(pid, key):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


try:
    wait_until(lambda: "watching (" in open(log_path).read(), 120, "watch set-up")
    m = re.search(r"watching \((\d+) directories, set up in (\d+) ms\)", open(log_path).read())
    # The first push is over when the daemon says so (a file that sorts last need not be placed last).
    wait_until(lambda: re.search(r": push: \d+ changed", open(log_path).read()) and os.path.exists(f"{remote}/p/{last}"), 900,
               "the first push")
    first_push = time.monotonic() - started  # (this once added the wait to the time since the start: twice)
    first_push_cpu = cpu_seconds(daemon.pid)
    time.sleep(0.5)
    edits, pulls, waits = [], [], []
    for i in range(args.runs):
        data = f"edit = {i} {time.time()}\n".encode()
        t0 = time.monotonic()
        with open(f"{project}/src/edited.py", "wb") as f:
            f.write(data)
        wait_until(lambda: content_is(f"{remote}/p/src/edited.py", data), 10, "an edit reaching the remote")
        edits.append((time.monotonic() - t0) * 1000)
        time.sleep(0.2)
    os.makedirs(f"{remote}/p/checkpoint", exist_ok=True)
    for i in range(args.runs):
        data = os.urandom(200_000)
        fd = os.open(f"{remote}/p/checkpoint/c{i}.pt", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.write(fd, data)
        t0 = time.monotonic()
        os.close(fd)
        wait_until(lambda: content_is(f"{project}/checkpoint/c{i}.pt", data), 15, "a remote checkpoint reaching the laptop")
        pulls.append((time.monotonic() - t0) * 1000)
        time.sleep(0.2)
    for i in range(args.runs):
        t0 = time.monotonic()
        subprocess.run([f"{release}/syncctl", "push", project, "--wait", "--json"], env=env, check=True, capture_output=True)
        waits.append((time.monotonic() - t0) * 1000)

    agents = subprocess.run(["pgrep", "-f", "serve --expect-digest"], capture_output=True, text=True).stdout.split()
    time.sleep(2)
    d0 = cpu_seconds(daemon.pid)
    a0 = sum(cpu_seconds(int(p)) for p in agents)
    time.sleep(args.idle)
    daemon_idle = (cpu_seconds(daemon.pid) - d0) / args.idle * 100
    agent_idle = (sum(cpu_seconds(int(p)) for p in agents) - a0) / args.idle * 100

    rss = (status_kb(daemon.pid, 'VmRSS') / 1024, status_kb(daemon.pid, 'VmHWM') / 1024)
    if args.compare_cli == "after":
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=60)
        cli = cli_push()

    print(f"### {args.files} files, loopback sshd\n")
    print("| start-up | value |")
    print("|---|---|")
    print(f"| inotify watches set up | {m.group(2) if m else '?'} ms ({m.group(1) if m else '?'} directories) |")
    print(f"| daemon start to the whole project on the remote (its CPU) | {first_push:.1f} s ({first_push_cpu:.1f} s) |")
    if cli:
        print(f"| `syncctl push` of the same tree, {args.compare_cli} the daemon (its peak) | {cli[0]:.1f} s ({cli[3]:.1f} s CPU, {cli[1]:.0f} MB){'' if cli[2] == 0 else f' status {cli[2]}'} |")
    print(f"| daemon RSS after the runs / peak | {rss[0]:.0f} MB / {rss[1]:.0f} MB |")
    print(f"| idle CPU over {args.idle:.0f} s: daemon / remote agent | {daemon_idle:.3f}% / {agent_idle:.3f}% |")
    print()
    print(f"| latency ({args.runs} runs, ms) | p50 | p90 | p99 | max |")
    print("|---|---|---|---|---|")
    for name, v in (("edit saved locally -> on the remote", edits),
                    ("remote file closed -> whole on the laptop", pulls),
                    ("`syncctl push --wait`, nothing changed", waits)):
        print(f"| {name} | {pct(v, 50):.0f} | {pct(v, 90):.0f} | {pct(v, 99):.0f} | {max(v):.0f} |")
finally:
    if os.environ.get("BENCH_KEEP_LOG") and os.path.exists(log_path):
        shutil.copy(log_path, os.environ["BENCH_KEEP_LOG"])
    if daemon.poll() is None:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=60)
    subprocess.run(["bash", "-c", f'kill $(cat "{work}/sshd/sshd.pid") 2>/dev/null'])
    shutil.rmtree(work, ignore_errors=True)
