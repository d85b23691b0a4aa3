"""A long-lived Python service using the Python package resilient-circuit, for tests/it/python.rs.

It reads one JSON command per line on stdin and answers each with one JSON line on stdout, so a
test can drive a real Python process step by step and time what it does. Nothing else is
printed on stdout; the package's log goes to stderr.

The storage is the package's own: create_storage() reads RC_DB_DSN (and RC_DB_STRICT=1, so an
unreachable or unusable database is an error instead of a silent in-memory fallback), exactly
as a Python service configured by environment does. Its set_state is wrapped only to record
when each write was called and when it returned (its commit acknowledged by then) and whether
the package's guard applied it; the write itself goes through unchanged.

Commands ({"id": N, "op": ..., ...}); every answer carries "id", "ok", "t" (time.time() when
the answer was made), "writes" (the set_state calls this command made: key, state, applied,
t_start, t_done), "changes" (on_status_change calls: key, old, new) and "problems" (WARNING
and above logged by the package while it ran: a failed or lost write shows here).

  policy  key cooldown_ms failure_limit [n, d] success_limit [n, d] | null refresh_ms (null:
          re-read the row before every call)    -> builds a CircuitProtectorPolicy; "status"
  call    key fail (bool)                       -> "outcome": "ok" | "failed" | "rejected"
  status  key                                   -> "status": the policy's local view, no I/O
  read    key                                   -> "row": storage.get_state(key)
  until_cooldown key                            -> sleeps until the policy's own open_until
"""

import json
import logging
import os
import sys
import time
import traceback
from datetime import timedelta
from fractions import Fraction


class Problems(logging.Handler):
    """Collects WARNING and above, cleared by each command."""

    def __init__(self):
        super().__init__(level=logging.WARNING)
        self.seen = []

    def emit(self, record):
        self.seen.append(f"{record.levelname} {record.name}: {record.getMessage()}")


problems = Problems()
logging.getLogger().addHandler(problems)
stderr = logging.StreamHandler(sys.stderr)
stderr.setFormatter(logging.Formatter("python %(levelname)s %(name)s: %(message)s"))
logging.getLogger().addHandler(stderr)
logging.getLogger().setLevel(logging.INFO)

import resilient_circuit  # noqa: E402
from resilient_circuit import CircuitProtectorPolicy  # noqa: E402
from resilient_circuit.exceptions import ProtectedCallError  # noqa: E402
from resilient_circuit.storage import create_storage  # noqa: E402

writes = []
changes = []
policies = {}


class Down(Exception):
    """The protected call's failure."""


def main():
    storage = create_storage()
    if storage.backend_name != "postgres":
        raise SystemExit(f"expected PostgreSQL storage, got {storage.backend_name}")

    set_state = storage.set_state

    def recorded_set_state(key, state, failure_count, open_until, execution_log=None):
        started = time.time()
        applied = set_state(key, state, failure_count, open_until, execution_log=execution_log)
        writes.append(
            {"key": key, "state": state, "applied": applied, "t_start": started, "t_done": time.time()}
        )
        return applied

    storage.set_state = recorded_set_state

    def on_change(policy, old, new):
        changes.append({"key": policy.resource_key, "old": old.value, "new": new.value})

    def status_of(key):
        return policies[key].status.value

    def build(cmd):
        key = cmd["key"]
        success = cmd.get("success_limit")
        refresh = cmd.get("refresh_ms")
        policies[key] = CircuitProtectorPolicy(
            resource_key=key,
            storage=storage,
            cooldown=timedelta(milliseconds=cmd["cooldown_ms"]),
            failure_limit=Fraction(*cmd["failure_limit"]),
            success_limit=Fraction(*success) if success else None,
            on_status_change=on_change,
            admission_refresh_interval=(
                None if refresh is None else timedelta(milliseconds=refresh)
            ),
        )
        return {"status": status_of(key)}

    def call(cmd):
        key = cmd["key"]

        @policies[key]
        def protected():
            if cmd["fail"]:
                raise Down("down")
            return "fine"

        try:
            protected()
            outcome = "ok"
        except ProtectedCallError:
            outcome = "rejected"
        except Down:
            outcome = "failed"
        return {"outcome": outcome, "status": status_of(key)}

    def read(cmd):
        return {"row": storage.get_state(cmd["key"])}

    def until_cooldown(cmd):
        key = cmd["key"]
        until = getattr(policies[key]._status, "open_until_timestamp", None)
        if until is None:
            raise ValueError(f"{key} is {status_of(key)}, not OPEN")
        wait = max(0.0, until - time.time())
        time.sleep(wait)
        return {"slept_s": wait}

    ops = {
        "policy": build,
        "call": call,
        "status": lambda cmd: {"status": status_of(cmd["key"])},
        "read": read,
        "until_cooldown": until_cooldown,
    }

    answer({
        "ready": True,
        "version": resilient_circuit.__version__,
        "backend": storage.backend_name,
        "pid": os.getpid(),
        "problems": drain(problems.seen),
    })
    for line in sys.stdin:
        if not line.strip():
            continue
        cmd = json.loads(line)
        try:
            out = ops[cmd["op"]](cmd)
            out["ok"] = True
        except Exception:
            out = {"ok": False, "error": traceback.format_exc()}
        out["id"] = cmd.get("id")
        out["writes"] = drain(writes)
        out["changes"] = drain(changes)
        out["problems"] = drain(problems.seen)
        answer(out)


def drain(items):
    out = list(items)
    items.clear()
    return out


def answer(obj):
    obj["t"] = time.time()
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
