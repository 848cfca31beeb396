#!/usr/bin/env python3
"""A Cohort three-phase-commit participant in plain Python: a key-value store of integers.

Written from docs/protocol.md ("Three-phase commit") and docs/protocols.md alone, as the 3PC
companion of participant.py (which it follows for work, 2PC and recovery; "rule N" is
docs/protocol.md's "Rules a participant MUST follow"). Standard library only. Run:

    python3 participant_3pc.py --name py --data /tmp/py3 --port 0 --coordinator http://127.0.0.1:7000

Clients: POST /v1/work {"txid", "request_id"?, "ops": [{"op": "add", "key", "delta", "min"?}]},
GET /v1/kv/{key}, GET /v1/branches/{txid}. Coordinator and peers: POST /v1/2pc/prepare|commit|abort,
POST /v1/3pc/precommit|preabort|state. It serves 2PC transactions too (prepare without
"protocol": "3pc"). Not here: batches, submitted `ops` (voted no), read-only votes (every op
writes), operator decisions.

What a 3PC branch goes through (docs/protocols.md):
    active --prepare: force "prepared", vote yes--> uncertain
    uncertain --pre-commit: force "pre-committed", ack--> pre-committed
    uncertain --pre-abort (quorum only): force "pre-aborted", ack--> pre-aborted
    any of the three --commit / abort: force the outcome--> finished
and while no outcome comes, every 2 s, the termination protocol (terminate() below): ask the
coordinator and every peer, adopt a peer's outcome, and if this branch is the backup (lowest name
among the peers that answered with a branch) apply Skeen's rules, classic or quorum.

One lock (`mu`) guards all state and is held across each fsync, never across a network call.
Because a state query waits for the lock, it never sees a record half written (the docs'
"answers once the record is durable").

COHORT_CRASHPOINT=participant.after-prepared-logged | participant.after-precommit-logged: the
process kills itself with SIGKILL right after that record is durable, before answering (for
crash tests).
"""
import argparse, json, os, random, secrets, signal, sys, threading, time, urllib.error, urllib.request
from collections import OrderedDict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import quote, unquote

CRASHPOINT = os.environ.get("COHORT_CRASHPOINT", "").split(":")[0]
OUTCOMES_KEPT = 100_000          # finished branches remembered (the agent's Limits.finishedBranchesKept)
FENCES_KEPT = 10_000             # txids asked about before any branch existed (Limits.threePhaseFencesKept)
TERMINATION_TIMEOUT_S = 2.0      # silence after the vote (or pre-commit) before a termination round
PEER_TIMEOUT_S = 2.0             # a peer that does not answer a round within this counts as silent

mu = threading.Lock()
store = {}                       # key -> committed int value (rebuilt from the log at start)
locks = {}                       # key -> txid holding its exclusive lock
branches = {}                    # txid -> Branch, live (not finished)
outcomes = OrderedDict()         # txid -> "committed" | "aborted", finished branches (rules 4-6)
promised = OrderedDict()         # txid -> True: a durable promise never to vote yes (no-vote-promised)
fences = OrderedDict()           # txid -> True: asked by a peer before we had a branch; its prepare votes no
forgot_upto = {}                 # coordinator id -> (epoch, seq) of the newest outcome let go (see let_go)
promises_let_go_upto = {}        # coordinator id -> (epoch, seq) of the newest promise let go


class Branch:
    def __init__(self, coordinator, state="active", ops=None):
        self.coordinator = coordinator   # where to inquire (kept in the prepared record, rule 1)
        self.state = state               # active, uncertain, pre-committed, pre-aborted
        self.ops = ops or []             # staged add ops: [{"key", "delta", "min"?}]
        self.failed = None               # a failed work call (or a peer asking before the vote) dooms it
        self.answers = {}                # request_id -> answer, so a re-sent work call stages once
        self.protocol = "2pc"            # from the prepare: "2pc" or "3pc"
        self.termination = "classic"     # 3PC: "classic" or "quorum"
        self.participants = []           # 3PC: every branch, [{"name", "url", "incarnation"?}]
        self.joined = False              # answered a termination round: takes pre-commits only from a backup
        self.recovered = False           # rebuilt by a restart, no outcome yet
        self.last_heard = time.monotonic()   # last message from the coordinator, for the 2 s silence


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


def crash_if(point):
    if CRASHPOINT == point:
        os.kill(os.getpid(), signal.SIGKILL)             # a real kill -9: no flush, no answer


def txid_order(txid):
    """(coordinator id, (epoch, sequence)) or None. docs/protocol.md, "Transaction ids": ids of
    one coordinator grow with epoch and sequence; the forget horizons below rely on it."""
    parts = txid.split("-")
    try:
        return (parts[0], (int(parts[1], 16), int(parts[2], 16))) if len(parts) == 3 else None
    except ValueError:
        return None


def raise_horizon(horizons, txid):
    order = txid_order(txid)
    if order and order[1] > horizons.get(order[0], (-1, -1)):
        horizons[order[0]] = order[1]


def at_or_below(horizons, txid):
    """True or False; None for a txid that is not a Cohort id (its place cannot be told)."""
    order = txid_order(txid)
    if order is None:
        return None
    return order[0] in horizons and order[1] <= horizons[order[0]]


# ---- state changes (callers hold mu) ----

def apply(ops):
    for op in ops:
        store[op["key"]] = store.get(op["key"], 0) + op["delta"]


def remember(kept, txid, value, limit, horizon):
    kept[txid] = value
    kept.move_to_end(txid)
    while len(kept) > limit:
        gone, _ = kept.popitem(last=False)
        # An outcome let go may have been a yes vote: never promise "no yes" at or below it.
        raise_horizon(forgot_upto, gone)
        if horizon is not None:
            raise_horizon(horizon, gone)


def finish(txid, outcome):
    """Forget the live branch, release its locks, remember the outcome (rules 4-6)."""
    branches.pop(txid, None)
    for key in [k for k, holder in locks.items() if holder == txid]:
        del locks[key]
    remember(outcomes, txid, outcome, OUTCOMES_KEPT, None)


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
    if b is not None and b.state != "active":
        # 2PC: unforced, a lost abort means asking again. 3PC: forced, because a termination
        # round may have decided it, and "a backup forces its abort record before it releases
        # locks, tells peers or answers"; forcing the coordinator's abort too keeps one rule.
        LOG.append({"t": "aborted", "txid": txid}, force=b.protocol == "3pc")
    finish(txid, "aborted")


def promise_no_yes(txid):
    """Force a no-vote-promised record: never vote yes on txid (also after a restart). False
    when we may have voted yes on it and forgotten the outcome (at or below the horizon)."""
    if txid in promised:
        return True
    if at_or_below(forgot_upto, txid) is not False:
        return False
    LOG.append({"t": "promised", "txid": txid}, force=True)
    remember(promised, txid, True, OUTCOMES_KEPT, promises_let_go_upto)
    if txid in branches:
        branches[txid].failed = "a termination round pre-aborted this transaction before it voted"
    return True


def fence(txid):
    fences[txid] = True
    fences.move_to_end(txid)
    while len(fences) > FENCES_KEPT:
        fences.popitem(last=False)


# ---- talking to the coordinator and peers ----

def call(method, url, body=None, timeout=5):
    """(status, parsed JSON); raises OSError on transport failure, ValueError on a bad body."""
    req = urllib.request.Request(url, method=method, data=None if body is None else json.dumps(body).encode())
    req.add_header("Content-Type", "application/json")
    if ARGS.token:
        req.add_header("Authorization", f"Bearer {ARGS.token}")   # sent on every outgoing call
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read() or b"{}")
    except urllib.error.HTTPError as e:                  # a 4xx/5xx: {"error": ...} as text
        return e.code, {"error": e.read().decode(errors="replace")[:300]}


def ask_coordinator(coordinator, txid, timeout=5):
    """Call 5: "committed", "aborted", "pending", "unknown-coordinator", or None (no answer)."""
    try:
        status, answer = call("GET", f"{coordinator}/v1/transactions/{txid}/outcome?participant={quote(ARGS.name)}", timeout=timeout)
        return answer.get("outcome") if status == 200 else None
    except (OSError, ValueError):
        return None


def to_peer(peer, path, txid, **extra):
    """(status, body) of a peer's answer, or (None, None) when it is silent."""
    body = {"txid": txid, **extra}
    if peer.get("incarnation"):
        body["incarnation"] = peer["incarnation"]        # rule 10 holds between peers too
    try:
        return call("POST", peer["url"] + path, body, timeout=PEER_TIMEOUT_S)
    except (OSError, ValueError):
        return None, None


def backoff(attempt):
    d = min(5.0, 2.0 ** attempt)
    return random.uniform(d / 2, d)


def inquire(txid, delay):
    """2PC, rule 3: a prepared branch waits for the coordinator, asking it, for as long as it takes."""
    attempt = 0
    while True:
        time.sleep(delay)
        with mu:
            b = branches.get(txid)
            if b is None:
                return                                   # commit or abort arrived meanwhile
            coordinator = b.coordinator
        outcome = ask_coordinator(coordinator, txid)
        with mu:
            if txid in branches:
                if outcome == "committed":
                    return do_commit(txid)
                if outcome == "aborted":
                    return do_abort(txid)
        if outcome == "unknown-coordinator":             # rule 8: never presume abort here
            print(f"warning: {txid}: coordinator does not know its id; in doubt, keeping locks", file=sys.stderr, flush=True)
            delay = 5.0
        else:                                            # pending or unreachable: back off 1 s .. 5 s
            delay = backoff(attempt)
            attempt += 1


# ---- 3PC termination (docs/protocols.md "Blocking"; docs/protocol.md "Termination") ----

PRE_STATES = ("uncertain", "pre-committed", "pre-aborted")
STATES = PRE_STATES + ("unknown", "read-only", "committed", "aborted")


def terminate(txid, first_delay):
    """While a 3PC branch has no outcome: after 2 s without a coordinator message, ask the
    coordinator (call 5) and every peer (state), adopt any outcome heard, and if this branch is
    the backup, decide by Skeen's rules. A failed round never decides."""
    delay = first_delay
    while True:
        time.sleep(delay)
        with mu:
            b = branches.get(txid)
            if b is None:
                return
            quiet = time.monotonic() - b.last_heard
            if quiet < TERMINATION_TIMEOUT_S and not b.recovered:
                delay = TERMINATION_TIMEOUT_S - quiet    # the coordinator spoke lately: wait on
                continue
            coordinator, peers = b.coordinator, [p for p in b.participants if p["name"] != ARGS.name]
        # A hung coordinator (or a partition) must not hold the round up: ask it as briefly as a peer.
        outcome = ask_coordinator(coordinator, txid, timeout=PEER_TIMEOUT_S)
        if outcome in ("committed", "aborted"):
            with mu:
                if txid in branches:
                    (do_commit if outcome == "committed" else do_abort)(txid)
            return
        answers = {}                                     # peer name -> {"state", "recovered"?} or None (silent)
        for p in peers:
            status, body = to_peer(p, "/v1/3pc/state", txid)
            # An answer that is not one of the documented states is no word: the peer counts as silent.
            answers[p["name"]] = body if status == 200 and isinstance(body, dict) and body.get("state") in STATES else None
        decide(txid, {p["name"]: p for p in peers}, answers)
        delay = random.uniform(TERMINATION_TIMEOUT_S / 2, TERMINATION_TIMEOUT_S)


def decide(txid, peers, answers):
    """One round's decision, as the backup or by adopting a peer's outcome."""
    with mu:
        b = branches.get(txid)
        if b is None:
            return
        b.joined = True                                  # our state is part of the round now
        mine = b.state
        heard = [a["state"] for a in answers.values() if a]
        if "committed" in heard:                         # every participant adopts an outcome, not only the backup
            return do_commit(txid)
        if "aborted" in heard:
            return do_abort(txid)
        with_branch = [n for n, a in answers.items() if a and a["state"] in PRE_STATES] + [ARGS.name]
        if min(with_branch) != ARGS.name:
            return                                       # another branch is the backup: wait for it
        recovered, termination = b.recovered, b.termination
    if termination == "quorum":
        return decide_quorum(txid, mine, peers, answers)
    return decide_classic(txid, mine, recovered, peers, answers)


def decide_classic(txid, mine, recovered, peers, answers):
    if recovered:
        # Back from a crash we may have missed a decision whose maker is down now: decide only
        # when every peer said something that counts. A peer with no branch is asked to promise.
        unknown = [n for n, a in answers.items() if a and a["state"] == "unknown"]
        for n in unknown:
            to_peer(peers[n], "/v1/3pc/preabort", txid, backup=True)
        if unknown or any(a is None for a in answers.values()):
            return
        counted = dict((n, a["state"]) for n, a in answers.items())
    else:
        # Silent peers are presumed failed (classic 3PC). A recovered peer's pre-state does not count.
        counted = {n: ("uncertain" if a.get("recovered") and a["state"] in PRE_STATES else a["state"])
                   for n, a in answers.items() if a}
    counted[ARGS.name] = mine
    if "pre-committed" not in counted.values():
        return finish_as_backup(txid, "aborted", peers, answers)
    # Pre-commit the uncertain ones (a peer with no branch promises and answers 409), then commit.
    for n, state in counted.items():
        if n != ARGS.name and state in ("uncertain", "unknown"):
            status, body = to_peer(peers[n], "/v1/3pc/precommit", txid, backup=True)
            if state == "uncertain" and status is not None and not (status == 200 and body.get("status") == "pre-committed"):
                return                                   # alive and refusing: something changed, next round
    if mine == "uncertain" and not pre_state(txid, "pre-committed"):
        return
    finish_as_backup(txid, "committed", peers, answers)


def decide_quorum(txid, mine, peers, answers):
    counted = {n: a["state"] for n, a in answers.items() if a}
    counted[ARGS.name] = mine
    n_total = len(peers) + 1 - sum(1 for s in counted.values() if s == "read-only")
    q = n_total // 2 + 1
    pc = sum(1 for s in counted.values() if s == "pre-committed")
    pa = sum(1 for s in counted.values() if s == "pre-aborted")
    unc = [n for n, s in counted.items() if s in ("uncertain", "unknown")]
    if pc > 0 and pc + len(unc) >= q:
        target, path, status_word = "pre-committed", "/v1/3pc/precommit", "pre-committed"
    elif pa + len(unc) >= q:
        target, path, status_word = "pre-aborted", "/v1/3pc/preabort", "pre-aborted"
    else:
        return                                           # a minority: wait for the partition to heal
    got = pc if target == "pre-committed" else pa
    for n in unc:
        if n == ARGS.name:
            if pre_state(txid, target):
                got += 1
            continue
        status, body = to_peer(peers[n], path, txid, backup=True)
        if counted[n] == "uncertain" and status == 200 and body.get("status") == status_word:
            got += 1                                     # a promise (an "unknown" peer) only shrinks N next round
    if got >= q:
        finish_as_backup(txid, "committed" if target == "pre-committed" else "aborted", peers, answers)


def pre_state(txid, state):
    """Move our own uncertain branch to `state` as its backup, forcing the record first."""
    with mu:
        b = branches.get(txid)
        if b is None or b.state not in ("uncertain", state):
            return False
        if b.state == "uncertain":
            LOG.append({"t": state, "txid": txid}, force=True)
            b.state = state
        return True


def finish_as_backup(txid, outcome, peers, answers):
    with mu:
        if txid not in branches:
            return
        (do_commit if outcome == "committed" else do_abort)(txid)   # forced before anyone hears it
    path = "/v1/2pc/commit" if outcome == "committed" else "/v1/2pc/abort"
    for n, a in answers.items():
        if a and a["state"] in PRE_STATES:
            to_peer(peers[n], path, txid, backup=True)   # the others find the outcome in their rounds


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
        if txid in outcomes or txid in promised:
            return 409, {"error": f"transaction {txid} already finished here ({outcomes.get(txid, 'promised no vote')})"}
        known = txid in branches
        busy = [op["key"] for op in ops if locks.get(op["key"], txid) != txid]
        if not known and busy:   # refuse before registering: no branch to doom, no coordinator call
            return 409, {"error": f'lock conflict: key "{busy[0]}" is locked by {locks[busy[0]]}'}
    if not known:   # register BEFORE acknowledging work, or the commit would go on without us
        try:
            status, answer = call("POST", f"{ARGS.coordinator}/v1/transactions/{txid}/branches",
                                  {"participant": ARGS.name, "url": MY_URL, "incarnation": INCARNATION, "session": SESSION})
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
    protocol = body.get("protocol", "2pc")

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
        if b.state != "active":
            return 200, {"txid": txid, "vote": "yes"}    # voted yes before: the same vote (rule 4)
        if txid in promised or txid in fences or (protocol == "3pc" and at_or_below(promises_let_go_upto, txid)):
            return no("a termination round asked about this transaction before it voted")
        reason = b.failed or violated_min(b)
        if reason:
            return no(reason)                            # nothing forced for a no
        if one_phase:                                    # our record IS the decision: force it, apply
            LOG.append({"t": "committed", "txid": txid, "ops": b.ops}, force=True)
            apply(b.ops)
            finish(txid, "committed")
            return 200, {"txid": txid, "outcome": "committed"}
        b.protocol = "3pc" if protocol == "3pc" else "2pc"
        if b.protocol == "3pc":
            b.termination = "quorum" if body.get("termination") == "quorum" else "classic"
            b.participants = [{k: p[k] for k in ("name", "url", "incarnation") if k in p}
                              for p in body.get("participants", []) if isinstance(p, dict) and "name" in p and "url" in p]
        LOG.append({"t": "prepared", "txid": txid, "coordinator": b.coordinator, "ops": b.ops, "protocol": b.protocol,
                    "termination": b.termination, "participants": b.participants}, force=True)   # rule 1
        crash_if("participant.after-prepared-logged")
        b.state = "uncertain"
        b.last_heard = time.monotonic()
    start_waiting(txid, b, first_delay=1.0 if protocol != "3pc" else TERMINATION_TIMEOUT_S)
    return 200, {"txid": txid, "vote": "yes"}


def start_waiting(txid, b, first_delay):
    """2PC: inquire (rule 3). 3PC: terminate, which inquires too."""
    target = terminate if b.protocol == "3pc" else inquire
    threading.Thread(target=target, args=(txid, first_delay), daemon=True).start()


def precommit(body):
    if other_incarnation(body):
        return 409, {"error": "pre-commit for another incarnation of this participant"}
    txid, backup = body["txid"], body.get("backup") is True
    with mu:
        b = branches.get(txid)
        if b is None:
            if outcomes.get(txid) == "committed":        # a late repeat: it was pre-committed, then committed
                return 200, {"txid": txid, "status": "pre-committed"}
            if backup and txid not in outcomes and promise_no_yes(txid):
                # A backup pre-commits only once every branch voted; with no branch here we voted
                # read-only and restarted. Promise never to vote yes; the pre-commit itself is refused.
                return 409, {"error": f"no branch for {txid} here: promised never to vote yes (read-only)"}
            return 409, {"error": f"no branch for {txid} to pre-commit ({outcomes.get(txid, 'unknown')})"}
        if b.protocol != "3pc" or b.state == "active":
            return 409, {"error": f"branch {txid} is {b.state} ({b.protocol}): it cannot pre-commit"}
        if b.state == "pre-aborted":
            return 409, {"error": f"branch {txid} is pre-aborted: pre-states never change"}
        if b.state == "uncertain":
            if b.joined and not backup:
                return 409, {"error": f"branch {txid} joined a termination round: it takes pre-commits only from a backup"}
            LOG.append({"t": "pre-committed", "txid": txid}, force=True)
            crash_if("participant.after-precommit-logged")
            b.state = "pre-committed"
        if not backup:
            b.last_heard = time.monotonic()
        return 200, {"txid": txid, "status": "pre-committed"}


def preabort(body):
    if other_incarnation(body):
        return 409, {"error": "pre-abort for another incarnation of this participant"}
    txid = body["txid"]
    with mu:
        b = branches.get(txid)
        if b is None or b.state == "active":
            if outcomes.get(txid) == "committed":
                return 409, {"error": f"branch {txid} committed"}
            if outcomes.get(txid) == "aborted" or promise_no_yes(txid):
                return 200, {"txid": txid, "status": "pre-aborted"}
            return 409, {"error": f"no branch for {txid}, and its outcome may have been let go here: no promise"}
        if b.state == "pre-committed":
            return 409, {"error": f"branch {txid} is pre-committed: pre-states never change"}
        if b.termination != "quorum":
            return 409, {"error": f"branch {txid} runs classic termination: no pre-abort"}
        if b.state == "uncertain":
            LOG.append({"t": "pre-aborted", "txid": txid}, force=True)
            b.state = "pre-aborted"
        return 200, {"txid": txid, "status": "pre-aborted"}


def state(body):
    txid = body["txid"]
    with mu:
        b = branches.get(txid)
        if b is None:
            if txid in outcomes:
                return 200, {"txid": txid, "state": outcomes[txid]}
            if txid in promised:
                return 200, {"txid": txid, "state": "read-only"}
            fence(txid)                                  # its prepare, if it comes now, votes no
            return 200, {"txid": txid, "state": "unknown"}
        if b.state == "active":
            b.failed = "a termination round asked about this branch before it voted"
            return 200, {"txid": txid, "state": "unknown"}
        if b.protocol != "3pc":
            return 409, {"error": f"branch {txid} is a two-phase branch"}
        b.joined = True
        answer = {"txid": txid, "state": b.state}
        if b.recovered:
            answer["recovered"] = True
        return 200, answer


def commit(body):
    if other_incarnation(body):
        return 409, {"error": "commit for another incarnation of this participant"}
    txid = body["txid"]
    with mu:
        if outcomes.get(txid) == "aborted":
            return 409, {"error": f"branch {txid} aborted"}
        b = branches.get(txid)
        if b is not None:
            if b.state == "active":
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


ROUTES = {"/v1/work": work, "/v1/2pc/prepare": prepare, "/v1/2pc/commit": commit, "/v1/2pc/abort": abort,
          "/v1/3pc/precommit": precommit, "/v1/3pc/preabort": preabort, "/v1/3pc/state": state}


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
                txid = unquote(parts[3])
                if txid in branches:                     # live state, or the outcome once finished
                    b = branches[txid]
                    return self.answer(200, {"txid": txid, "state": b.state, "protocol": b.protocol, "recovered": b.recovered})
                if txid in outcomes:
                    return self.answer(200, {"txid": txid, "state": outcomes[txid]})
        self.answer(404, {"error": f'no such key, branch or path: "{self.path}"'})

    def do_POST(self):
        if not self.authorized():
            return
        try:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
        except ValueError as e:
            return self.answer(400, {"error": f"invalid JSON body: {e}"})
        route = ROUTES.get(self.path)
        if route is None:
            return self.answer(404, {"error": f'no such path "{self.path}"'})
        if route is not work and (not isinstance(body, dict) or not isinstance(body.get("txid"), str) or not body["txid"]):
            return self.answer(400, {"error": 'invalid JSON body: missing field "txid"'})
        self.answer(*route(body))

    def log_message(self, *args): pass                   # no access log on stderr


def recover():
    """Rule 9, before serving: rebuild the store, outcomes and promises, re-lock undecided branches."""
    for r in LOG.records:
        txid, t = r["txid"], r["t"]
        if t == "prepared":
            b = branches[txid] = Branch(r["coordinator"], "uncertain", r["ops"])
            b.protocol, b.termination, b.participants = r.get("protocol", "2pc"), r.get("termination", "classic"), r.get("participants", [])
            b.recovered = b.joined = True    # whether it answered a round before is not logged: assume so
            for op in r["ops"]:
                locks[op["key"]] = txid
        elif t in ("pre-committed", "pre-aborted") and txid in branches:
            branches[txid].state = t
        elif t == "committed":
            apply(r["ops"])                              # the store lives in the log: replay re-applies
            finish(txid, "committed")
        elif t == "aborted":
            finish(txid, "aborted")
        elif t == "promised":
            remember(promised, txid, True, OUTCOMES_KEPT, promises_let_go_upto)
    return list(branches.items())


if __name__ == "__main__":
    p = argparse.ArgumentParser(description="A Cohort 3PC (and 2PC) participant (key-value store of integers).")
    p.add_argument("--name", required=True)
    p.add_argument("--data", required=True, help="data directory (log and incarnation)")
    p.add_argument("--port", type=int, default=0, help="0 picks a free port")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--coordinator", required=True, help="the coordinator's base URL")
    p.add_argument("--advertise", help="URL the coordinator and peers call back (default http://HOST:PORT)")
    p.add_argument("--token", default=os.environ.get("COHORT_TOKEN"), help="bearer token (or COHORT_TOKEN)")
    ARGS = p.parse_args()
    ARGS.coordinator = ARGS.coordinator.rstrip("/")
    os.makedirs(ARGS.data, exist_ok=True)
    INCARNATION = read_or_create_incarnation(ARGS.data)
    SESSION = secrets.token_hex(8)   # new per process: work staged before a restart is gone, and
                                     # the coordinator refuses to mix two sessions in one branch
    LOG = Log(os.path.join(ARGS.data, "log.jsonl"))
    undecided = recover()
    server = ThreadingHTTPServer((ARGS.host, ARGS.port), Handler)
    server.daemon_threads = True
    MY_URL = (ARGS.advertise or f"http://{ARGS.host}:{server.server_address[1]}").rstrip("/")
    for txid, b in undecided:
        start_waiting(txid, b, first_delay=0)            # at once after a restart
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))   # every needed record is already fsynced
    print(f"listening on http://{ARGS.host}:{server.server_address[1]}", flush=True)
    server.serve_forever()
