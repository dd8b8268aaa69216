"""Named limits of the websocket layer, each with the reason for its value."""

# The contract gives a client 10 s to say hello: long enough for a slow tab on a busy wall display.
HELLO_TIMEOUT_S = 10.0

# Client frames are tiny (hello, set_state); 64 KiB is generous and caps what a bad client can make us parse.
MAX_FRAME_BYTES = 64 * 1024

# Websocket ping every 10 s; aiohttp closes when a pong is missing for half the interval, so a
# half-open connection (laptop lid closed, NAT dropped) dies within ~15 s, well under the 30 s target.
HEARTBEAT_S = 10.0

# Bad messages in a row before 4400: one typo gets an error message, a client stuck in a loop gets closed.
MAX_BAD_MESSAGES = 5

# Per-client outbound queue, used only while the peer is behind (wallboard/hub.py writes directly otherwise).
# Over SOFT_PENDING messages the backlog is merged into one delta (latest state wins); a client still
# backlogged SLOW_CLOSE_S later is closed 4429 so it reconnects and resnapshots.
SOFT_PENDING = 32
SLOW_CLOSE_S = 5.0

# A peer "owes" what asyncio buffers for it plus what the kernel holds unsent (SIOCOUTQNSD): on loopback and
# fast links the kernel takes megabytes from a peer that never reads, so asyncio's buffer alone stays short
# while the client falls ever further behind. While it owes more than WRITE_BUFFER_HIGH, new frames wait in
# its outbox (and merge); one that owes more than that and takes less than that much in SLOW_CLOSE_S is
# closed 4429 (a slow but steady reader is not: it gets merged deltas, the latest state). The hub looks at
# such peers every WRITE_BUFFER_POLL_S.
WRITE_BUFFER_HIGH = 64 * 1024
WRITE_BUFFER_POLL_S = 0.05

# A close frame to a slow consumer gets this long to go out (and be answered); then the TCP connection is
# reset, so a peer that never reads cannot keep a socket, its buffers and its session alive.
CLOSE_GRACE_S = 1.0

# The fan-out tick: an idle hub flushes at once (at the end of the loop turn that applied the change); a busy
# one at most once per tick. 25 ms: the old 100 ms was a floor of ~115 ms p99 by itself, while each flush
# costs a write per subscriber of every touched topic, so a tick of 0 would multiply the wallboards' writes
# by the follower's read rate (hundreds per second) for little gain ([server] tick_ms overrides it).
DEFAULT_TICK_MS = 25

# The listening socket's accept queue. aiohttp's default (128) overflowed in a connect storm: the kernel
# dropped the SYNs beyond it and clients retried after TCP's 1 s, 3 s, 7 s timeouts, so 2,000 sockets took
# 8-15 s to connect with the server mostly idle (TcpExtListenOverflows counted the drops). The kernel caps
# this at net.core.somaxconn (4096 on current Linux).
LISTEN_BACKLOG = 4096

JSON_PROTOCOL = "callboard.v1.json"
MSGPACK_PROTOCOL = "callboard.v1.msgpack"

CLOSE_RESTART = 1012
CLOSE_TOO_BIG = 1009
CLOSE_BAD_MESSAGE = 4400
CLOSE_BAD_TOKEN = 4401
CLOSE_FORBIDDEN = 4403
CLOSE_NO_HELLO = 4408
CLOSE_TOO_SLOW = 4429
