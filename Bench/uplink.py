#!/usr/bin/env python3
"""uplink: one emulated wide-area link in front of several loopback servers.

A laptop has one uplink, shared by every connection it makes: to each GPU host and to the object store.
../shared/tools/wanem emulates such a link for one target; this runs its link model (its Link and pump, loaded
from the wanem script) for several listen=target pairs at once, with a single bandwidth cap and delay per
direction shared by all of them, and counts the bytes of each pair and in total.

    uplink.py --delay-ms 25 --rate-mbit 100 --stats /tmp/up.json \\
              --pair 127.0.0.1:4001=127.0.0.1:2201 --pair 127.0.0.1:4002=127.0.0.1:8333

The stats file: {"up_bytes": N, "down_bytes": N, "pairs": {"LISTEN": {"up_bytes": N, "down_bytes": N}}},
rewritten while bytes flow and on exit. Runs until SIGTERM/SIGINT or --max-seconds.
"""
import argparse
import asyncio
import importlib.machinery
import importlib.util
import json
import os
import signal
import sys
import time

WANEM = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "tools", "wanem")


def load_wanem():
    loader = importlib.machinery.SourceFileLoader("wanem", WANEM)
    spec = importlib.util.spec_from_loader("wanem", loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


async def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pair", action="append", required=True, help="LISTEN_HOST:PORT=TARGET_HOST:PORT (loopback only)")
    p.add_argument("--delay-ms", type=float, default=0.0)
    p.add_argument("--rate-mbit", type=float, default=0.0)
    p.add_argument("--stats", default="")
    p.add_argument("--max-seconds", type=float, default=7200.0)
    a = p.parse_args()
    wanem = load_wanem()
    up = wanem.Link(a.delay_ms / 1000, a.rate_mbit * 1e6)
    down = wanem.Link(a.delay_ms / 1000, a.rate_mbit * 1e6)
    counts = {}
    written = [0.0]

    def write(force=False):
        if not a.stats or (not force and time.monotonic() - written[0] < 0.05):
            return
        written[0] = time.monotonic()
        total_up = sum(c["up_bytes"] for c in counts.values())
        total_down = sum(c["down_bytes"] for c in counts.values())
        tmp = a.stats + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"up_bytes": total_up, "down_bytes": total_down, "pairs": counts}, f)
        os.replace(tmp, a.stats)

    servers = []
    for pair in a.pair:
        listen, target = pair.split("=", 1)
        lhost, lport = listen.rsplit(":", 1)
        thost, tport = target.rsplit(":", 1)
        if not (lhost.startswith("127.") and thost.startswith("127.")):
            sys.exit(f"uplink: {pair}: loopback addresses only")
        counts[listen] = {"up_bytes": 0, "down_bytes": 0}

        def handler(listen=listen, thost=thost, tport=int(tport)):
            async def handle(creader, cwriter):
                try:
                    sreader, swriter = await asyncio.open_connection(thost, tport)
                except OSError as e:
                    print(f"uplink: cannot reach {thost}:{tport}: {e}", file=sys.stderr)
                    cwriter.close()
                    return

                def add_up(n):
                    counts[listen]["up_bytes"] += n
                    write()

                def add_down(n):
                    counts[listen]["down_bytes"] += n
                    write()

                try:
                    await asyncio.gather(wanem.pump(creader, swriter, up, add_up), wanem.pump(sreader, cwriter, down, add_down))
                except asyncio.CancelledError:
                    pass
                finally:
                    for w in (cwriter, swriter):
                        w.close()
                    write(force=True)
            return handle

        servers.append(await asyncio.start_server(handler(), lhost, int(lport)))
    write(force=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for s in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(s, stop.set)
    try:
        await asyncio.wait_for(stop.wait(), timeout=a.max_seconds)
    except asyncio.TimeoutError:
        pass
    for server in servers:
        server.close()
    write(force=True)


if __name__ == "__main__":
    asyncio.run(main())
