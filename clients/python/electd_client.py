"""The reference client of electd's app contract (docs/app-contract.md). Standard library only.

An app beside electd (no wrapped command) acts as leader only within the budget electd's last
answer gave it: `valid_ms` milliseconds, counted from when the request was *sent*, on this
process's own monotonic clock. When the budget runs out without a fresh answer, the app stops
its leader-only work and is done within electd's `--stop-grace`; then it has stopped before the
lease can expire at etcd, so before any other replica can lead.

    from electd_client import Leadership

    lead = Leadership(socket="/run/electd/electd.sock")   # or url="http://127.0.0.1:4040"
    lead.watch()                       # keep the budget fresh from /watch (a thread)

    def work(lease):                   # runs only while this replica leads
        while not lease.stopping.is_set():
            write_somewhere(fencing_token=lease.token)
            lease.stopping.wait(0.1)

    lead.serve(work, grace=1.0)        # for ever: wait to lead, run work, stop it in time

`Leadership.is_leader()` is true only within the budget. `run_while_leader(fn)` runs
`fn(lease)` in a thread and sets `lease.stopping` when the budget runs out or electd says this
replica no longer leads; if `fn` has not returned `grace` seconds later, the process exits
(status 70): leader-only work that cannot be stopped must not outlive its budget.
"""

import http.client
import json
import os
import socket
import sys
import threading
import time
import urllib.parse

__all__ = ["Electd", "ElectdError", "Leadership", "Lease", "OVERRUN_EXIT_CODE"]

#: The exit status of a process whose leader-only work outlived its budget plus the grace.
OVERRUN_EXIT_CODE = 70

#: How long one request to electd may take (on top of a long poll's wait).
REQUEST_TIMEOUT = 2.0


class ElectdError(Exception):
    """electd could not be asked, or gave an answer that is not the /role document."""


def monotonic():
    """Seconds of CLOCK_MONOTONIC, the clock every budget is counted on."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) / 1e9


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path, timeout):
        super().__init__("electd", timeout=timeout)
        self._path = path

    def connect(self):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        try:
            s.connect(self._path)
        except OSError:
            s.close()
            raise
        self.sock = s


class Electd:
    """How to reach one electd: its HTTP address (`url`) or its Unix socket (`socket`)."""

    def __init__(self, url=None, socket=None):
        if (url is None) == (socket is None):
            raise ValueError("give exactly one of url= (http://HOST:PORT) or socket= (a path)")
        self.socket = socket
        if url is not None:
            u = urllib.parse.urlsplit(url)
            if u.scheme != "http" or not u.hostname or u.port is None:
                raise ValueError(f"url {url!r}: expected http://HOST:PORT, e.g. http://127.0.0.1:4040")
            self.host, self.port = u.hostname, u.port

    def __repr__(self):
        return f"Electd(socket={self.socket!r})" if self.socket else f"Electd(url=http://{self.host}:{self.port})"

    def connection(self, timeout):
        if self.socket is not None:
            return _UnixConnection(self.socket, timeout)
        return http.client.HTTPConnection(self.host, self.port, timeout=timeout)

    def role(self, wait=None, after=None):
        """GET /role (a long poll when `wait` seconds are given); the document, as a dict."""
        path = "/role"
        timeout = REQUEST_TIMEOUT
        if wait is not None:
            path += f"?wait={int(wait * 1000)}ms"
            if after is not None:
                path += f"&after={after}"
            timeout += wait
        conn = self.connection(timeout)
        try:
            conn.request("GET", path)
            resp = conn.getresponse()
            body = resp.read()
        except (OSError, http.client.HTTPException) as e:
            raise ElectdError(f"cannot ask {self!r}: {e}") from e
        finally:
            conn.close()
        if resp.status != 200:
            raise ElectdError(f"{self!r}: GET {path} answered {resp.status}: {body[:200]!r}")
        try:
            return json.loads(body)
        except ValueError as e:
            raise ElectdError(f"{self!r}: /role is not JSON: {e}") from e

    def events(self, timeout):
        """GET /watch: yields (event, data) pairs as they come; raises ElectdError when the
        stream breaks or stays silent for `timeout` seconds."""
        conn = self.connection(timeout)
        try:
            conn.request("GET", "/watch")
            resp = conn.getresponse()
            if resp.status != 200:
                raise ElectdError(f"{self!r}: GET /watch answered {resp.status}: {resp.read()[:200]!r}")
            event, data = "message", []
            while True:
                line = resp.fp.readline()
                if not line:
                    raise ElectdError(f"{self!r}: the /watch stream ended")
                line = line.decode("utf-8").rstrip("\r\n")
                if line == "":
                    if data:
                        yield event, "\n".join(data)
                    event, data = "message", []
                elif line.startswith(":"):
                    continue  # a keep-alive comment
                else:
                    field, _, value = line.partition(":")
                    value = value[1:] if value.startswith(" ") else value
                    if field == "event":
                        event = value
                    elif field == "data":
                        data.append(value)
        except (OSError, http.client.HTTPException) as e:
            raise ElectdError(f"{self!r}: the /watch stream failed: {e}") from e
        finally:
            conn.close()


class Lease:
    """One term of leadership, as `fn` of `run_while_leader` sees it."""

    def __init__(self, leadership, token):
        self.token = token
        self.stopping = threading.Event()
        self._leadership = leadership

    def valid(self):
        """Whether this term's budget still runs (and the stop was not asked for)."""
        return not self.stopping.is_set() and self._leadership.token() == self.token

    def remaining(self):
        """Seconds of budget left in this term (0 once it ran out)."""
        return self._leadership.remaining() if self.valid() else 0.0


class Leadership:
    """This replica's leadership as electd's answers allow it, counted on CLOCK_MONOTONIC.

    `on_claim(token, until)` is called with every budget taken (`until` in seconds of
    `monotonic()`), `on_change(doc)` with every document that changed the role."""

    def __init__(self, url=None, socket=None, electd=None, on_claim=None, on_change=None, log=None):
        self.electd = electd or Electd(url=url, socket=socket)
        self._lock = threading.Condition()
        self._claim = None  # (token, until) or None
        self._doc = None
        self._on_claim = on_claim
        self._on_change = on_change
        self._log = log or (lambda msg: print(f"electd_client: {msg}", file=sys.stderr, flush=True))
        self._watching = None
        self._stop_watching = threading.Event()

    # --- what the app asks -------------------------------------------------------------------

    def is_leader(self):
        """True only while the budget of electd's last answer runs."""
        return self.token() is not None

    def token(self):
        """The fencing token of the current term while the budget runs, else None."""
        with self._lock:
            c = self._claim
        if c is not None and monotonic() < c[1]:
            return c[0]
        return None

    def remaining(self):
        """Seconds of budget left (0.0 when not leading)."""
        with self._lock:
            c = self._claim
        return max(0.0, c[1] - monotonic()) if c is not None else 0.0

    def last(self):
        """electd's last /role document (a dict), or None before the first answer."""
        with self._lock:
            return self._doc

    def wait_until_leader(self, timeout=None, poll=0.5):
        """Block until this replica leads (True) or `timeout` seconds pass (False). Without a
        watch running, it long-polls /role itself."""
        end = None if timeout is None else monotonic() + timeout
        while not self.is_leader():
            left = None if end is None else end - monotonic()
            if left is not None and left <= 0:
                return False
            if self._watching is not None and self._watching.is_alive():
                with self._lock:
                    self._lock.wait(min(poll, left) if left is not None else poll)
            else:
                try:
                    self.refresh(wait=min(poll, left) if left is not None else poll)
                except ElectdError as e:
                    self._log(str(e))
                    time.sleep(min(0.2, poll))
        return True

    # --- keeping the budget fresh ------------------------------------------------------------

    def refresh(self, wait=None):
        """Ask /role once (a long poll of `wait` seconds when given, answered at once on a
        change); the budget counts from when the request was sent. Returns the document."""
        with self._lock:
            after = self._doc["version"] if (wait is not None and self._doc) else None
        sent = monotonic()
        doc = self.electd.role(wait=wait, after=after)
        self._take(doc, sent + doc.get("valid_ms", 0) / 1000.0 if doc.get("valid_ms") else None)
        return doc

    def watch(self):
        """Follow /watch in a daemon thread: role changes at once, a renewal after every
        keepalive while leading. A stream event's budget is taken from its
        `deadline_monotonic_ns` (electd's deadline on this host's CLOCK_MONOTONIC) when that is
        consistent with its `valid_ms`; otherwise the event is confirmed by a /role request
        counted from when it was sent. When the stream breaks, the budget is not extended until
        a fresh answer comes."""
        if self._watching is not None and self._watching.is_alive():
            return
        self._stop_watching.clear()
        self._watching = threading.Thread(target=self._watch_loop, name="electd-watch", daemon=True)
        self._watching.start()

    def stop_watching(self):
        self._stop_watching.set()

    def _watch_loop(self):
        while not self._stop_watching.is_set():
            try:
                # Leaders get an event every keepalive interval, everyone a keep-alive comment
                # every 15 s: 20 s of silence is a dead stream.
                for event, data in self.electd.events(timeout=20.0):
                    if self._stop_watching.is_set():
                        return
                    self._stream_event(event, json.loads(data))
            except (ElectdError, ValueError) as e:
                self._log(f"{e}; asking /role until the stream is back")
                end = monotonic() + 1.0
                while monotonic() < end and not self._stop_watching.is_set():
                    try:
                        self.refresh(wait=0.25)
                    except ElectdError:
                        time.sleep(0.1)

    def _stream_event(self, event, data):
        if event == "role":
            doc = data
        elif event == "lease":
            with self._lock:
                doc = dict(self._doc or {})
            if doc.get("version") != data.get("version"):
                return  # a renewal of a document we have not seen: the role event follows
            doc.update(valid_ms=data["valid_ms"], fencing_token=data["fencing_token"])
            doc["deadline_monotonic_ns"] = data.get("deadline_monotonic_ns")
        else:
            return
        until = None
        if doc.get("valid_ms"):
            d = doc.get("deadline_monotonic_ns")
            now = monotonic()
            # Plausible only if the deadline lies ahead by no more than valid_ms (the event was
            # built before now): then it is electd's deadline on this host's clock, and a stale
            # event (one that waited in the socket while this process was frozen) shows as
            # such. Otherwise ask, counting from the request.
            if d is not None and 0 < d / 1e9 - now <= doc["valid_ms"] / 1000.0 + 0.005:
                until = d / 1e9
            else:
                try:
                    self.refresh()
                except ElectdError as e:
                    self._log(str(e))
                return
        self._take(doc, until)

    def _take(self, doc, until):
        leads = doc.get("role") in ("leader", "suspect") and until is not None
        token = doc.get("fencing_token")
        with self._lock:
            old = self._doc
            self._doc = doc
            self._claim = (token, until) if leads and token is not None else None
            self._lock.notify_all()
        if leads and self._on_claim is not None:
            self._on_claim(token, until)
        if self._on_change is not None and (old is None or old.get("version") != doc.get("version")):
            self._on_change(doc)

    # --- running leader-only work ------------------------------------------------------------

    def run_while_leader(self, fn, grace, poll=None):
        """Run `fn(lease)` in a thread while this replica leads; set `lease.stopping` as soon as
        the budget runs out or electd says it no longer leads, and wait up to `grace` seconds
        (give electd's --stop-grace or less) for `fn` to return. Returns fn's result, or None
        if it was stopped (or this replica did not lead). If `fn` outlives the grace, the
        process exits with OVERRUN_EXIT_CODE. Without a watch running, it long-polls /role
        every `poll` seconds (default: a third of the budget, at most 0.5 s)."""
        token = self.token()
        if token is None:
            return None
        lease = Lease(self, token)
        result = {}

        def run():
            try:
                result["value"] = fn(lease)
            except BaseException as e:  # noqa: BLE001 - handed to the caller
                result["error"] = e

        worker = threading.Thread(target=run, name="electd-leader-work", daemon=True)
        worker.start()
        watching = self._watching is not None and self._watching.is_alive()
        while worker.is_alive():
            if self.token() != token:
                break
            left = self.remaining()
            if watching:
                worker.join(min(left, 0.05))
            else:
                try:
                    self.refresh(wait=max(0.01, min(poll or left / 3.0, 0.5, left / 3.0)))
                except ElectdError as e:
                    self._log(str(e))
                    worker.join(min(left, 0.05))
        lease.stopping.set()
        worker.join(grace)
        if worker.is_alive():
            self._log(
                f"leader-only work of term {token} did not stop within {grace}s after its "
                f"budget ran out; exiting ({OVERRUN_EXIT_CODE}) so it cannot act beside the next leader"
            )
            os._exit(OVERRUN_EXIT_CODE)
        if "error" in result:
            raise result["error"]
        return result.get("value")

    def serve(self, fn, grace, poll=0.5):
        """For ever: wait to lead, then run_while_leader(fn, grace)."""
        while True:
            self.wait_until_leader(poll=poll)
            self.run_while_leader(fn, grace)
