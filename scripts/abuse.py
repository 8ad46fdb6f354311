#!/usr/bin/env python3
"""Attacks a running `cip-webhook serve` on loopback, as a client on the cluster network
could, while a prober checks that /healthz keeps answering within a second. Run by
scripts/abuse.sh, which starts the server; standard library only.

Phases: idle and half-open connections past --max-connections, slow headers, bodies that
hold memory, slow uploads (22 x 3 MiB declared, a byte a second) while reviews must be
answered within the API server's 5 s, ten pathological 3 MiB reviews at once (780,000
one-letter items, as scopes and as an unknown field) under a memory ceiling, slow-header
clients on the metrics port while the kubelet's 1 s probes must pass, huge-scope and
huge-denial reviews, seeded mutated reviews, and state directory hazards (a FIFO, a
symlink loop, deeply nested JSON, a duplicate object). Reports the worst /healthz latency
per phase, the peak RSS per phase, and fails (exit 1) if /healthz missed its second, a
review went unanswered under slow uploads, a metrics-port probe failed, the RSS passed
the Deployment's 256 MiB, the server answered 5xx, or it died. `--only NAME` runs the
phases whose name starts with NAME."""

import argparse
import copy
import json
import os
import random
import socket
import ssl
import subprocess
import sys
import threading
import time

BASE = {
    "apiVersion": "admission.k8s.io/v1",
    "kind": "AdmissionReview",
    "request": {
        "uid": "0d6c1d9a-5f2a-4d4e-9b8e-1b2c3d4e5f60",
        "kind": {"group": "config.openshift.io", "version": "v1", "kind": "ClusterImagePolicy"},
        "name": "p",
        "operation": "CREATE",
        "userInfo": {"username": "kube:admin"},
        "object": {
            "apiVersion": "config.openshift.io/v1",
            "kind": "ClusterImagePolicy",
            "metadata": {"name": "p"},
            "spec": {
                "scopes": ["example.org/apps"],
                "policy": {"rootOfTrust": {"policyType": "PublicKey", "publicKey": {"keyData": "Zm9vIGJhcg=="}}},
            },
        },
    },
}


class Target:
    def __init__(self, host, port, ca):
        self.host, self.port = host, port
        # One TLS context per ALPN offer: a context is shared by the threads.
        self.contexts = {}
        for alpn in (("http/1.1",), ("h2",)):
            context = ssl.create_default_context(cafile=ca)
            context.set_alpn_protocols(list(alpn))
            self.contexts[alpn] = context

    def connect(self, alpn=("http/1.1",), timeout=10):
        raw = socket.create_connection((self.host, self.port), timeout=timeout)
        return self.contexts[alpn].wrap_socket(raw, server_hostname="localhost")

    def request(self, method, path, body=b"", timeout=10):
        """One request on a fresh connection: (status, body bytes)."""
        s = self.connect(timeout=timeout)
        try:
            head = f"{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            s.sendall(head.encode() + body)
            data = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
        finally:
            s.close()
        status = int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/1.1 ") else 0
        return status, data.split(b"\r\n\r\n", 1)[-1]


class Watch:
    """/healthz once every 100 ms from another process (this one's threads share a GIL with
    the attackers), and the server's RSS."""

    def __init__(self, target, pid, ca, work):
        self.pid = pid
        self.peak_rss = 0
        self.phase = "start"
        self.phase_rss = {}
        self.phase_file = os.path.join(work, "phase")
        self.results = os.path.join(work, "probes")
        self.set_phase("start")
        self.prober = subprocess.Popen(
            [sys.executable, __file__, "--probe", "--port", str(target.port), "--ca", ca,
             "--phase-file", self.phase_file, "--results", self.results],
        )
        self.stop = False
        threading.Thread(target=self.rss, daemon=True).start()

    def set_phase(self, name):
        self.phase = name
        with open(self.phase_file + ".tmp", "w") as f:
            f.write(name)
        os.replace(self.phase_file + ".tmp", self.phase_file)

    def finish(self):
        """Stops the prober; (worst latency, misses, worst per phase)."""
        self.stop = True
        self.prober.terminate()
        self.prober.wait()
        worst, misses, per_phase = 0.0, 0, {}
        with open(self.results) as f:
            for line in f:
                phase, took, ok = line.rstrip("\n").rsplit("\t", 2)
                took = float(took)
                worst = max(worst, took)
                per_phase[phase] = max(per_phase.get(phase, 0.0), took)
                if ok != "1" or took > 1.0:
                    misses += 1
        return worst, misses, per_phase

    def rss(self):
        while not self.stop:
            try:
                with open(f"/proc/{self.pid}/status") as f:
                    for line in f:
                        if line.startswith("VmRSS:"):
                            kib = int(line.split()[1])
                            self.peak_rss = max(self.peak_rss, kib)
                            self.phase_rss[self.phase] = max(self.phase_rss.get(self.phase, 0), kib)
            except OSError:
                pass
            time.sleep(0.05)


def probe(args):
    """The prober process: /healthz every 100 ms, one line per probe."""
    target = Target("127.0.0.1", args.port, args.ca)
    with open(args.results, "w", buffering=1) as out:
        while True:
            try:
                with open(args.phase_file) as f:
                    phase = f.read()
            except OSError:
                phase = "?"
            started = time.monotonic()
            try:
                status, body = target.request("GET", "/healthz", timeout=1.0)
                ok = status == 200 and body == b"ok\n"
            except OSError:
                ok = False
            out.write(f"{phase}\t{time.monotonic() - started:.4f}\t{int(ok)}\n")
            time.sleep(0.1)


def hold(sockets, seconds):
    time.sleep(seconds)
    for s in sockets:
        try:
            s.close()
        except OSError:
            pass


def idle_connections(target, count, seconds):
    """Connections that never send a byte, half an HTTP/2 preface, or a whole one."""
    held = []
    for i in range(count):
        try:
            if i % 3 == 0:
                held.append(target.connect(alpn=("http/1.1",)))
            elif i % 3 == 1:
                s = target.connect(alpn=("h2",))
                s.sendall(b"PRI * HTTP/2.0\r\n")
                held.append(s)
            else:
                s = target.connect(alpn=("h2",))
                s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
                held.append(s)
        except OSError:
            pass
    hold(held, seconds)
    return len(held)


def slow_headers(target, count, seconds):
    held = []
    for _ in range(count):
        try:
            s = target.connect()
            s.sendall(b"POST /validate HTTP/1.1\r\n")
            held.append(s)
        except OSError:
            pass
    trickle(held, b"X", time.monotonic() + seconds, 0.5)
    hold(held, 0)
    return count


def trickle(held, data, until, every):
    """Sends `data` on each held socket every `every` seconds until `until`, dropping the
    sockets the server closed."""
    while time.monotonic() < until:
        for s in list(held):
            try:
                s.sendall(data)
            except OSError:
                held.remove(s)
        time.sleep(every)


def body_hogs(target, count, seconds):
    """Connections announcing 3 MiB bodies and sending them slowly."""
    held = []
    for _ in range(count):
        try:
            s = target.connect()
            s.sendall(b"POST /validate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 3145728\r\n\r\n{")
            held.append(s)
        except OSError:
            pass
    end = time.monotonic() + seconds
    chunk = b" " * 65536
    while time.monotonic() < end:
        for s in list(held):
            try:
                s.sendall(chunk)
            except OSError:
                held.remove(s)
        time.sleep(0.2)
    hold(held, 0)
    return count


def slow_uploads(target, seconds, results):
    """22 uploads declaring 3 MiB and sending a byte a second, two groups of 11 apart, while
    50 reviews are sent as the API server would, each given 5 s: how many were answered."""
    held = []

    def group():
        for _ in range(11):
            try:
                s = target.connect()
                s.sendall(b"POST /validate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 3145728\r\n\r\n{")
                held.append(s)
            except OSError:
                pass

    stop = time.monotonic() + max(seconds, 6)

    def attack():
        group()
        time.sleep(min(5.0, seconds / 2))
        group()
        trickle(held, b" ", stop, 1)

    attacker = threading.Thread(target=attack)
    attacker.start()
    time.sleep(0.5)
    body = review_with_scopes(["example.org/apps"])
    gap = max(seconds, 6) / 60

    def worker(n):
        for _ in range(5):
            try:
                status, _ = target.request("POST", "/validate", body, timeout=5)
                results.append(status == 200)
            except OSError:
                results.append(False)
            time.sleep(gap)

    run_threads(worker, 10)
    attacker.join()
    hold(held, 0)
    return f"{sum(results)} of {len(results)} reviews answered within 5 s"


def pathological_reviews(target, results):
    """Ten 3 MiB reviews of 780,000 one-letter items at once, as scopes and as an unknown
    field (which no CRD limit bounds): the memory they cost while decoding."""
    items = ["a"] * 780_000
    compact = (",", ":")
    scopes = copy.deepcopy(BASE)
    scopes["request"]["object"]["spec"]["scopes"] = items
    scopes = json.dumps(scopes, separators=compact).encode()
    unknown = copy.deepcopy(BASE)
    unknown["request"]["object"]["spec"]["x"] = items
    unknown = json.dumps(unknown, separators=compact).encode()

    def worker(n):
        body = scopes if n % 2 == 0 else unknown
        try:
            status, _ = target.request("POST", "/validate", body, timeout=30)
            results.append(status)
        except OSError:
            results.append(-1)

    run_threads(worker, 10)
    return f"{len(scopes) >> 20} MiB each, statuses {sorted(results)}"


def metrics_slow_headers(port, seconds, results):
    """40 clients trickling a request head to the metrics port, reconnecting when cut,
    while /healthz is asked there every 100 ms with the kubelet's 1 s timeout."""
    stop = time.monotonic() + seconds
    held = []

    def attack():
        while time.monotonic() < stop:
            while len(held) < 40:
                try:
                    s = socket.create_connection(("127.0.0.1", port), timeout=5)
                    s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
                    held.append(s)
                except OSError:
                    break
            for s in list(held):
                try:
                    s.sendall(b"x")
                except OSError:
                    held.remove(s)
                    s.close()
            time.sleep(0.25)

    attacker = threading.Thread(target=attack)
    attacker.start()
    time.sleep(0.5)
    while time.monotonic() < stop:
        try:
            s = socket.create_connection(("127.0.0.1", port), timeout=1)
            s.settimeout(1)
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            data = b""
            deadline = time.monotonic() + 1
            while time.monotonic() < deadline:
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
            s.close()
            results.append(data.startswith(b"HTTP/1.1 200") and data.endswith(b"ok\n"))
        except OSError:
            results.append(False)
        time.sleep(0.1)
    attacker.join()
    hold(held, 0)
    return f"{sum(results)} of {len(results)} probes answered within 1 s"


def review_with_scopes(scopes):
    r = copy.deepcopy(BASE)
    r["request"]["object"]["spec"]["scopes"] = scopes
    return json.dumps(r).encode()


def huge_reviews(target, seconds, threads, results):
    bodies = [
        review_with_scopes([f"Bad_{i}" for i in range(100_000)]),  # 100,000 scopes
        review_with_scopes([f"bad_{i}-" + "x" * 400 for i in range(256)]),  # 512 problems
        review_with_scopes(["a.io/" + "b" * 3_000_000]),  # one 3 MB scope
    ]
    end = time.monotonic() + seconds

    def worker(n):
        while time.monotonic() < end:
            body = bodies[n % len(bodies)]
            n += 1
            try:
                status, answer = target.request("POST", "/validate", body, timeout=15)
                results.append((status, len(answer)))
            except OSError:
                results.append((-1, 0))

    run_threads(worker, threads)


def mutate(rng, value, depth=0):
    """One random edit somewhere in a JSON value."""
    if isinstance(value, dict) and value and rng.random() < 0.7:
        key = rng.choice(sorted(value))
        value[key] = mutate(rng, value[key], depth + 1)
        return value
    if isinstance(value, list) and value and rng.random() < 0.7:
        i = rng.randrange(len(value))
        value[i] = mutate(rng, value[i], depth + 1)
        return value
    choice = rng.randrange(9)
    if choice == 0:
        return None
    if choice == 1:
        return rng.randint(-(2**63), 2**63 - 1)
    if choice == 2:
        return "".join(chr(rng.randrange(32, 0x2FFF)) for _ in range(rng.randrange(40)))
    if choice == 3 and len(json.dumps(value)) < 2000:
        return [value] * rng.randrange(1, 300)
    if choice == 4:
        return {"a" * rng.randrange(1, 50): value}
    if choice == 5 and isinstance(value, str) and len(value) < 2000:
        return value * rng.randrange(2, 500)
    if choice == 6:
        return rng.choice(["PublicKey", "PKI", "*.x", "openshift", "DELETE", "UPDATE", "Image", ""])
    if choice == 7:
        return {}
    return value


def fuzz(target, seconds, threads, seed, results):
    rng = random.Random(seed)
    end = time.monotonic() + seconds
    lock = threading.Lock()

    def worker(_):
        while time.monotonic() < end:
            with lock:
                review = copy.deepcopy(BASE)
                raw = json.dumps(review).encode()
                for _ in range(rng.randrange(1, 6)):
                    candidate = mutate(rng, copy.deepcopy(review))
                    encoded = json.dumps(candidate).encode()
                    # Bloat compounds; past 4 MiB (more than --max-body) is not worth building.
                    if len(encoded) <= 4 * 1024 * 1024:
                        review, raw = candidate, encoded
                if rng.random() < 0.1 and raw:
                    i = rng.randrange(len(raw))
                    raw = raw[:i] + bytes([rng.randrange(256)]) + raw[i + 1 :]
            path = "/validate" if rng.random() < 0.7 else "/mutate"
            try:
                status, answer = target.request("POST", path, raw, timeout=15)
                results.append((status, len(answer)))
            except OSError:
                results.append((-1, 0))

    run_threads(worker, threads)


def run_threads(worker, n):
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def state_hazards(state, seconds):
    """A FIFO, a symlink loop, 600 KB of nested JSON, a duplicate Image; then mended."""
    made = []
    fifo = os.path.join(state, "fifo.yaml")
    os.mkfifo(fifo)
    made.append(fifo)
    loop = os.path.join(state, "loop")
    os.symlink(state, loop)
    made.append(loop)
    nested = os.path.join(state, "nested.json")
    with open(nested, "w") as f:
        f.write('{"a":' * 100_000 + "1" + "}" * 100_000)
    made.append(nested)
    time.sleep(seconds / 2)
    duplicate = os.path.join(state, "image-copy.yaml")
    with open(os.path.join(state, "image.yaml")) as src, open(duplicate, "w") as dst:
        dst.write(src.read())
    made.append(duplicate)
    time.sleep(seconds / 2)
    for path in made:
        os.remove(path)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--ca", required=True)
    p.add_argument("--pid", type=int)
    p.add_argument("--state")
    p.add_argument("--max-connections", type=int)
    p.add_argument("--seconds", type=float, default=10.0, help="per phase")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--probe", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--phase-file", help=argparse.SUPPRESS)
    p.add_argument("--results", help=argparse.SUPPRESS)
    p.add_argument("--work", help="a directory for the prober's files")
    p.add_argument("--metrics-port", type=int, help="the server's plain-HTTP metrics port")
    p.add_argument("--only", help="run only the phases whose name starts with this")
    args = p.parse_args()
    if args.probe:
        return probe(args)
    target = Target("127.0.0.1", args.port, args.ca)
    watch = Watch(target, args.pid, args.ca, args.work)
    s = args.seconds
    outcomes = {}
    answers = []

    def phase(name, run):
        if args.only and not name.startswith(args.only):
            return
        watch.set_phase(name)
        started = time.monotonic()
        detail = run()
        outcomes[name] = (time.monotonic() - started, detail)

    phase("idle connections", lambda: idle_connections(target, args.max_connections + 64, s))
    phase("slow headers", lambda: slow_headers(target, args.max_connections // 2, s))
    phase("body hogs (60 x 3 MiB)", lambda: body_hogs(target, 60, s))
    uploads, pathological, probes = [], [], []
    phase("slow uploads (22 x 3 MiB)", lambda: slow_uploads(target, s, uploads))
    phase("pathological reviews (10 x 3 MiB)", lambda: pathological_reviews(target, pathological))
    if args.metrics_port:
        phase("metrics-port slow headers", lambda: metrics_slow_headers(args.metrics_port, s, probes))
    phase("huge reviews", lambda: huge_reviews(target, s, 4, answers))
    fuzzed = []
    phase("mutated reviews", lambda: fuzz(target, s, 4, args.seed, fuzzed))
    phase("state directory hazards", lambda: state_hazards(args.state, s))
    watch.set_phase("after")
    time.sleep(1.5)
    worst, misses, per_phase = watch.finish()
    alive = os.path.exists(f"/proc/{args.pid}")

    print("abuse harness (loopback)")
    for name, (took, detail) in outcomes.items():
        rss = watch.phase_rss.get(name, 0) / 1024
        print(f"  {name:<34} {took:6.1f} s   worst /healthz {per_phase.get(name, 0.0) * 1000:7.1f} ms   peak RSS {rss:6.1f} MiB   ({detail})")
    statuses = {}
    for status in pathological:
        statuses[status] = statuses.get(status, 0) + 1
    for status, _ in answers + fuzzed:
        statuses[status] = statuses.get(status, 0) + 1
    largest = max((size for _, size in answers + fuzzed), default=0)
    print(f"  huge reviews answered: {len(answers)}, mutated reviews: {len(fuzzed)}, statuses {dict(sorted(statuses.items()))}")
    print(f"  largest answer: {largest} bytes")
    print(f"  /healthz: worst {worst * 1000:.1f} ms, missed its second {misses} times")
    print(f"  peak RSS: {watch.peak_rss / 1024:.1f} MiB")
    failed = []
    if misses:
        failed.append("/healthz missed its second")
    if not all(uploads):
        failed.append("reviews unanswered under slow uploads")
    if not all(probes):
        failed.append("metrics-port probes failed")
    if watch.peak_rss > 256 * 1024:
        failed.append("RSS over the Deployment's 256 MiB limit")
    if any(500 <= status < 600 for status in statuses):
        failed.append("5xx answers")
    if not alive:
        failed.append("the server died")
    if largest > 64 * 1024:
        failed.append("an answer over 64 KiB")
    if failed:
        print("FAILED: " + ", ".join(failed))
        raise SystemExit(1)
    print("ok")


if __name__ == "__main__":
    main()
