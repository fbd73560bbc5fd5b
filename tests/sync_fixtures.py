"""Fixtures of the sync / LIS tests: real sessions in a real Store, the Medplum
FHIR server in node, an ASTM LIS peer and an MLLP peer on real sockets / ptys.

Imported by each sync / LIS test module (not a conftest.py: the tests folder is
shared with other components).
"""

from __future__ import annotations

import json
import math
import os
import queue
import select
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

from edge_app.labels import FIVE_PART  # noqa: E402
from edge_app.store import review as store_review  # noqa: E402
from edge_app.store.db import Store  # noqa: E402

SERVER_DIR = ROOT / "tests" / "fhir_server"
TOKEN = "test-token-0123456789abcdef"
IDENT_SYSTEM = "urn:wbc-counter:result"

ENQ, ACK, NAK, EOT, STX, ETX, ETB = b"\x05", b"\x06", b"\x15", b"\x04", b"\x02", b"\x03", b"\x17"


# -- sessions ----------------------------------------------------------------
def wilson(k: int, n: int, z: float = 1.959964) -> tuple:
    if n == 0:
        return (0.0, 100.0)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (round(max(0.0, centre - half) * 100, 1), round(min(1.0, centre + half) * 100, 1))


def finalised_session(store: Store, *, sample_id: str = "S-0001", operator: str = "op.alice",
                      counts: dict | None = None, crops: int = 0, device: str = "kiosk-7",
                      signed_by: str | None = "dr.reviewer") -> tuple:
    """A real session: cells added, finalised with the app's payload schema, and signed off by
    ``signed_by`` (None: left unsigned, as a count nobody reviewed). Returns (session_id, result_id)."""
    counts = counts or {"neutrophil": 58, "lymphocyte": 30, "monocyte": 7, "eosinophil": 4, "basophil": 1}
    sid = store.open_session(target=100, sample_id=sample_id, operator=operator, device=device,
                             model_version="wbcnet-1.2", backend="tflite")
    added = 0
    with store.transaction():  # one commit (fsync) for all cells keeps the tests fast
        for label, n in counts.items():
            for i in range(n):
                jpeg = None
                if added < crops:
                    jpeg = b"\xff\xd8\xff\xe0" + label.encode() + bytes([i % 256]) * 40 + b"\xff\xd9"
                store.add_cell(sid, label=label, confidence=0.9, flagged=(i == 0), crop_jpeg=jpeg, frame_index=i)
                added += 1
    total = sum(counts.values())
    payload = {
        "session": sid, "sample_id": sample_id, "operator": operator, "device": device,
        "model_version": "wbcnet-1.2", "backend": "tflite", "total": total,
        "counts": dict(counts),
        "percent": {c: round(100.0 * counts[c] / total, 2) for c in FIVE_PART},
        "ci95": {c: list(wilson(counts[c], total)) for c in FIVE_PART},
        "ci_method": "wilson", "other": 3, "frames": 812, "fps": 29.7, "target": 100,
        "wbc_count": None, "absolute": None, "flagged": 5, "corrections": 1,
        "finalised_at": "2025-03-04T09:15:30.250+00:00",
    }
    rid = store.finalise_session(sid, payload)
    if signed_by:
        # The fixture's payload is hand-made (its "other" cells are not in the table), so it is
        # signed as it stands rather than recomputed from the cells as edge_app.review.sign does.
        signed = {**payload, "version": 1, "signed_by": signed_by, "signed_at": "2025-03-04T09:20:00.000+00:00",
                  "amended": False, "amendment_reason": None}
        store_review.store_signoff(store, sid, 1, signed_by, signed)
    return sid, rid


def outbox_rows(store: Store, destination: str | None = None) -> list:
    q = "SELECT * FROM outbox" + (" WHERE destination=?" if destination else "") + " ORDER BY id"
    return [dict(r) for r in store.conn.execute(q, (destination,) if destination else ())]


def run_cli(argv: list, capsys) -> tuple:
    """Run the real console entry point in-process: (exit code, stdout, stderr)."""
    from edge_app.cli import main
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def summary_line(out: str) -> dict:
    return json.loads(out.strip().splitlines()[-1])


def write_token(path: Path, token: str = TOKEN, mode: int = 0o600) -> Path:
    path.write_text(token + "\n")
    path.chmod(mode)
    return path


def write_config(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- the FHIR server -----------------------------------------------------------
class FhirServer:
    """The Medplum in-memory router behind node:http (tests/fhir_server/server.js).

    Its resources persist in ``state`` across kill/start, so a restart is a
    restart, not a fresh empty server.
    """

    def __init__(self, workdir: Path):
        self.state = workdir / "fhir-state.json"
        self.port = 0
        self.proc = None
        self.events: "queue.Queue[dict]" = queue.Queue()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/fhir/R4"

    def start(self, **env) -> "FhirServer":
        full = dict(os.environ, WBC_FHIR_STATE=str(self.state), WBC_FHIR_TOKEN=TOKEN,
                    WBC_FHIR_PORT=str(self.port), **{k: str(v) for k, v in env.items()})
        self.proc = subprocess.Popen(["node", "server.js"], cwd=SERVER_DIR, env=full, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE)
        ready, _, _ = select.select([self.proc.stdout], [], [], 60)
        line = self.proc.stdout.readline() if ready else b""
        if not line:
            err = self.proc.stderr.read().decode(errors="replace") if self.proc.poll() is not None else "no answer"
            self.kill()
            raise RuntimeError(f"FHIR test server did not start: {err[-2000:]}")
        self.port = json.loads(line)["port"]
        threading.Thread(target=self._pump, args=(self.proc,), daemon=True).start()
        return self

    def _pump(self, proc) -> None:
        for line in proc.stdout:
            try:
                self.events.put(json.loads(line))
            except ValueError:
                pass

    def wait_event(self, name: str, timeout: float = 30) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                ev = self.events.get(timeout=0.2)
            except queue.Empty:
                continue
            if ev.get("event") == name:
                return ev
        raise AssertionError(f"FHIR server never reported {name!r}")

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        if self.proc:
            self.proc.wait(timeout=10)

    def restart(self, **env) -> "FhirServer":
        self.kill()
        return self.start(**env)

    def get(self, path: str, **params) -> dict:
        url = self.url + "/" + path + ("?" + urllib.parse.urlencode(params) if params else "")
        req = urllib.request.Request(url, headers={"Authorization": f"Bearer {TOKEN}",
                                                   "Accept": "application/fhir+json"})
        with urllib.request.urlopen(req, timeout=30) as resp:
            return json.loads(resp.read())

    def search(self, resource_type: str, **params) -> list:
        bundle = self.get(resource_type, _count="1000", **params)
        return [e["resource"] for e in bundle.get("entry", [])]


def node_ready() -> bool:
    return shutil.which("node") is not None and (SERVER_DIR / "node_modules" / "@medplum" / "fhir-router").is_dir()


def running_fhir_server(tmp_path):
    """Generator for a module's ``fhir_server`` fixture: a started server, killed afterwards."""
    if not node_ready():
        msg = "Medplum test server not installed: run 'npm ci --prefix tests/fhir_server'"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    server = FhirServer(tmp_path)
    server.start()
    yield server
    server.kill()


# -- an ASTM LIS on the far end of a byte stream --------------------------------
def astm_checksum(body: bytes) -> bytes:
    """Written independently of edge_app.lis.astm_e1381 on purpose."""
    total = 0
    for b in body:
        total = (total + b) & 0xFF
    return ("%02X" % total).encode()


class AstmPeer:
    """A LIS that receives one ASTM E1381 transfer and checks every frame.

    ``recv(n)`` / ``send(data)`` are given by the transport (pty or socket).
    ``nak_frames``: frame indexes (1-based, counting every frame sent) to NAK
    once; ``enq_reply``: replies to successive ENQs before the ACK.
    """

    def __init__(self, recv, send, *, nak_frames=(), enq_replies=(), silent=False):
        self.recv, self.send = recv, send
        self.nak_frames = set(nak_frames)
        self.enq_replies = list(enq_replies)
        self.silent = silent
        self.frames = []          # (fn, text bytes, terminator, checksum ok) of every frame seen
        self.accepted = []        # frames ACKed, in order
        self.events = []          # "ENQ", "EOT", "NAK n", ...
        self.done = threading.Event()
        self.error = None

    def _read_byte(self, timeout=20.0) -> bytes:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            b = self.recv(1)
            if b:
                return b
        raise TimeoutError("the sender went quiet")

    def run(self) -> None:
        try:
            seen = 0
            while True:
                b = self._read_byte()
                if b == ENQ:
                    self.events.append("ENQ")
                    if self.silent:
                        continue
                    self.send(self.enq_replies.pop(0) if self.enq_replies else ACK)
                elif b == EOT:
                    self.events.append("EOT")
                    if self.frames:  # end of a transfer; an EOT before any frame ends a refused ENQ
                        break
                elif b == STX:
                    raw = b""
                    while not raw.endswith(b"\r\n"):
                        raw += self._read_byte()
                    fn, text, term, cs = raw[0:1], raw[1:-5], raw[-5:-4], raw[-4:-2]
                    ok = term in (ETX, ETB) and astm_checksum(fn + text + term) == cs
                    self.frames.append((fn, text, term, ok))
                    seen += 1
                    if seen in self.nak_frames or not ok:
                        self.events.append(f"NAK {seen}")
                        self.send(NAK)
                    else:
                        self.accepted.append((fn, text, term))
                        self.send(ACK)
        except Exception as exc:  # reported to the test through .error
            self.error = exc
        finally:
            self.done.set()

    def records(self) -> list:
        """Reassemble accepted frames into records (ETB pieces joined, CR stripped)."""
        out, buf = [], b""
        for _, text, term in self.accepted:
            buf += text
            if term == ETX:
                out.append(buf.rstrip(b"\r").decode("latin-1"))
                buf = b""
        return out


def tcp_astm_peer(**kw):
    """An AstmPeer on a loopback TCP socket (for pyserial socket:// URLs). Returns (url, peer, thread)."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    port = srv.getsockname()[1]
    holder = {}

    def serve():
        conn, _ = srv.accept()
        conn.settimeout(0.2)
        srv.close()

        def recv(n):
            try:
                return conn.recv(n)
            except socket.timeout:
                return b""
        peer = holder["peer"]
        peer.recv, peer.send = recv, conn.sendall
        try:
            peer.run()
        finally:
            conn.close()

    peer = AstmPeer(None, None, **kw)
    holder["peer"] = peer
    t = threading.Thread(target=serve, daemon=True)
    t.start()
    return f"socket://127.0.0.1:{port}", peer, t


def socat_pty_pair(tmp_path):
    """Generator for a ``pty_pair`` fixture. Two linked pseudo-terminals made by socat: (our end path, LIS end path)."""
    if shutil.which("socat") is None:
        msg = "socat not installed: apt-get install -y socat"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    a, b = tmp_path / "ttyKIOSK", tmp_path / "ttyLIS"
    proc = subprocess.Popen(["socat", f"pty,raw,echo=0,link={a}", f"pty,raw,echo=0,link={b}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while not (a.exists() and b.exists()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert a.exists() and b.exists(), "socat did not create the pty pair"
    yield str(a), str(b)
    proc.terminate()
    proc.wait(timeout=10)


def pty_astm_peer(path: str, **kw):
    import serial
    port = serial.Serial(path, 9600, timeout=0.2)
    peer = AstmPeer(port.read, lambda d: (port.write(d), port.flush()), **kw)

    def run():
        try:
            peer.run()
        finally:
            port.close()
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return peer, t


# -- an HL7 MLLP listener ----------------------------------------------------------
class MllpPeer:
    """A LIS MLLP listener on loopback that answers each message from a script.

    ``answers``: per received message, "AA" / "AE" / "AR" / "silent" /
    "wrong-id" / "close"; the last one repeats.
    """

    def __init__(self, answers=("AA",)):
        self.answers = list(answers)
        self.messages = []
        self.lock = threading.Lock()
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    @property
    def hostport(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except socket.timeout:
                continue
            # One thread per connection: a "silent" answer must not hold up the retry.
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn) -> None:
        with conn:
            conn.settimeout(10)
            buf = b""
            try:
                while b"\x1c\x0d" not in buf:
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    buf += chunk
            except socket.timeout:
                return
            if not buf.startswith(b"\x0b") or b"\x1c\x0d" not in buf:
                return
            msg = buf[1:buf.index(b"\x1c\x0d")].decode("utf-8")
            with self.lock:
                self.messages.append(msg)
                answer = self.answers[min(len(self.messages) - 1, len(self.answers) - 1)]
                n = len(self.messages)
            if answer == "silent":
                self.stop.wait(3)
                return
            if answer == "close":
                return
            fields = msg.split("\r")[0].split("|")
            ctrl = "not-yours" if answer == "wrong-id" else fields[9]
            code = "AA" if answer == "wrong-id" else answer
            code, _, text = code.partition(":")  # "AR:some text": the LIS's own words in MSA-3
            text = text or ("" if code == "AA" else "test says " + code)
            ack = (f"MSH|^~\\&|LIS|LAB|{fields[2]}|{fields[3]}|20250101000000||ACK^R01^ACK|A{n}"
                   f"|P|2.5.1\rMSA|{code}|{ctrl}|{text}\r")
            try:
                conn.sendall(b"\x0b" + ack.encode() + b"\x1c\x0d")
            except OSError:
                pass  # the client gave up already

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=10)
        self.sock.close()


def mllp_peers():
    """Generator for an ``mllp_peer`` fixture: a factory of MllpPeer, all closed afterwards."""
    peers = []

    def make(answers=("AA",)):
        p = MllpPeer(answers)
        peers.append(p)
        return p
    yield make
    for p in peers:
        p.close()
