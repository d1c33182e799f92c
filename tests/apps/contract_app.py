"""A test app that follows electd's app contract through the reference client
(clients/python/electd_client.py) and writes what it did, for the checkers of
tests/app_contract.rs and the chaos run:

    LEDGER: start ID TOKEN NANOS / tick ID TOKEN NANOS (every 20 ms while acting) / stop ID TOKEN NANOS
    CLAIMS: claim ID TOKEN TAKEN_NANOS UNTIL_NANOS (every budget taken, on the wall clock)

Usage: contract_app.py ID LEDGER CLAIMS (--socket PATH | --url URL) [--watch] [--grace SECONDS]
"""

import argparse
import os
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "clients", "python"))

import electd_client  # noqa: E402


def main():
    p = argparse.ArgumentParser()
    p.add_argument("id")
    p.add_argument("ledger")
    p.add_argument("claims")
    p.add_argument("--socket")
    p.add_argument("--url")
    p.add_argument("--watch", action="store_true", help="keep the budget fresh from /watch")
    p.add_argument("--grace", type=float, default=0.5)
    p.add_argument(
        "--naive",
        action="store_true",
        help="break the contract on purpose (the checkers' self-test): poll /role, act while the "
        "last answer that came said leader, and keep it when a poll fails",
    )
    a = p.parse_args()
    lock = threading.Lock()

    def append(path, line):
        with lock, open(path, "a") as f:
            f.write(line + "\n")

    def on_claim(token, until):
        now = time.time_ns()
        wall_until = now + int((until - electd_client.monotonic()) * 1e9)
        append(a.claims, f"claim {a.id} {token} {now} {wall_until}")

    if a.naive:
        return naive(a, append)
    lead = electd_client.Leadership(url=a.url, socket=a.socket, on_claim=on_claim)
    if a.watch:
        lead.watch()

    def work(lease):
        append(a.ledger, f"start {a.id} {lease.token} {time.time_ns()}")
        while lease.valid():
            append(a.ledger, f"tick {a.id} {lease.token} {time.time_ns()}")
            lease.stopping.wait(0.02)
        append(a.ledger, f"stop {a.id} {lease.token} {time.time_ns()}")

    lead.serve(work, grace=a.grace, poll=0.2)


def naive(a, append):
    """What the retired Kubernetes leader-elector's users did: trust the last answer."""
    electd = electd_client.Electd(url=a.url, socket=a.socket)
    token = None
    while True:
        try:
            doc = electd.role()
            now = doc["fencing_token"] if doc["role"] in ("leader", "suspect") else None
        except electd_client.ElectdError:
            now = token  # no answer: nothing changed, surely
        if now != token:
            if token is not None:
                append(a.ledger, f"stop {a.id} {token} {time.time_ns()}")
            if now is not None:
                append(a.ledger, f"start {a.id} {now} {time.time_ns()}")
            token = now
        if token is not None:
            append(a.ledger, f"tick {a.id} {token} {time.time_ns()}")
        time.sleep(0.05)


if __name__ == "__main__":
    main()
