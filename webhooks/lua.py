"""Lua for the webhook outbox: enqueue, claim, settle and retry are each one atomic call.

A delivery is one event to one endpoint, id `<endpoint>:<webhook-id>`. Claiming moves the delivery's due
time forward by a lease instead of removing it, so a delivery whose instance dies mid-attempt comes due
again by itself: at least once, never lost. Key names come from callboard/keys.py.
"""

from __future__ import annotations

from callboard import keys

_LIB = """
local PREFIX = '%(prefix)s'
local LOG = '%(log)s'
local FAILED = '%(failed)s'
local function k_d(id) return PREFIX .. 'wh:d:' .. id end
local function k_due(endpoint) return PREFIX .. 'wh:due:' .. endpoint end
""" % {"prefix": keys.PREFIX, "log": keys.WEBHOOK_LOG, "failed": keys.WEBHOOK_FAILED}

# ENQUEUE — one message to each subscribed endpoint, once (the message id is derived from what it is about).
#   KEYS: none.  ARGV[1] now_ms, ARGV[2] msg id, ARGV[3] event type, ARGV[4] body, ARGV[5..] endpoint names.
#   Returns the number of deliveries created (0 when the message was already enqueued).
ENQUEUE = _LIB + """
local now, msg, typ, body = tonumber(ARGV[1]), ARGV[2], ARGV[3], ARGV[4]
local created = 0
for i = 5, #ARGV do
  local endpoint = ARGV[i]
  local id = endpoint .. ':' .. msg
  if redis.call('HSETNX', k_d(id), 'msg', msg) == 1 then
    redis.call('HSET', k_d(id), 'endpoint', endpoint, 'type', typ, 'body', body, 'status', 'pending',
               'attempts', 0, 'fails', 0, 'created_ms', now, 'next_ms', now)
    redis.call('ZADD', k_due(endpoint), now, id)
    redis.call('ZADD', LOG, now, id)
    created = created + 1
  end
end
return created
"""

# CLAIM — take the endpoint's first due delivery for one attempt.
#   KEYS: none.  ARGV[1] endpoint, ARGV[2] now_ms, ARGV[3] lease_ms.
#   Returns {id, msg, type, body, fails} or {'', next due ms or ''} when nothing is due.
CLAIM = _LIB + """
local endpoint, now, lease = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local due = k_due(endpoint)
while true do
  local first = redis.call('ZRANGE', due, 0, 0, 'WITHSCORES')
  if #first == 0 then return {'', ''} end
  if tonumber(first[2]) > now then return {'', first[2]} end
  local id = first[1]
  local f = redis.call('HMGET', k_d(id), 'msg', 'type', 'body', 'fails', 'status')
  if f[1] and f[5] == 'pending' then
    redis.call('ZADD', due, now + lease, id)
    redis.call('HINCRBY', k_d(id), 'attempts', 1)
    redis.call('HSET', k_d(id), 'last_ms', now, 'next_ms', now + lease)
    return {id, f[1], f[2], f[3], f[4]}
  end
  redis.call('ZREM', due, id)  -- gone (expired) or settled by a slower twin: nothing to send
end
"""

# SETTLE — record an attempt's result.
#   KEYS: none.  ARGV[1] id, ARGV[2] now_ms, ARGV[3] ok (1|0), ARGV[4] HTTP status (0: none),
#   ARGV[5] error text, ARGV[6] retry delay ms (-1: give up), ARGV[7] keep ms (how long a settled delivery
#   stays readable in the log).  Returns the new status.
SETTLE = _LIB + """
local id, now, ok = ARGV[1], tonumber(ARGV[2]), ARGV[3] == '1'
local dk = k_d(id)
local f = redis.call('HMGET', dk, 'endpoint', 'status')
if not f[1] then return 'gone' end
if f[2] ~= 'pending' then return f[2] end  -- a twin attempt (after a lease ran out) settled it already
redis.call('HSET', dk, 'last_status', ARGV[4], 'last_error', ARGV[5], 'last_ms', now)
if ok then
  redis.call('HSET', dk, 'status', 'delivered', 'delivered_ms', now, 'next_ms', '')
  redis.call('ZREM', k_due(f[1]), id)
  redis.call('PEXPIRE', dk, tonumber(ARGV[7]))
  return 'delivered'
end
redis.call('HINCRBY', dk, 'fails', 1)
local delay = tonumber(ARGV[6])
if delay >= 0 then
  redis.call('HSET', dk, 'next_ms', now + delay)
  redis.call('ZADD', k_due(f[1]), now + delay, id)
  return 'pending'
end
redis.call('HSET', dk, 'status', 'failed', 'next_ms', '')
redis.call('ZREM', k_due(f[1]), id)
redis.call('ZADD', FAILED, now, id)
redis.call('PEXPIRE', dk, tonumber(ARGV[7]))
return 'failed'
"""

# RETRY — a person asks for another try now: a failed (or still retrying) delivery starts the schedule again.
#   KEYS: none.  ARGV[1] id, ARGV[2] now_ms.  Returns the status before ('' when there is no such delivery).
RETRY = _LIB + """
local id, now = ARGV[1], tonumber(ARGV[2])
local dk = k_d(id)
local f = redis.call('HMGET', dk, 'endpoint', 'status')
if not f[1] then return '' end
if f[2] == 'delivered' then return 'delivered' end
redis.call('PERSIST', dk)
redis.call('HSET', dk, 'status', 'pending', 'fails', 0, 'next_ms', now)
redis.call('ZREM', FAILED, id)
redis.call('ZADD', k_due(f[1]), now, id)
return f[2]
"""
