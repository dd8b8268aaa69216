"""The socket intent path in-process: server CPU per set_state intent without sockets, Redis or scheduler noise.

    python bench/intent_path.py            # 2,000 agents x bursts of 4 x 25 rounds, min of 7 reps
    python bench/intent_path.py --smoke    # 200 agents, 2 reps
    BENCH_SERVER_ROOT=<other checkout> python bench/intent_path.py   # the same for another tree

What one intent costs the server between aiohttp handing over a frame and the Lua call: `messages.decode`,
`Session.handle` (validation, the Intent, the batcher's offer or submit), then the flush's bookkeeping
(taking the pending dict, the wire form of each flushed intent, telling every intent its fate). Bursts of 4
per agent coalesce as in bench/presence_absorb.py. Sockets, aiohttp's frame parsing, the Lua call, the
follower and the hub are not in it (presence_absorb.py measures all of it, with the machine's noise).
Timed on `time.process_time` (this process's CPU), the minimum over reps: a loaded machine slows some reps,
never speeds one up, which is what makes it comparable across trees on a shared machine.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import sys
import time
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import common  # noqa: E402

if os.environ.get("BENCH_SERVER_ROOT"):  # the server code from another checkout; this script's bench/ helpers
    sys.path.insert(0, os.environ["BENCH_SERVER_ROOT"])


async def _run(agents: int, burst: int, rounds: int, reps: int, encoding: str) -> dict[str, float]:
    import msgpack

    from callboard.config import load_config
    from presence.batcher import Batcher
    from presence.store import Addressed, _wire
    from wallboard import messages
    from wallboard.hub import Subscriber
    from wallboard.ws import Session

    with common.workdir("cb-bench-intent-") as wd:
        config = load_config(common.write_config(wd, agents=agents, queues=20, team_size=25))
    batcher = Batcher(store=None, clock=None)  # type: ignore[arg-type] - never started: flushes are driven here
    services = SimpleNamespace(config=config, batcher=batcher, metrics=None)
    sessions = []
    for agent in config.agents:
        s = Session.__new__(Session)  # no socket: only what the intent path touches
        s.services, s.claims = services, SimpleNamespace(role="agent", sub=agent.id)
        s.sub = Subscriber({f"agent:{agent.id}"}, "json", on_slow=lambda: None)
        s.closing, s.bad_in_a_row = False, 0
        s.conn = SimpleNamespace(opening=None)  # registered: a state change goes straight to the batcher
        sessions.append(s)
    try:  # the collector as the server tunes it (wallboard/runtime.py), where the tree has that
        from wallboard.runtime import GC_THRESHOLDS

        gc.collect()
        gc.freeze()
        gc.set_threshold(*GC_THRESHOLDS)
    except ImportError:
        pass
    frames = [msgpack.packb({"type": "set_state", "state": "away", "reason": f"n{i}"}) for i in range(4096)]
    best, k, n = float("inf"), 0, 0
    for _ in range(reps):
        n = 0
        t0 = time.process_time()
        for _ in range(rounds):
            for s in sessions:
                for _ in range(burst):
                    k += 1
                    if encoding == "json":
                        frame: str | bytes = '{"type":"set_state","state":"away","reason":"n%d"}' % k
                    else:  # what a msgpack-subprotocol client sends (its packing is the client's cost, not timed)
                        frame = frames[k % len(frames)]
                    s.handle(messages.decode(frame))
                    n += 1
            batch = batcher._take()
            [_wire(Addressed(agent_id, p.intent)) for agent_id, p in batch]
            for _, p in batch:
                for waiter in p.waiters:
                    if hasattr(waiter, "set_result"):  # trees before Batcher.offer: a Future per intent
                        if not waiter.done():
                            waiter.set_result(None)
                    else:
                        waiter(None)
            await asyncio.sleep(0)  # run what the replies scheduled (Future callbacks in older trees)
            await asyncio.sleep(0)
        best = min(best, (time.process_time() - t0) / n)
    return {"us_per_intent": round(best * 1e6, 2), "intents_per_rep": n}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--agents", type=int, default=2000)
    parser.add_argument("--burst", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=25)
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--encoding", choices=("json", "msgpack"), default="json",
                        help="the frames' subprotocol: callboard.v1.json text or callboard.v1.msgpack binary")
    parser.add_argument("--smoke", action="store_true", help="200 agents, 2 reps")
    args = parser.parse_args()
    if args.smoke:
        args.agents, args.rounds, args.reps = 200, 5, 2
    import callboard

    load = {"agents": args.agents, "burst": args.burst, "encoding": args.encoding, "rounds": args.rounds, "reps": args.reps,
            "smoke": args.smoke, "tree": str(Path(callboard.__file__).resolve().parent.parent),
            "machine": common.machine()}
    common.emit("intent_path", load, **asyncio.run(_run(args.agents, args.burst, args.rounds, args.reps, args.encoding)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
