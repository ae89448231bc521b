"""Unauthenticated abuse against `terrazzo serve`, on loopback only: the real CLI in a subprocess (a tool
agent, so the figures are the server's own), authorised clients sending requests meanwhile.

    .venv/bin/python bench/bench_abuse.py [--sockets 1030] [--flood 5000] [--authorised 200] [--write]

Phases, side by side: (1) authorised traffic alone; (2) slowloris: `--sockets` connections each holding
half a request head, opened while the authorised traffic runs; (3) method flood: `--flood` requests with
invented HTTP methods and no token. Printed per phase: authorised success, the server's RSS growth
(/proc/PID/status VmRSS, after the phase against before it), the metric series the server exports and
the sockets it evicted. Required: >= 99 % authorised success and < 10 MB growth in phases 2 and 3.
Bounded: fixed counts, every socket and request has a timeout, the run takes about a minute.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import datetime
import os
import platform
import secrets
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
import tests_path  # noqa: E402,F401  (the drill tools for the worker processes)

SECTION = "## Abuse: slowloris and method flood (bench/bench_abuse.py)"
AGENT = ROOT / "tests/data/serve/slow.yaml"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def authorised(url: str, token: str, n: int, workers: int = 4) -> tuple[int, int]:
    """(ok, sent) for `n` invokes from `workers` clients."""
    def one(i: int) -> bool:
        try:
            with httpx.Client(base_url=url, timeout=30, headers={"Authorization": f"Bearer {token}"}) as c:
                r = c.post("/v1/agents/slow/invoke", json={"input": f"real {i}"})
                return r.status_code == 200 and r.json()["ok"]
        except httpx.HTTPError:
            return False

    with cf.ThreadPoolExecutor(workers) as pool:
        results = list(pool.map(one, range(n)))
    return sum(results), n


def series(url: str, token: str) -> int:
    text = httpx.get(f"{url}/metrics", headers={"Authorization": f"Bearer {token}"}, timeout=30).text
    return sum(1 for line in text.splitlines() if line and not line.startswith("#"))


def slowloris(port: int, n: int, hold_s: float, stop: threading.Event) -> int:
    """Open `n` sockets with half a head each and keep them until `stop` or `hold_s`; returns how many opened."""
    socks: list[socket.socket] = []
    try:
        for _ in range(n):
            if stop.is_set():
                break
            try:
                s = socket.create_connection(("127.0.0.1", port), timeout=5)
                s.sendall(b"POST /v1/agents/slow/invoke HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
                socks.append(s)
            except OSError:
                continue
        stop.wait(hold_s)
        return len(socks)
    finally:
        for s in socks:
            s.close()


def flood(url: str, n: int, workers: int = 8) -> int:
    def one(i: int) -> int:
        try:
            return httpx.request(f"M{secrets.token_hex(4).upper()}", f"{url}/x/{i}", timeout=10).status_code
        except httpx.HTTPError:
            return 0

    with cf.ThreadPoolExecutor(workers) as pool:
        return sum(1 for code in pool.map(one, range(n)) if code)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sockets", type=int, default=1030)
    ap.add_argument("--flood", type=int, default=5000)
    ap.add_argument("--authorised", type=int, default=200)
    ap.add_argument("--write", action="store_true")
    args = ap.parse_args()
    token = secrets.token_hex(24)
    port, url = free_port(), ""
    tmp = Path(tempfile.mkdtemp(prefix="tz-abuse-"))
    (tmp / "run.yaml").write_text(f"state_dir: {tmp}\nwarmup: false\n")
    (tmp / "serve.yaml").write_text("controller: {enabled: false}\nlimits: {header_timeout_s: 10}\n")
    env = {**os.environ, "ABUSE_TOKEN": token}
    proc = subprocess.Popen([sys.executable, "-m", "terrazzo.cli", "serve", str(AGENT), "--port", str(port),
                             "--config", str(tmp / "run.yaml"), "--serve-config", str(tmp / "serve.yaml"),
                             "--token-env", "ABUSE_TOKEN", "--log-level", "warning"],
                            env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=(tmp / "serve.log").open("w"))
    url = f"http://127.0.0.1:{port}"
    rows: list[tuple[str, int, int, float, int, float]] = []
    try:
        for _ in range(600):  # bounded wait for readiness (60 s)
            try:
                if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        authorised(url, token, 20)  # warm: workers and code paths loaded before any measurement
        before = rss_mb(proc.pid)
        ok, sent = authorised(url, token, args.authorised)
        rows.append(("authorised alone", ok, sent, rss_mb(proc.pid) - before, series(url, token), 0.0))

        before = rss_mb(proc.pid)
        stop = threading.Event()
        loris = threading.Thread(target=slowloris, args=(port, args.sockets, 60.0, stop), daemon=True)
        loris.start()
        time.sleep(2.0)  # the sockets are open (or being opened) when the real clients start
        ok, sent = authorised(url, token, args.authorised)
        grown = rss_mb(proc.pid) - before
        stop.set()
        loris.join(30)
        rows.append((f"slowloris ({args.sockets} half-open sockets)", ok, sent, grown, series(url, token), 0.0))

        before = rss_mb(proc.pid)
        flooder = threading.Thread(target=flood, args=(url, args.flood), daemon=True)
        flooder.start()
        ok, sent = authorised(url, token, args.authorised)
        flooder.join(300)
        rows.append((f"method flood ({args.flood} invented methods, no token)", ok, sent, rss_mb(proc.pid) - before,
                     series(url, token), 0.0))
    finally:
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)

    lines = [f"{SECTION}\n", f"Run {datetime.date.today()} on {platform.machine()}, {os.cpu_count()} cores, loopback; "
             f"`terrazzo serve {AGENT.relative_to(ROOT)}` in a subprocess, "
             f"{args.authorised} authorised invokes per phase from 4 clients.\n",
             "```\nbench/bench_abuse.py " + " ".join(sys.argv[1:]).replace("--write", "").strip() + "\n```\n",
             "| phase | authorised ok | success | server RSS growth MB | metric series |",
             "| --- | --- | --- | --- | --- |"]
    base_series = rows[0][4]
    failed = False
    for name, ok, sent, grown, n_series, _ in rows:
        lines.append(f"| {name} | {ok}/{sent} | {100 * ok / sent:.1f} % | {grown:+.1f} | {n_series} "
                     f"({n_series / base_series:.2f}× alone) |")
        if name != "authorised alone" and (ok / sent < 0.99 or grown >= 10):
            failed = True
    lines.append(f"\nRequired in the abuse phases: >= 99 % success and < 10 MB RSS growth: "
                 f"{'FAILED' if failed else 'met'}.\n")
    out = "\n".join(lines)
    print(out)
    if args.write:
        write_section(out)
    return 1 if failed else 0


def write_section(text: str, section: str = SECTION) -> None:
    """Replace (or append) this benchmark's own section of docs/BENCHMARKS.md."""
    path = ROOT / "docs/BENCHMARKS.md"
    doc = path.read_text()
    if section in doc:
        start = doc.index(section)
        nxt = doc.find("\n## ", start + len(section))
        doc = doc[:start] + text.rstrip() + "\n" + (doc[nxt:] if nxt != -1 else "")
    else:
        doc = doc.rstrip() + "\n\n" + text.rstrip() + "\n"
    path.write_text(doc)


if __name__ == "__main__":
    sys.exit(main())
