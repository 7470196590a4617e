#!/usr/bin/env python3
"""How fast the daemon moves an edit: a throwaway sshd on 127.0.0.1, a project registered with syncd, then
N times: write a small file and time until it is on the remote (polled every millisecond); and N times
`syncctl push --wait` with nothing changed. Prints a markdown table (p50, p90, p99, max).
usage: Bench/daemon-latency.py [RELEASE_DIR] [N]"""
import os, shutil, signal, statistics, subprocess, sys, tempfile, time

HERE = os.path.dirname(os.path.abspath(__file__))
release = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else os.path.join(HERE, "..", ".build", "release"))
n = int(sys.argv[2]) if len(sys.argv) > 2 else 50
work = tempfile.mkdtemp(prefix="syncd-latency.")
env = dict(os.environ, XDG_CONFIG_HOME=f"{work}/config", XDG_STATE_HOME=f"{work}/state", XDG_RUNTIME_DIR=f"{work}/run")
os.makedirs(f"{work}/run", mode=0o700)
port = subprocess.run(["bash", "-c", f'source "{HERE}/lib/sshd.sh" && bench_sshd_start "$1" && echo "$SSHD_PORT"', "_", f"{work}/sshd"],
                      check=True, capture_output=True, text=True).stdout.split()[-1]
project, remote = f"{work}/project", f"{work}/remote"
os.makedirs(f"{project}/src")
for i in range(200):
    with open(f"{project}/src/m{i}.py", "w") as f:
        f.write(f"x = {i}\n" * 50)
with open(f"{project}/syncd.yaml", "w") as f:
    f.write(f"name: p\nremote: bench\nremote_root: {remote}\nssh_config: {work}/sshd/ssh_config\nagent_path: {release}/syncd-agent\n")
subprocess.run([f"{release}/syncctl", "add", project], env=env, check=True, capture_output=True)
daemon = subprocess.Popen([f"{release}/syncd", "--pull-interval", "3600"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

def pct(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]

try:
    deadline = time.time() + 30
    while not os.path.exists(f"{remote}/p/src/m199.py") and time.time() < deadline:
        time.sleep(0.01)
    time.sleep(0.5)
    edits = []
    for i in range(n):
        text = f"edit = {i} {time.time()}\n"
        target = f"{remote}/p/src/edited.py"
        t0 = time.monotonic()
        with open(f"{project}/src/edited.py", "w") as f:
            f.write(text)
        while True:
            try:
                with open(target) as f:
                    if f.read() == text:
                        break
            except OSError:
                pass
            if time.monotonic() - t0 > 10:
                raise SystemExit("an edit did not reach the remote within 10 s")
            time.sleep(0.001)
        edits.append((time.monotonic() - t0) * 1000)
        time.sleep(0.2)
    waits = []
    for i in range(n):
        t0 = time.monotonic()
        subprocess.run([f"{release}/syncctl", "push", project, "--wait", "--json"], env=env, check=True, capture_output=True)
        waits.append((time.monotonic() - t0) * 1000)
    print(f"| measurement ({n} runs, loopback sshd, ms) | p50 | p90 | p99 | max |")
    print("|---|---|---|---|---|")
    for name, v in (("edit saved locally -> on the remote", edits), ("`syncctl push --wait`, nothing changed", waits)):
        print(f"| {name} | {pct(v, 50):.0f} | {pct(v, 90):.0f} | {pct(v, 99):.0f} | {max(v):.0f} |")
finally:
    daemon.send_signal(signal.SIGTERM)
    daemon.wait(timeout=30)
    subprocess.run(["bash", "-c", f'kill $(cat "{work}/sshd/sshd.pid") 2>/dev/null'])
    shutil.rmtree(work, ignore_errors=True)
