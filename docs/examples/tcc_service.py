#!/usr/bin/env python3
"""A Cohort TCC service in plain Python: stock reserved by try, sold by confirm, released by cancel.

The worked example of docs/tcc.md and docs/protocol.md ("TCC"), written from those two pages
alone. Standard library only. Run:

    python3 tcc_service.py --data /tmp/tccpy --port 0       # prints: listening on http://127.0.0.1:PORT

The coordinator (cohortd) calls, with {"txid", "branch_id", "payload", "deadline_ms" (try only)}:
    POST /v1/tcc/inventory/try       payload {"sku", "qty"}: reserve qty (available -> reserved)
    POST /v1/tcc/inventory/confirm   sell what that try reserved (reserved -> sold)
    POST /v1/tcc/inventory/cancel    release what that try reserved (reserved -> available)
and answers 200 {"txid", "branch_id", "status": "done"|"duplicate"|"empty-cancel", "result"?}.
Clients and operators: POST /v1/stock {"sku", "available"}, GET /v1/stock/{sku},
GET /v1/tcc/inventory/branches/{txid}/{branch_id}, GET /healthz.

Every phase runs in ONE SQLite transaction (BEGIN IMMEDIATE) that writes its barrier row and its
stock change together, so both commit or neither does; the answer leaves only after COMMIT
returned (synchronous=FULL: the commit is on disk). The barrier (table tcc_barrier, one row per
(txid, branch_id, op)) gives the rules of docs/protocol.md, "A branch service MUST":
  - confirm and cancel are idempotent: a repeat finds its row and answers "duplicate";
  - a cancel with no try before it writes the try's row as a "fence" and answers "empty-cancel";
  - a try that finds a fence, or a tried row with a cancel after it, is refused (409);
  - a try repeated with another payload is refused (409), with the same one answers "duplicate";
  - a try later than deadline_ms + the clock-skew margin is fenced and refused (409);
  - a try and a cancel of one branch are serialized (one writer at a time, BEGIN IMMEDIATE).

COHORT_CRASHPOINT=NAME[:K] exits with status 137 the K-th time (default 1st) NAME is reached:
tcc-service.after-{try,confirm,cancel}-committed, right after that phase's local transaction
committed and before its answer is sent (for crash tests).
"""
import argparse, hashlib, json, os, signal, sqlite3, sys, threading, time
from decimal import Decimal, InvalidOperation
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote

RESOURCE = "inventory"
BODY_BYTES_MAX = 1 << 20          # as every Cohort server: a larger body is 413
PAYLOAD_BYTES_MAX = 64 * 1024     # as the coordinator bounds a branch's payload (docs/tcc.md)
ID_BYTES_MAX = 128                # txid and branch_id: 1-128 bytes
QTY_MAX = 1_000_000
# A finished branch's rows are kept at least this long (docs/tcc.md, "Cleanup"): the longest
# transaction timeout (10 min) + clock-skew margin (60 s) + retry budget (60 s) + a parked retry (30 s).
RETENTION_MS_MIN = 600_000 + 60_000 + 60_000 + 30_000
PURGE_INTERVAL_S = 60
PURGE_BATCH = 1000

SCHEMA = """
CREATE TABLE IF NOT EXISTS stock (
    sku TEXT PRIMARY KEY,
    available INTEGER NOT NULL CHECK (available >= 0),
    reserved INTEGER NOT NULL CHECK (reserved >= 0),
    sold INTEGER NOT NULL CHECK (sold >= 0));
CREATE TABLE IF NOT EXISTS tcc_barrier (
    resource TEXT NOT NULL, txid TEXT NOT NULL, branch_id TEXT NOT NULL,
    op TEXT NOT NULL,          -- try | confirm | cancel
    note TEXT NOT NULL,        -- try: tried | fence;  confirm: confirmed;  cancel: cancelled | empty
    result TEXT,               -- a tried row: the try's result as JSON (a duplicate answers it)
    at_ms INTEGER NOT NULL,    -- wall clock when written (the purge ages rows by it)
    payload_digest TEXT,       -- a tried row: sha256 of the payload's canonical JSON
    PRIMARY KEY (resource, txid, branch_id, op));
CREATE TABLE IF NOT EXISTS tcc_reservation (   -- what each try reserved, so confirm and cancel
    txid TEXT NOT NULL, branch_id TEXT NOT NULL, -- settle exactly that, whatever payload they carry
    sku TEXT NOT NULL, qty INTEGER NOT NULL,
    PRIMARY KEY (txid, branch_id));
CREATE INDEX IF NOT EXISTS tcc_reservation_sku ON tcc_reservation (sku);
CREATE INDEX IF NOT EXISTS tcc_barrier_age ON tcc_barrier (resource, op, at_ms);
"""

write_mu = threading.Lock()       # one phase at a time: SQLite has one writer anyway
local = threading.local()         # a connection per thread (sqlite3 objects stay on their thread)
crash_counts = {}


def crashpoint(name):
    """COHORT_CRASHPOINT=NAME[:K]: exit 137 (as if killed) the K-th time NAME is reached."""
    want, _, k = os.environ.get("COHORT_CRASHPOINT", "").partition(":")
    if want != name:
        return
    crash_counts[name] = crash_counts.get(name, 0) + 1
    if crash_counts[name] == (int(k) if k.isdigit() else 1):
        os._exit(137)             # no cleanup, no flush: the committed transaction is all that stays


def db():
    if getattr(local, "conn", None) is None:
        c = sqlite3.connect(os.path.join(ARGS.data, "tcc.sqlite"), isolation_level=None, timeout=5)
        c.execute("PRAGMA journal_mode=WAL")
        c.execute("PRAGMA synchronous=FULL")  # WAL + FULL: COMMIT returns once the WAL is fsynced
        local.conn = c
    return local.conn


def now_ms():
    return int(time.time() * 1000)


class RetentionClock:
    """Ages barrier rows: the wall clock, but never ahead of (wall clock at start + monotonic time
    since), so a wall clock stepped forward cannot purge every fence at once (docs/tcc.md)."""
    def __init__(self):
        self.wall0, self.mono0 = now_ms(), time.monotonic()

    def now(self):
        return min(now_ms(), self.wall0 + int((time.monotonic() - self.mono0) * 1000))


# ---- JSON: refuse repeated names, keep numbers as written (the payload digest must not round) ----

class Num(str):
    """A JSON number as its text: 2.50 stays 2.50, 1.0000000000000000001 is not 1."""


def is_text(v):
    return isinstance(v, str) and not isinstance(v, Num)   # a Num is a str too


def no_repeats(pairs):
    obj = {}
    for k, v in pairs:
        if k in obj:
            raise ValueError(f'field "{k}" appears twice')
        obj[k] = v
    return obj


def parse_json(data):
    return json.loads(data, object_pairs_hook=no_repeats, parse_int=Num, parse_float=Num,
                      parse_constant=lambda c: (_ for _ in ()).throw(ValueError(f"{c} is not JSON")))


def canonical(v):
    """The payload with object keys sorted and numbers as written: what the digest covers."""
    if isinstance(v, Num):
        return str(v)
    if isinstance(v, dict):
        return "{" + ",".join(json.dumps(k) + ":" + canonical(v[k]) for k in sorted(v)) + "}"
    if isinstance(v, list):
        return "[" + ",".join(canonical(x) for x in v) + "]"
    return json.dumps(v)          # strings, true, false, null


def as_int(v):
    """An integer field: 5, 5.0 and 5e0 are 5; 1.0000000000000000001 is not an integer."""
    if not isinstance(v, Num):
        return None
    try:
        d = Decimal(v)
    except InvalidOperation:
        return None
    return int(d) if d == d.to_integral_value() and abs(d) < 2 ** 63 else None


class Refused(Exception):
    """The business refuses a try: 409, and the try's barrier row is rolled back with it."""


class BadRequest(Exception):
    pass


# ---- the business: stock ----

def parse_order(payload):
    if not isinstance(payload, dict) or set(payload) - {"sku", "qty"}:
        raise BadRequest('the payload must be {"sku": STRING, "qty": INTEGER}')
    sku, qty = payload.get("sku"), as_int(payload.get("qty"))
    if not is_text(sku) or not 1 <= len(sku.encode()) <= 64:
        raise BadRequest('payload field "sku" must be a string of 1-64 bytes')
    if qty is None or not 1 <= qty <= QTY_MAX:
        raise BadRequest(f'payload field "qty" must be an integer 1-{QTY_MAX}')
    return sku, qty


def business_try(c, txid, bid, payload):
    sku, qty = parse_order(payload)
    row = c.execute("SELECT available FROM stock WHERE sku = ?", (sku,)).fetchone()
    if row is None:
        raise Refused(f"insufficient stock: no stock of {sku}")
    if row[0] < qty:
        raise Refused(f"insufficient stock: not enough stock of {sku} for {qty}")
    c.execute("UPDATE stock SET available = available - ?2, reserved = reserved + ?2 WHERE sku = ?1", (sku, qty))
    c.execute("INSERT INTO tcc_reservation (txid, branch_id, sku, qty) VALUES (?, ?, ?, ?)", (txid, bid, sku, qty))
    return {"sku": sku, "reserved": qty}


def settle_reservation(c, txid, bid, to_column):
    row = c.execute("SELECT sku, qty FROM tcc_reservation WHERE txid = ? AND branch_id = ?", (txid, bid)).fetchone()
    if row is None:   # a tried row always has its reservation (same transaction): never here
        raise sqlite3.DatabaseError(f"branch {txid}/{bid} was tried but has no reservation")
    c.execute(f"UPDATE stock SET reserved = reserved - ?2, {to_column} = {to_column} + ?2 WHERE sku = ?1", row)
    c.execute("DELETE FROM tcc_reservation WHERE txid = ? AND branch_id = ?", (txid, bid))


# ---- the barrier: each phase is one local transaction ----

def answer(txid, bid, status, result=None):
    body = {"txid": txid, "branch_id": bid, "status": status}
    if result is not None:
        body["result"] = result
    return 200, body


def barrier_rows(c, txid, bid):
    """op -> (note, result, payload_digest) for this branch."""
    return {op: (note, result, digest) for op, note, result, digest in c.execute(
        "SELECT op, note, result, payload_digest FROM tcc_barrier WHERE resource = ? AND txid = ? AND branch_id = ?",
        (RESOURCE, txid, bid))}


def insert(c, txid, bid, op, note, result=None, digest=None):
    c.execute("INSERT INTO tcc_barrier (resource, txid, branch_id, op, note, result, at_ms, payload_digest) "
              "VALUES (?, ?, ?, ?, ?, ?, ?, ?)", (RESOURCE, txid, bid, op, note, result, now_ms(), digest))


def run_phase(phase, body):
    """Validates the call, runs the phase in one transaction, and only then crashes or answers."""
    txid, bid = body.get("txid"), body.get("branch_id")
    for name, v in (("txid", txid), ("branch_id", bid)):
        if not is_text(v) or not 1 <= len(v.encode()) <= ID_BYTES_MAX:
            return 400, {"error": f'invalid JSON body: field "{name}" must be a string of 1-{ID_BYTES_MAX} bytes'}
    payload = body.get("payload")               # absent and null are the same: no payload
    text = canonical(payload)
    if len(text.encode()) > PAYLOAD_BYTES_MAX:
        return 413, {"error": f"the payload is {len(text.encode())} bytes of JSON, over the limit of {PAYLOAD_BYTES_MAX}"}
    deadline = body.get("deadline_ms") if phase == "try" else None   # other fields are ignored
    if deadline is not None and as_int(deadline) is None:
        return 400, {"error": 'invalid JSON body: field "deadline_ms" must be an integer'}
    with write_mu:
        c = db()
        ROWS.pending = 0
        try:
            c.execute("BEGIN IMMEDIATE")        # the write lock before the barrier is read
            if phase == "try":
                status, out = phase_try(c, txid, bid, payload, hashlib.sha256(text.encode()).hexdigest(),
                                        None if deadline is None else as_int(deadline))
            elif phase == "confirm":
                status, out = phase_confirm(c, txid, bid)
            else:
                status, out = phase_cancel(c, txid, bid)
        except BadRequest as e:
            c.execute("ROLLBACK")
            return 400, {"error": str(e)}
        except Refused as e:
            c.execute("ROLLBACK")               # the try's barrier row goes too: a later cancel is empty
            return 409, {"error": str(e)}
        except sqlite3.Error as e:
            if c.in_transaction:
                c.execute("ROLLBACK")
            return 503, {"error": f"the local database failed, nothing was kept: {e}"}
        keep = status == 200 or out.get("keep", False)
        out.pop("keep", None)
        try:
            c.execute("COMMIT" if keep else "ROLLBACK")
        except sqlite3.Error as e:              # not committed: the coordinator retries
            if c.in_transaction:
                c.execute("ROLLBACK")
            return 503, {"error": f"the local commit failed, nothing was kept: {e}"}
        if keep:
            ROWS.rows += ROWS.pending           # exact for the next writer, which waits for write_mu
    if keep:
        crashpoint(f"tcc-service.after-{phase}-committed")
    return status, out


def phase_try(c, txid, bid, payload, digest, deadline):
    rows = barrier_rows(c, txid, bid)
    if "try" in rows:
        note, result, first_digest = rows["try"]
        if note == "fence" and "cancel" in rows:
            return 409, {"error": "try refused: the branch was cancelled before its try arrived"}
        if note == "fence":
            return 409, {"error": "try refused: the branch's try came after its deadline and was refused"}
        if "cancel" in rows:                    # tried, then cancelled: its reservation is gone
            return 409, {"error": "try refused: the branch was cancelled after its try ran; what the try reserved was released"}
        if first_digest is not None and first_digest != digest:
            return 409, {"error": "try repeated with a different payload"}
        return answer(txid, bid, "duplicate", json.loads(result) if result else None)
    if ROWS.full():                             # a new branch: refused past the bound, nothing kept
        return 503, {"error": ROWS.full_message()}
    if deadline is not None and now_ms() > deadline + ARGS.clock_skew_margin_ms:
        insert(c, txid, bid, "try", "fence")     # kept (committed): a later try is refused too
        ROWS.pending += 1
        return 409, {"error": "try refused: the branch's try came after its deadline and was refused", "keep": True}
    insert(c, txid, bid, "try", "tried", digest=digest)
    result = business_try(c, txid, bid, payload)
    c.execute("UPDATE tcc_barrier SET result = ? WHERE resource = ? AND txid = ? AND branch_id = ? AND op = 'try'",
              (json.dumps(result), RESOURCE, txid, bid))
    ROWS.pending += 1
    return answer(txid, bid, "done", result)


def phase_confirm(c, txid, bid):
    rows = barrier_rows(c, txid, bid)
    if "confirm" in rows:
        return answer(txid, bid, "duplicate")
    if "cancel" in rows:
        return 409, {"error": f"contradiction: confirm of branch {txid}/{bid}, which was cancelled"}
    if rows.get("try", ("",))[0] != "tried":
        return 409, {"error": f"contradiction: confirm of branch {txid}/{bid}, which was never tried here"}
    insert(c, txid, bid, "confirm", "confirmed")
    settle_reservation(c, txid, bid, "sold")
    ROWS.pending += 1
    return answer(txid, bid, "done")


def phase_cancel(c, txid, bid):
    rows = barrier_rows(c, txid, bid)
    if "cancel" in rows:
        return answer(txid, bid, "duplicate")
    if "confirm" in rows:
        return 409, {"error": f"contradiction: cancel of branch {txid}/{bid}, which was confirmed"}
    if "try" not in rows:                       # empty cancel: the fence refuses a late try
        if ROWS.full():                         # its fence cannot be written: refuse, the coordinator retries
            return 503, {"error": ROWS.full_message()}
        insert(c, txid, bid, "try", "fence")
        insert(c, txid, bid, "cancel", "empty")
        ROWS.pending += 2
        return answer(txid, bid, "empty-cancel")
    if rows["try"][0] == "fence":               # fenced by its deadline: nothing was reserved
        insert(c, txid, bid, "cancel", "empty")
        ROWS.pending += 1
        return answer(txid, bid, "empty-cancel")
    insert(c, txid, bid, "cancel", "cancelled")
    settle_reservation(c, txid, bid, "available")
    ROWS.pending += 1
    return answer(txid, bid, "done")


class RowCount:
    """The barrier's row count, kept instead of a COUNT(*) per call; callers hold write_mu."""
    def __init__(self, c):
        self.rows = c.execute("SELECT COUNT(*) FROM tcc_barrier WHERE resource = ?", (RESOURCE,)).fetchone()[0]
        self.pending = 0          # rows inserted by the transaction in progress

    def full(self):
        return self.rows >= ARGS.barrier_rows_max

    def full_message(self):
        return (f"the TCC barrier of resource {RESOURCE} holds {self.rows} rows, its limit of "
                f"{ARGS.barrier_rows_max}: a try of a new branch is refused until finished branches are purged")


def branch_state(txid, bid):
    rows = barrier_rows(db(), txid, bid)
    if "confirm" in rows:
        return "confirmed"
    if "cancel" in rows:
        return "cancelled"
    if "try" in rows:
        return "fenced" if rows["try"][0] == "fence" else "tried"
    return "none"


def purge_once():
    """Removes up to PURGE_BATCH finished branches older than the retention; how many."""
    cutoff = CLOCK.now() - ARGS.retention_ms
    with write_mu:
        c = db()
        try:
            c.execute("BEGIN IMMEDIATE")
            # Finished branches (a confirm or cancel row), and tries fenced by their deadline
            # (a fence and nothing else): no cancel may ever come for those.
            done = c.execute(
                "SELECT txid, branch_id FROM tcc_barrier t WHERE resource = ?1 AND ("
                " (op IN ('confirm', 'cancel') AND at_ms < ?2) OR"
                " (op = 'try' AND note = 'fence' AND at_ms < ?2 AND NOT EXISTS (SELECT 1 FROM tcc_barrier s"
                "   WHERE s.resource = t.resource AND s.txid = t.txid AND s.branch_id = t.branch_id AND s.op = 'cancel')))"
                " LIMIT ?3", (RESOURCE, cutoff, PURGE_BATCH)).fetchall()
            removed = 0
            for txid, bid in done:
                removed += c.execute("DELETE FROM tcc_barrier WHERE resource = ? AND txid = ? AND branch_id = ?",
                                     (RESOURCE, txid, bid)).rowcount
            c.execute("COMMIT")
            ROWS.rows -= removed
            return len(done)
        except sqlite3.Error:
            if c.in_transaction:
                c.execute("ROLLBACK")
            return 0


def watch_supervisor(pid):
    """COHORT_PARENT_PID (set by Cohort's own supervisors: the tests, txscenario): stop, as on
    SIGTERM, once that process is gone, so a killed test run leaves no service behind."""
    while True:
        time.sleep(0.5)
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            print(f"stopping: the process that started this server (pid {pid}) has exited", file=sys.stderr, flush=True)
            os._exit(0)                          # every answered phase is already committed
        except PermissionError:
            pass                                 # alive, another user's


def purger():
    while True:
        time.sleep(PURGE_INTERVAL_S)
        while purge_once() == PURGE_BATCH:      # a backlog: go on at once
            pass


# ---- stock for clients ----

def stock_view(c, sku):
    row = c.execute("SELECT available, reserved, sold FROM stock WHERE sku = ?", (sku,)).fetchone()
    return None if row is None else {"sku": sku, "available": row[0], "reserved": row[1], "sold": row[2]}


def set_stock(body):
    sku, available = body.get("sku"), as_int(body.get("available"))
    if not is_text(sku) or not 1 <= len(sku.encode()) <= 64 or available is None or not 0 <= available < 2 ** 62:
        return 400, {"error": 'invalid JSON body: need {"sku": STRING of 1-64 bytes, "available": INTEGER >= 0}'}
    with write_mu:
        c = db()
        try:
            c.execute("BEGIN IMMEDIATE")
            if c.execute("SELECT 1 FROM tcc_reservation WHERE sku = ? LIMIT 1", (sku,)).fetchone():
                c.execute("ROLLBACK")           # setting it now would strand their confirm or cancel
                return 409, {"error": f"sku {sku} has TCC reservations not yet confirmed or cancelled"}
            c.execute("INSERT INTO stock (sku, available, reserved, sold) VALUES (?, ?, 0, 0) "
                      "ON CONFLICT (sku) DO UPDATE SET available = excluded.available, reserved = 0, sold = 0",
                      (sku, available))
            view = stock_view(c, sku)
            c.execute("COMMIT")
            return 200, view
        except sqlite3.Error as e:
            if c.in_transaction:
                c.execute("ROLLBACK")
            return 503, {"error": f"the local database failed: {e}"}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"                # keep-alive; every answer has a Content-Length

    def send(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if status in (429, 503):
            self.send_header("Retry-After", "1")
        self.end_headers()
        self.wfile.write(data)

    def authorized(self):
        if not TOKEN or self.path == "/healthz" or self.headers.get("Authorization") == f"Bearer {TOKEN}":
            return True
        self.send(401, {"error": "missing or invalid bearer token"})
        return False

    def segments(self):
        path = self.path.split("?")[0]
        parts = path.split("/")[1:]
        if "" in parts:
            return None
        return [unquote(p) for p in parts]

    def do_GET(self):
        if not self.authorized():
            return
        parts = self.segments()
        if parts is None:
            return self.send(404, {"error": f'no such path "{self.path}": it has an empty segment (a doubled or trailing slash)'})
        if parts == ["healthz"]:
            return self.send(200, {"status": "ok"})
        if len(parts) == 3 and parts[:2] == ["v1", "stock"]:
            view = stock_view(db(), parts[2])
            return self.send(200, view) if view else self.send(404, {"error": f"no stock of {parts[2]}"})
        if len(parts) == 6 and parts[:4] == ["v1", "tcc", RESOURCE, "branches"]:
            txid, bid = parts[4], parts[5]
            if not all(1 <= len(x.encode()) <= ID_BYTES_MAX for x in (txid, bid)):
                return self.send(400, {"error": f"txid and branch_id must be 1-{ID_BYTES_MAX} bytes"})
            return self.send(200, {"txid": txid, "branch_id": bid, "state": branch_state(txid, bid),
                                   "barrier_retention_ms": ARGS.retention_ms})
        self.send(404, {"error": f'no such path "{self.path}"'})

    def do_POST(self):
        length = self.headers.get("Content-Length", "0")
        if not length.isdigit():
            self.close_connection = True         # no way to find where the body ends
            return self.send(400, {"error": f"a Content-Length of {length[:20]!r} is not a byte count"})
        length = int(length)
        if length > BODY_BYTES_MAX:
            self.close_connection = True         # the body is not read: this connection is done
            return self.send(413, {"error": f"the body is {length} bytes, over the limit of {BODY_BYTES_MAX}"})
        data = self.rfile.read(length)
        if not self.authorized():
            return
        parts = self.segments()
        phase = parts[3] if parts and len(parts) == 4 and parts[:3] == ["v1", "tcc", RESOURCE] else None
        if phase not in ("try", "confirm", "cancel") and parts != ["v1", "stock"]:
            return self.send(404, {"error": f'no such path "{self.path}"'})
        try:
            body = parse_json(data or b"null")
        except (ValueError, RecursionError) as e:
            return self.send(400, {"error": f"invalid JSON body: {e}"})
        if not isinstance(body, dict):
            return self.send(400, {"error": "invalid JSON body: expected an object"})
        self.send(*(set_stock(body) if phase is None else run_phase(phase, body)))

    def log_message(self, *args):
        pass                                     # no access log on stderr


if __name__ == "__main__":
    p = argparse.ArgumentParser(description="A Cohort TCC service: stock reserved by try, sold by confirm, released by cancel.")
    p.add_argument("--data", required=True, help="data directory (tcc.sqlite)")
    p.add_argument("--port", type=int, default=0, help="0 picks a free port")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--token-file", help="require (and trim) this bearer token; or env COHORT_TOKEN")
    p.add_argument("--retention-ms", type=int, default=24 * 3600 * 1000,
                   help=f"how long a finished branch's barrier rows are kept (at least {RETENTION_MS_MIN})")
    p.add_argument("--clock-skew-margin-ms", type=int, default=60_000,
                   help="a try later than its deadline_ms plus this is fenced and refused")
    p.add_argument("--barrier-rows-max", type=int, default=4_000_000,
                   help="past this many barrier rows a try or an empty cancel of a new branch is refused (503)")
    ARGS = p.parse_args()
    if ARGS.clock_skew_margin_ms < 0:
        p.error("--clock-skew-margin-ms must not be negative")
    if ARGS.retention_ms < RETENTION_MS_MIN + ARGS.clock_skew_margin_ms - 60_000:
        p.error(f"--retention-ms must be at least {RETENTION_MS_MIN + ARGS.clock_skew_margin_ms - 60_000}: "
                "a fence purged sooner could let a late try reserve stock nobody releases")
    if ARGS.barrier_rows_max < 1:
        p.error("--barrier-rows-max must be at least 1")
    TOKEN = open(ARGS.token_file).read().strip() if ARGS.token_file else os.environ.get("COHORT_TOKEN", "").strip()
    if TOKEN and (any(not " " <= ch <= "~" for ch in TOKEN) or len(TOKEN) > 4096):
        sys.exit("error: the token must be one line of printable ASCII of at most 4096 bytes")
    os.makedirs(ARGS.data, exist_ok=True)
    db().executescript(SCHEMA)
    ROWS = RowCount(db())
    CLOCK = RetentionClock()
    server = ThreadingHTTPServer((ARGS.host, ARGS.port), Handler)
    server.daemon_threads = True
    threading.Thread(target=purger, daemon=True).start()
    if os.environ.get("COHORT_PARENT_PID", "").isdigit():
        threading.Thread(target=watch_supervisor, args=(int(os.environ["COHORT_PARENT_PID"]),), daemon=True).start()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))   # every answered phase is already committed
    print(f"listening on http://{ARGS.host}:{server.server_address[1]}", flush=True)
    server.serve_forever()
