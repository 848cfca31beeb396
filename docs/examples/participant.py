#!/usr/bin/env python3
"""A Cohort 2PC participant in plain Python: a key-value store of integers.

The worked example of docs/protocol.md; "rule N" in the comments is that document's "Rules a
participant MUST follow". Standard library only. Run:

    python3 participant.py --name py --data /tmp/py --port 0 --coordinator http://127.0.0.1:7000

Clients: POST /v1/work {"txid", "request_id"?, "ops": [{"op": "add", "key", "delta", "min"?}]},
GET /v1/kv/{key}, GET /v1/branches/{txid}. Coordinator: POST /v1/2pc/prepare|commit|abort (no
batches, 3PC, operator decisions or submitted `ops`: all optional; a prepare with `ops` votes no).

One lock (`mu`) guards all state and is held across each fsync: slow, but it makes rule 4 trivial
(a repeated prepare waits for the first and gets its answer).

COHORT_CRASHPOINT=participant.after-prepared-logged: exit 137 right after the prepared record is
durable, before the vote is sent (for crash tests).
"""
import argparse, json, os, random, secrets, signal, sys, threading, time, urllib.error, urllib.request
from collections import OrderedDict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import quote, unquote

CRASH_AFTER_PREPARED = os.environ.get("COHORT_CRASHPOINT", "").split(":")[0] == "participant.after-prepared-logged"
OUTCOMES_KEPT = 100_000          # finished branches remembered, to answer late duplicates (rule 4)

mu = threading.Lock()
store = {}                       # key -> committed int value (rebuilt from the log at start)
locks = {}                       # key -> txid holding its exclusive lock
branches = {}                    # txid -> Branch, live (active or prepared)
outcomes = OrderedDict()         # txid -> "committed" | "aborted", finished branches (rules 4-6)


class Branch:
    def __init__(self, coordinator, state="active", ops=None):
        self.coordinator = coordinator   # where to inquire (kept in the prepared record, rule 1)
        self.state = state               # "active" -> "prepared"; finished ones move to `outcomes`
        self.ops = ops or []             # staged add ops: [{"key", "delta", "min"?}]
        self.failed = None               # a failed work call dooms the branch: it votes no
        self.answers = {}                # request_id -> answer, so a re-sent work call stages once


# ---- the log: one JSON object a line, appended; fsync when the protocol needs it durable ----

class Log:
    def __init__(self, path):
        self.fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        fsync_dir(os.path.dirname(path))     # a new file's name must be durable too
        data = os.pread(self.fd, os.fstat(self.fd).st_size, 0)
        # A crash in the middle of a write leaves a last line without its newline. It was never
        # fsynced, so nothing was answered on it: cut it off, or the next record would join it.
        keep = data.rfind(b"\n") + 1
        if keep < len(data):
            os.ftruncate(self.fd, keep)
            os.fsync(self.fd)
        self.records = [json.loads(line) for line in data[:keep].splitlines()]

    def append(self, record, force):
        data = (json.dumps(record, separators=(",", ":")) + "\n").encode()
        while data:                          # os.write may write less than asked
            data = data[os.write(self.fd, data):]
        if force:
            os.fsync(self.fd)                # "durable" means this returned, not that write() did


def fsync_dir(path):
    fd = os.open(path, os.O_RDONLY)
    os.fsync(fd)
    os.close(fd)


def read_or_create_incarnation(data):
    """Rule 10: random once per data directory, so a wiped directory gets a new one."""
    path = os.path.join(data, "incarnation")
    if not os.path.exists(path):
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            f.write(secrets.token_hex(8)); f.flush(); os.fsync(f.fileno())
        os.rename(tmp, path)
        fsync_dir(data)                                  # make the rename durable
    return open(path).read().strip()


# ---- state changes (callers hold mu) ----

def apply(ops):
    for op in ops:
        store[op["key"]] = store.get(op["key"], 0) + op["delta"]


def finish(txid, outcome):
    """Forget the live branch, release its locks, remember the outcome (rules 4-6)."""
    branches.pop(txid, None)
    for key in [k for k, holder in locks.items() if holder == txid]:
        del locks[key]
    outcomes[txid] = outcome
    outcomes.move_to_end(txid)
    while len(outcomes) > OUTCOMES_KEPT:
        outcomes.popitem(last=False)


def violated_min(b):
    """The first `min` that committed value + every staged delta of its key would break."""
    for op in b.ops:
        if "min" in op:
            total = store.get(op["key"], 0) + sum(o["delta"] for o in b.ops if o["key"] == op["key"])
            if total < op["min"]:
                return f'add {op["delta"]} would take key "{op["key"]}" to {total}, below min {op["min"]}'


def do_commit(txid):
    b = branches[txid]
    LOG.append({"t": "committed", "txid": txid, "ops": b.ops}, force=True)   # rule 2
    apply(b.ops)
    finish(txid, "committed")


def do_abort(txid):
    b = branches.get(txid)
    if b is not None and b.state == "prepared":         # unforced: if lost, we just ask again
        LOG.append({"t": "aborted", "txid": txid}, force=False)
    finish(txid, "aborted")


# ---- talking to the coordinator ----

def call_coordinator(method, url, body=None):
    """(status, parsed JSON); raises OSError on transport failure."""
    req = urllib.request.Request(url, method=method, data=None if body is None else json.dumps(body).encode())
    req.add_header("Content-Type", "application/json")
    if ARGS.token:
        req.add_header("Authorization", f"Bearer {ARGS.token}")   # sent on every outgoing call
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, json.loads(r.read() or b"{}")
    except urllib.error.HTTPError as e:                  # a 4xx/5xx: {"error": ...} as text
        return e.code, {"error": e.read().decode(errors="replace")[:300]}


def inquire(txid, delay):
    """Rule 3: a prepared branch waits for the coordinator, asking it, for as long as it takes."""
    attempt = 0
    while True:
        time.sleep(delay)
        with mu:
            b = branches.get(txid)
            if b is None or b.state != "prepared":
                return                                   # commit or abort arrived meanwhile
            coordinator = b.coordinator
        try:
            status, answer = call_coordinator("GET", f"{coordinator}/v1/transactions/{txid}/outcome?participant={quote(ARGS.name)}")
            outcome = answer.get("outcome") if status == 200 else None
        except (OSError, ValueError):
            outcome = None
        with mu:
            if txid in branches and branches[txid].state == "prepared":
                if outcome == "committed":
                    return do_commit(txid)
                if outcome == "aborted":
                    return do_abort(txid)
        if outcome == "unknown-coordinator":             # rule 8: never presume abort here
            print(f"warning: {txid}: coordinator does not know its id; in doubt, keeping locks", file=sys.stderr, flush=True)
            delay = 5.0
        else:                                            # pending or unreachable: back off 1 s .. 5 s
            attempt += 1
            d = min(5.0, 2.0 ** (attempt - 1))
            delay = random.uniform(d / 2, d)


def start_inquiry(txid, delay):
    threading.Thread(target=inquire, args=(txid, delay), daemon=True).start()


def expire(txid):
    """Rule 12: an unvoted branch may be aborted once the transaction's timeout passed."""
    with mu:
        if txid in branches and branches[txid].state == "active":
            do_abort(txid)


# ---- handlers: each returns (status, body) ----

def work(body):
    txid, ops = body.get("txid"), body.get("ops")
    if not isinstance(txid, str) or not txid or not isinstance(ops, list) or not ops:
        return 400, {"error": "need a txid and a non-empty ops array"}
    for op in ops:
        if (not isinstance(op, dict) or op.get("op") != "add" or not isinstance(op.get("key"), str)
                or not isinstance(op.get("delta"), int) or not isinstance(op.get("min", 0), int)):
            with mu:                                     # a failed call dooms its branch (see below)
                if txid in branches:
                    branches[txid].failed = "a work call had an invalid op"
            return 400, {"error": 'every op must be {"op": "add", "key": STRING, "delta": INT, "min"?: INT}'}
    with mu:
        if txid in outcomes:
            return 409, {"error": f"transaction {txid} already finished here ({outcomes[txid]})"}
        known = txid in branches
        busy = [op["key"] for op in ops if locks.get(op["key"], txid) != txid]
        if not known and busy:   # refuse before registering: no branch to doom, no coordinator call
            return 409, {"error": f'lock conflict: key "{busy[0]}" is locked by {locks[busy[0]]}'}
    if not known:   # register BEFORE acknowledging work, or the commit would go on without us
        try:
            status, answer = call_coordinator("POST", f"{ARGS.coordinator}/v1/transactions/{txid}/branches",
                                              {"participant": ARGS.name, "url": MY_URL, "incarnation": INCARNATION,
                                               "session": SESSION})
        except (OSError, ValueError) as e:
            return 503, {"error": f"coordinator unreachable: {e}"}
        if status != 200:
            return (status if status in (400, 404, 409, 410) else 503), {"error": f"coordinator refused the branch: {answer.get('error', status)}"}
        with mu:
            if txid not in branches and txid not in outcomes:
                branches[txid] = Branch(ARGS.coordinator)
                t = threading.Timer(answer.get("timeout_ms", 10_000) / 1000 + 1, expire, [txid])
                t.daemon = True                          # never keeps a stopping process alive
                t.start()
    with mu:
        b = branches.get(txid)
        if b is None:                                    # aborted (or expired) meanwhile: rule 5
            return 409, {"error": f"transaction {txid} already finished here"}
        rid = body.get("request_id")
        if rid is not None and rid in b.answers:         # a re-sent call: staged once
            return 200, b.answers[rid]
        if b.state != "active":
            return 409, {"error": f"branch {txid} is {b.state}: it takes no more work"}
        busy = [op["key"] for op in ops if locks.get(op["key"], txid) != txid]
        if busy:
            # No waiting (no deadlocks to detect); the failed call dooms the branch, as in the agent,
            # so a client that commits anyway gets "aborted", not a commit missing this call's work.
            b.failed = f'key "{busy[0]}" is locked by {locks[busy[0]]}'
            return 409, {"error": f"lock conflict: {b.failed}"}
        for op in ops:
            locks[op["key"]] = txid
            b.ops.append({k: op[k] for k in ("key", "delta", "min") if k in op})
        answer = {"txid": txid, "staged": len(ops)}
        if rid is not None:
            b.answers[rid] = answer
        return 200, answer


def other_incarnation(body):                             # rule 10
    return body.get("incarnation") not in (None, INCARNATION)


def prepare(body):
    if other_incarnation(body):
        return 409, {"error": "prepare for another incarnation of this participant"}
    txid, one_phase = body["txid"], body.get("one_phase", False)

    def no(reason):
        do_abort(txid)                                   # also remembers an unknown txid: rule 5
        return 200, ({"txid": txid, "outcome": "aborted", "reason": reason} if one_phase
                     else {"txid": txid, "vote": "no", "reason": reason})

    with mu:
        if txid in outcomes:                             # repeated or late: the same answer (rule 4)
            if outcomes[txid] == "committed":
                return 200, {"txid": txid, "outcome": "committed"} if one_phase else {"txid": txid, "vote": "yes"}
            return 200, ({"txid": txid, "outcome": "aborted"} if one_phase else {"txid": txid, "vote": "no", "reason": "aborted"})
        b = branches.get(txid)
        if b is None:                                    # rule 7 (and submitted `ops`: not served here)
            return no("no work for this transaction here")
        if b.state == "prepared":
            return 200, {"txid": txid, "vote": "yes"}
        reason = b.failed or violated_min(b)
        if reason:
            return no(reason)                            # nothing forced for a no
        if one_phase:                                    # our record IS the decision: force it, apply
            LOG.append({"t": "committed", "txid": txid, "ops": b.ops}, force=True)
            apply(b.ops)
            finish(txid, "committed")
            return 200, {"txid": txid, "outcome": "committed"}
        LOG.append({"t": "prepared", "txid": txid, "coordinator": b.coordinator, "ops": b.ops}, force=True)   # rule 1
        if CRASH_AFTER_PREPARED:
            os._exit(137)                                # as if killed between the fsync and the vote
        b.state = "prepared"
    start_inquiry(txid, 1.0)                             # in case commit/abort never comes
    return 200, {"txid": txid, "vote": "yes"}


def commit(body):
    if other_incarnation(body):
        return 409, {"error": "commit for another incarnation of this participant"}
    txid = body["txid"]
    with mu:
        if outcomes.get(txid) == "aborted":
            return 409, {"error": f"branch {txid} aborted"}
        b = branches.get(txid)
        if b is not None:
            if b.state != "prepared":
                return 409, {"error": f"branch {txid} never voted yes"}
            do_commit(txid)
    # Also for a branch we do not know (rule 6): commit is only sent after our durable yes, and
    # the prepared record goes only after the outcome is durable, so it already committed.
    return 200, {"txid": txid, "status": "committed"}


def abort(body):
    if other_incarnation(body):
        return 409, {"error": "abort for another incarnation of this participant"}
    txid = body["txid"]
    with mu:
        if outcomes.get(txid) == "committed":
            return 409, {"error": f"branch {txid} committed"}
        do_abort(txid)                                   # an unknown txid is remembered too (rule 5)
    return 200, {"txid": txid, "status": "aborted"}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"                        # keep-alive; every answer has a Content-Length

    def answer(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def authorized(self):
        if not ARGS.token or self.path == "/healthz" or self.headers.get("Authorization") == f"Bearer {ARGS.token}":
            return True
        self.answer(401, {"error": "missing or invalid bearer token"})
        return False

    def do_GET(self):
        if not self.authorized():
            return
        parts = self.path.split("?")[0].split("/")
        if self.path == "/healthz":
            return self.answer(200, {"status": "ok", "participant": ARGS.name, "url": MY_URL})
        with mu:
            if len(parts) == 4 and parts[1:3] == ["v1", "kv"] and unquote(parts[3]) in store:
                return self.answer(200, {"key": unquote(parts[3]), "value": store[unquote(parts[3])]})
            if len(parts) == 4 and parts[1:3] == ["v1", "branches"]:
                state = branches[parts[3]].state if parts[3] in branches else outcomes.get(parts[3])
                if state:                                # live state, or the outcome once finished
                    return self.answer(200, {"txid": parts[3], "state": state})
        self.answer(404, {"error": f'no such key, branch or path: "{self.path}"'})

    def do_POST(self):
        if not self.authorized():
            return
        try:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
        except ValueError as e:
            return self.answer(400, {"error": f"invalid JSON body: {e}"})
        route = {"/v1/work": work, "/v1/2pc/prepare": prepare, "/v1/2pc/commit": commit, "/v1/2pc/abort": abort}.get(self.path)
        if route is None:
            return self.answer(404, {"error": f'no such path "{self.path}"'})
        if route is not work and (not isinstance(body, dict) or not isinstance(body.get("txid"), str)):
            return self.answer(400, {"error": 'invalid JSON body: missing field "txid"'})
        self.answer(*route(body))

    def log_message(self, *args): pass                   # no access log on stderr


def recover():
    """Rule 9, before serving: rebuild the store and outcomes, re-lock prepared branches."""
    for r in LOG.records:
        txid = r["txid"]
        if r["t"] == "prepared":
            branches[txid] = Branch(r["coordinator"], "prepared", r["ops"])
            for op in r["ops"]:
                locks[op["key"]] = txid
        elif r["t"] == "committed":
            apply(r["ops"])                              # the store lives in the log: replay re-applies
            finish(txid, "committed")
        elif r["t"] == "aborted":
            finish(txid, "aborted")
    return [txid for txid, b in branches.items() if b.state == "prepared"]


if __name__ == "__main__":
    p = argparse.ArgumentParser(description="A Cohort 2PC participant (key-value store of integers).")
    p.add_argument("--name", required=True)
    p.add_argument("--data", required=True, help="data directory (log and incarnation)")
    p.add_argument("--port", type=int, default=0, help="0 picks a free port")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--coordinator", required=True, help="the coordinator's base URL")
    p.add_argument("--advertise", help="URL the coordinator calls back (default http://HOST:PORT)")
    p.add_argument("--token", default=os.environ.get("COHORT_TOKEN"), help="bearer token (or COHORT_TOKEN)")
    ARGS = p.parse_args()
    ARGS.coordinator = ARGS.coordinator.rstrip("/")
    os.makedirs(ARGS.data, exist_ok=True)
    INCARNATION = read_or_create_incarnation(ARGS.data)
    SESSION = secrets.token_hex(8)   # new per process: work staged before a restart is gone, and
                                     # the coordinator refuses to mix two sessions in one branch
    LOG = Log(os.path.join(ARGS.data, "log.jsonl"))
    in_doubt = recover()
    server = ThreadingHTTPServer((ARGS.host, ARGS.port), Handler)
    server.daemon_threads = True
    MY_URL = (ARGS.advertise or f"http://{ARGS.host}:{server.server_address[1]}").rstrip("/")
    for txid in in_doubt:
        start_inquiry(txid, 0)                           # at once after a restart
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))   # every needed record is already fsynced
    print(f"listening on http://{ARGS.host}:{server.server_address[1]}", flush=True)
    server.serve_forever()
