#!/usr/bin/env python3
"""A Cohort outbox consumer in plain Python: the HTTP inbox endpoint a relay delivers to.

The worked example of docs/outbox.md ("Sinks", "Consumer side") and docs/protocol.md ("Demo
services and the outbox endpoints"), written from those pages and docs/openapi.json alone.
Standard library only. Run:

    python3 inbox_consumer.py --db /tmp/inbox.sqlite --port 0   # prints: listening on http://127.0.0.1:PORT
    cohort-relay --db orders.db --sink http://127.0.0.1:PORT/v1/inbox

The relay calls POST /v1/inbox with {"messages": [{"id", "source", "seq", "topic", "key",
"payload", "headers", "created_ms"}]} and reads 200 {"results": [{"id", "status", "error"?}]},
one result per message, in order:
    applied    the effect committed now              (acknowledges: the relay marks it delivered)
    duplicate  its id was already in the inbox        (acknowledges; nothing applied again)
    failed     refused: its effect cannot apply it    (one attempt; a dead letter after --attempts)
    busy       not now, not the message's fault       (sent again after a backoff, no attempt)
A whole-batch answer of 401 (bad token), 5xx or no answer at all makes the relay send the batch
again later without counting attempts (a 500 for several messages in halves); another 4xx (400) for several messages is sent again in halves,
nothing counted, until a message alone gets it (one attempt): answer a bad message failed instead.

The effect is an append-only ledger: one row per applied message (source, key, seq, payload), so
order and duplicates are visible (GET /v1/ledger). Each batch is ONE SQLite transaction (BEGIN
IMMEDIATE ... COMMIT, synchronous=FULL), each message under its own SAVEPOINT: the inbox row
(consumer, message id) and the ledger row are written together or not at all, so a message the
relay sends again (its answer was lost, the relay crashed before marking it) finds its inbox row
and is answered duplicate. Answers leave only after COMMIT returned.

Order: the relay sends a key's next message only after the previous one's acknowledgement is
recorded, so per (source, key) the seqs arrive increasing. seq is the producer's outbox row id,
shared by all keys, so a key's seqs have gaps: gaps are normal. A seq not above the key's last
applied one is applied all the same (a dead letter replayed under --dead-letters-block-key
false arrives after later ones; refusing it would only dead-letter it again), and counted as
out of order in GET /v1/state.

--fail-poison refuses (failed) a message whose payload is a JSON object with "poison": true, as
outbox-demo-producer --poison-every marks them and outbox-demo-consumer refuses them.

COHORT_CRASHPOINT=NAME[:K] exits with status 137 the K-th time (default 1st) NAME is reached:
inbox.after-commit, right after a batch's transaction committed and before its answer is sent.
"""
import argparse, hmac, json, os, signal, sqlite3, sys, threading, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

BODY_BYTES_MAX = 1 << 20          # as every Cohort server: a larger body is 413
BATCH_MESSAGES_MAX = 1000         # Limits.outboxBatchMessagesMax: more in one call is 413
ID_BYTES_MAX = 256                # Limits.inboxMessageIDBytesMax: an empty or longer id is failed
RETENTION_MS_MIN = 620_000        # Limits.inboxRetentionMsMin: the latest a relay resends
CLEANUP_INTERVAL_S = 60           # Limits.inboxCleanupIntervalMs
CLEANUP_BATCH = 500               # rows per DELETE, 10,000 a round at most
CLEANUP_ROUND_MAX = 10_000

SCHEMA = """
CREATE TABLE IF NOT EXISTS inbox (
    consumer TEXT NOT NULL, message_id TEXT NOT NULL,
    applied_ms INTEGER NOT NULL,            -- wall clock; the cleanup ages rows by it
    PRIMARY KEY (consumer, message_id));
CREATE INDEX IF NOT EXISTS inbox_age ON inbox (consumer, applied_ms);
CREATE TABLE IF NOT EXISTS ledger (         -- the effect: append-only, one row per applied message
    n INTEGER PRIMARY KEY AUTOINCREMENT,    -- the order in which messages were applied
    source TEXT NOT NULL, key TEXT NOT NULL, seq INTEGER NOT NULL,
    message_id TEXT NOT NULL, payload TEXT NOT NULL, applied_ms INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS key_last (       -- the last seq applied per (source, key)
    source TEXT NOT NULL, key TEXT NOT NULL, seq INTEGER NOT NULL,
    PRIMARY KEY (source, key));
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""

write_mu = threading.Lock()       # one batch at a time: SQLite has one writer anyway
local = threading.local()         # a connection per thread
crash_counts = {}
stats = {"duplicates": 0, "failed": 0, "busy": 0, "inbox_rows_cleaned": 0}   # since start


class Busy(Exception):
    """Not the message's fault (a locked row): answered busy, nothing of it kept."""


class Refused(Exception):
    """The message's fault: answered failed, nothing of it kept, no inbox row."""


def now_ms():
    return int(time.time() * 1000)


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
        c = sqlite3.connect(ARGS.db, isolation_level=None, timeout=5)
        c.execute("PRAGMA journal_mode=WAL")
        c.execute("PRAGMA synchronous=FULL")  # WAL + FULL: COMMIT returns once the WAL is fsynced
        local.conn = c
    return local.conn


def check_message(m):
    """The wire message of docs/openapi.json (OutboxWireMessage); raises Refused if not that shape."""
    if not isinstance(m, dict):
        raise Refused("a message must be a JSON object")
    mid = m.get("id")
    if not isinstance(mid, str) or not 1 <= len(mid.encode()) <= ID_BYTES_MAX:
        raise Refused(f"id must be a string of 1-{ID_BYTES_MAX} bytes")
    for f in ("source", "topic", "key", "payload"):
        if not isinstance(m.get(f), str):
            raise Refused(f'"{f}" must be a string')
    for f in ("seq", "created_ms"):
        if not isinstance(m.get(f), int) or isinstance(m.get(f), bool):
            raise Refused(f'"{f}" must be an integer')
    h = m.get("headers") or {}                   # absent or null: none
    if not isinstance(h, dict) or not all(isinstance(v, str) for v in h.values()):
        raise Refused('"headers" must be an object of strings')
    # json.loads takes a lone surrogate ("\ud800"), which SQLite cannot store: the insert raised
    # UnicodeEncodeError, which escaped the batch's transaction and left it open, holding the
    # database's write lock, so every later batch was answered 503 until a restart.
    for s in [mid, m["source"], m["topic"], m["key"], m["payload"], *h.keys(), *h.values()]:
        try:
            s.encode()
        except UnicodeEncodeError:
            raise Refused(f"a string of the message is not valid Unicode (a lone surrogate): {s[:40]!r}")


def effect(c, m):
    """Append the message to its key's ledger. Raises Refused for a poison payload."""
    if ARGS.fail_poison:
        try:
            body = json.loads(m["payload"])
        except (ValueError, RecursionError):         # not JSON, or nested past Python's limit
            body = None
        if isinstance(body, dict) and body.get("poison") is True:
            raise Refused(f"poison message {m['id']}: this consumer refuses it")
    src, key, seq = m["source"], m["key"], m["seq"]
    row = c.execute("SELECT seq FROM key_last WHERE source = ? AND key = ?", (src, key)).fetchone()
    if row is not None and seq <= row[0]:
        c.execute("INSERT INTO counters(name, value) VALUES('out_of_order', 1) "
                  "ON CONFLICT(name) DO UPDATE SET value = value + 1")
        print(f"inbox: {m['id']} (key {key!r}, seq {seq}) arrived after seq {row[0]} of its key; applied anyway",
              file=sys.stderr, flush=True)
    c.execute("INSERT INTO key_last(source, key, seq) VALUES(?, ?, ?) "
              "ON CONFLICT(source, key) DO UPDATE SET seq = max(seq, excluded.seq)", (src, key, seq))
    c.execute("INSERT INTO ledger(source, key, seq, message_id, payload, applied_ms) VALUES(?, ?, ?, ?, ?, ?)",
              (src, key, seq, m["id"], m["payload"], now_ms()))


def apply_batch(messages):
    """One transaction for the batch, a savepoint per message. Returns (status, body)."""
    results = []
    with write_mu:
        c = db()
        try:
            c.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as e:        # locked past the busy timeout, disk trouble
            return 503, {"error": f"the inbox's database is not available: {e}"}
        try:
            for m in messages:
                mid = m.get("id") if isinstance(m, dict) and isinstance(m.get("id"), str) else ""
                try:
                    check_message(m)
                except Refused as e:
                    mid = mid.encode(errors="replace").decode()  # answerable as JSON
                    results.append({"id": mid, "status": "failed", "error": str(e)})
                    continue
                if c.execute("SELECT 1 FROM inbox WHERE consumer = ? AND message_id = ?",
                             (ARGS.consumer, mid)).fetchone():
                    results.append({"id": mid, "status": "duplicate"})
                    continue
                c.execute("SAVEPOINT msg")
                try:
                    effect(c, m)
                    c.execute("INSERT INTO inbox(consumer, message_id, applied_ms) VALUES(?, ?, ?)",
                              (ARGS.consumer, mid, now_ms()))
                    c.execute("RELEASE msg")
                    results.append({"id": mid, "status": "applied"})
                except Exception as e:                    # the effect's failure is the message's
                    c.execute("ROLLBACK TO msg")
                    c.execute("RELEASE msg")
                    locked = isinstance(e, Busy) or (isinstance(e, sqlite3.OperationalError) and "locked" in str(e))
                    results.append({"id": mid, "status": "busy" if locked else "failed", "error": str(e)})
            c.execute("COMMIT")
        except sqlite3.Error as e:
            if c.in_transaction:
                c.execute("ROLLBACK")
            return 503, {"error": f"the inbox's transaction failed, nothing applied: {e}"}
        except BaseException as e:
            # Never leave the transaction open: it holds the write lock, and every later batch
            # would wait for it and be answered 503.
            if c.in_transaction:
                c.execute("ROLLBACK")
            if not isinstance(e, Exception):
                raise
            return 500, {"error": f"applying the batch failed, nothing applied: {e!r}"}
        for r in results:
            if r["status"] in ("duplicate", "failed", "busy"):
                stats[r["status"] + ("s" if r["status"] == "duplicate" else "")] += 1
    crashpoint("inbox.after-commit")                 # committed, not answered: the relay sends again
    return 200, {"results": results}


def state():
    c = db()
    one = lambda sql, *a: c.execute(sql, a).fetchone()[0]
    return {"consumer": ARGS.consumer,
            "applied": one("SELECT count(*) FROM ledger"),
            "keys": one("SELECT count(*) FROM key_last"),
            "out_of_order": one("SELECT coalesce(max(value), 0) FROM counters WHERE name = 'out_of_order'"),
            "inbox_rows": one("SELECT count(*) FROM inbox WHERE consumer = ?", ARGS.consumer),
            **stats}


def ledger():
    rows = db().execute("SELECT source, key, seq, message_id, payload FROM ledger ORDER BY n").fetchall()
    return {"entries": [{"source": s, "key": k, "seq": q, "id": i, "payload": p} for s, k, q, i, p in rows]}


class RetentionClock:
    """Ages inbox rows: the wall clock, but never ahead of (wall clock at start + monotonic time
    since), so a wall clock stepped forward cannot delete the whole dedupe memory at once."""
    def __init__(self):
        self.wall0, self.mono0 = now_ms(), time.monotonic()

    def now(self):
        return min(now_ms(), self.wall0 + int((time.monotonic() - self.mono0) * 1000))


def cleaner():
    """Inbox rows are the dedupe memory: keep them --inbox-retention-ms (default 7 days, at least
    620 s), then delete them in small transactions so the relay's batches never wait long."""
    clock = RetentionClock()
    interval = min(CLEANUP_INTERVAL_S, ARGS.inbox_retention_ms / 2000)
    while True:
        time.sleep(interval)
        cutoff, done = clock.now() - ARGS.inbox_retention_ms, 0
        while done < CLEANUP_ROUND_MAX:
            with write_mu:
                try:
                    c = db()
                    c.execute("BEGIN IMMEDIATE")
                    n = c.execute("DELETE FROM inbox WHERE rowid IN (SELECT rowid FROM inbox WHERE consumer = ? "
                                  "AND applied_ms < ? LIMIT ?)", (ARGS.consumer, cutoff, CLEANUP_BATCH)).rowcount
                    c.execute("COMMIT")
                except sqlite3.Error as e:
                    if c.in_transaction:
                        c.execute("ROLLBACK")
                    print(f"inbox: cleanup failed, tried again later: {e}", file=sys.stderr, flush=True)
                    break
            stats["inbox_rows_cleaned"] += n
            done += n
            if n < CLEANUP_BATCH:
                break


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
        if not TOKEN or self.path == "/healthz":
            return True
        if hmac.compare_digest(self.headers.get("Authorization", "").encode(), f"Bearer {TOKEN}".encode()):
            return True
        self.send(401, {"error": "missing or invalid bearer token"})   # the relay retries, no attempt
        return False

    def do_GET(self):
        if not self.authorized():
            return
        if self.path == "/healthz":
            return self.send(200, {"status": "ok"})
        if self.path == "/v1/state":
            return self.send(200, state())
        if self.path == "/v1/ledger":
            return self.send(200, ledger())
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
        if self.path != "/v1/inbox":
            return self.send(404, {"error": f'no such path "{self.path}"'})
        try:
            body = json.loads(data or b"null")
        except (ValueError, RecursionError) as e:
            return self.send(400, {"error": f"invalid JSON body: {e}"})
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
            return self.send(400, {"error": 'the body must be {"messages": [...]}'})
        if len(body["messages"]) > BATCH_MESSAGES_MAX:
            return self.send(413, {"error": f"{len(body['messages'])} messages in one batch, over {BATCH_MESSAGES_MAX}"})
        self.send(*apply_batch(body["messages"]))

    def log_message(self, *args):
        pass                                     # no access log on stderr


def watch_supervisor(pid):
    """COHORT_PARENT_PID (set by Cohort's own supervisors: the tests, txscenario): stop once that
    process is gone, so a killed test run leaves no consumer behind."""
    while True:
        time.sleep(0.5)
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            os._exit(0)                          # every answered batch is already committed
        except PermissionError:
            pass


if __name__ == "__main__":
    p = argparse.ArgumentParser(description="A Cohort outbox consumer: an HTTP inbox applying each message once.")
    p.add_argument("--db", required=True, help="the consumer's SQLite database (created if missing)")
    p.add_argument("--port", type=int, default=0, help="0 picks a free port")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--consumer", default="py-inbox", help="this consumer's name in the inbox table")
    p.add_argument("--token-file", help="require (and trim) this bearer token; or env COHORT_TOKEN")
    p.add_argument("--fail-poison", action="store_true", help='answer failed to payloads with "poison": true')
    p.add_argument("--inbox-retention-ms", type=int, default=7 * 24 * 3600 * 1000,
                   help=f"how long inbox rows (the dedupe memory) are kept, at least {RETENTION_MS_MIN}")
    ARGS = p.parse_args()
    if ARGS.inbox_retention_ms < RETENTION_MS_MIN:
        p.error(f"--inbox-retention-ms must be at least {RETENTION_MS_MIN}: a relay may resend a message that late")
    if not 1 <= len(ARGS.consumer.encode()) <= 128:
        p.error("--consumer must be 1-128 bytes")
    try:
        TOKEN = open(ARGS.token_file).read().strip() if ARGS.token_file else os.environ.get("COHORT_TOKEN", "").strip()
    except (OSError, UnicodeDecodeError) as e:
        sys.exit(f"error: token file {ARGS.token_file}: {e}")
    if TOKEN and (any(not " " <= ch <= "~" for ch in TOKEN) or len(TOKEN) > 4096):
        sys.exit("error: the token must be one line of printable ASCII of at most 4096 bytes")
    try:
        db().executescript(SCHEMA)
    except sqlite3.Error as e:
        sys.exit(f"error: --db {ARGS.db}: {e}")
    server = ThreadingHTTPServer((ARGS.host, ARGS.port), Handler)
    server.daemon_threads = True
    threading.Thread(target=cleaner, daemon=True).start()
    if os.environ.get("COHORT_PARENT_PID", "").isdigit():
        threading.Thread(target=watch_supervisor, args=(int(os.environ["COHORT_PARENT_PID"]),), daemon=True).start()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))   # every answered batch is already committed
    print(f"listening on http://{ARGS.host}:{server.server_address[1]}", flush=True)
    server.serve_forever()
