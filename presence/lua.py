"""Lua for presence. Each script is a module constant with a header naming KEYS, ARGV and the return value.

Every script starts with the same ARGV header (see `HEADER`), so the shared library can reach the clock, the
`today` window key and the rule settings without each script re-declaring them. The library mirrors
presence/rules.py line for line; tests/test_presence_rules.py proves the two agree on every state x intent.

Keys are built by callboard/keys.py and passed in as ARGV/known names; scripts touch keys beyond KEYS, which
is fine on a single Redis or a Sentinel-managed primary (not Redis Cluster, which callboard does not target).
"""

from __future__ import annotations

from callboard import keys

# ARGV header shared by all presence scripts:
#   ARGV[1] now_ms, ARGV[2] today's window key (local date at reset_time), ARGV[3] disconnect grace ms,
#   ARGV[4] wrap-up ms, ARGV[5] change stream max length (approximate trim).
HEADER_LEN = 5

LIB = (
    """
local NOW = tonumber(ARGV[1])
local DAY = ARGV[2]
local GRACE_MS = tonumber(ARGV[3])
local WRAP_MS = tonumber(ARGV[4])
local MAXLEN = ARGV[5]
local AGENTS = '%(agents)s'
local CHANGES = '%(changes)s'
local TIMERS = '%(timers)s'
local INSTANCES = '%(instances)s'
local PREFIX = '%(prefix)s'
local FACTS = '%(facts)s'

local function emit(kind, id, payload)
  redis.call('XADD', CHANGES, 'MAXLEN', '~', MAXLEN, '*', 'k', kind, 'id', id, 'd', cmsgpack.pack(payload))
end

-- A business fact for the recorder (records/): JSON {type, at_ms, ...}. Never trimmed here: the recorder
-- trims what it has written, so a database outage loses nothing.
local function fact(f)
  if f.at_ms == nil then f.at_ms = NOW end
  redis.call('XADD', FACTS, '*', 'f', cjson.encode(f))
end

-- JSON null for an unknown value (cjson drops nil fields, and the facts contract wants explicit nulls).
local function nullable(v)
  if v == nil or v == '' then return cjson.null end
  return v
end

local function load_rec(id)
  local raw = redis.call('HGET', AGENTS, id)
  if raw then return cmsgpack.unpack(raw) end
  return {state = 'offline', since_ms = 0, connections = 0, seq = 0}
end

local function public(rec)
  -- cmsgpack drops nil map values; clients need explicit nulls, so the follower fills them back in.
  return {state = rec.state, reason = rec.reason, since_ms = rec.since_ms,
          connections = rec.connections, seq = rec.seq, call = rec.call}
end

-- Hook for handle time: called with the ended wrap-up {call_sid, queue, ..., wrap_ms}.
-- callflow supplies the real body (see callflow/lua.py); presence alone only needs it to exist.
local call_handled

local function save_rec(id, rec, wrap_ended)
  redis.call('HSET', AGENTS, id, cmsgpack.pack(rec))
  emit('agent', id, public(rec))
  if rec.state == 'wrap-up' then
    redis.call('ZADD', TIMERS, NOW + WRAP_MS, 'wrap:' .. id)
  end
  if rec.connections == 0 and rec.disc_ms ~= nil then
    redis.call('ZADD', TIMERS, rec.disc_ms + GRACE_MS, 'grace:' .. id)
  end
  if wrap_ended ~= nil and call_handled ~= nil then
    call_handled(id, wrap_ended)
  end
end

local AGENT_SETTABLE = {available = true, away = true}
local SUPERVISOR_SETTABLE = {available = true, away = true, offline = true}
local STATES = {available = true, ['on-call'] = true, ['wrap-up'] = true, away = true, offline = true}

local function same_call(held, given)
  return held ~= nil and given ~= nil and held.call_sid ~= nil and held.call_sid == given.call_sid
end

-- Mirrors rules._to: enter a state at `at` (default NOW); leaving wrap-up reports its length, capped at
-- the configured wrap-up as rules.decide caps it (a late timer never lengthens handle time).
local function to(rec, state, reason, at)
  at = at or NOW
  local wrap_ended = nil
  if rec.state == 'wrap-up' and state ~= 'wrap-up' and rec.wrap ~= nil then
    wrap_ended = rec.wrap
    wrap_ended.wrap_ms = math.max(math.min(at - rec.since_ms, WRAP_MS), 0)
    rec.wrap = nil
  end
  rec.state = state
  rec.reason = reason
  rec.since_ms = at
  rec.seq = rec.seq + 1
  return rec, nil, wrap_ended
end

local function to_disconnected_away(rec)
  if rec.chosen == nil then
    if (rec.state == 'available' or rec.state == 'away') and rec.reason ~= 'disconnected' then
      rec.chosen = {state = rec.state, reason = rec.reason}
    else
      rec.chosen = {state = 'available'}
    end
  end
  return to(rec, 'away', 'disconnected')
end

local function validate_set(actor, state, reason)
  if not STATES[state] then return 'bad_state' end
  local allowed = SUPERVISOR_SETTABLE
  if actor == 'agent' then allowed = AGENT_SETTABLE end
  if not allowed[state] then return 'forbidden_state' end
  if reason ~= nil and (type(reason) ~= 'string' or string.len(reason) > %(max_reason)d) then return 'bad_state' end
  return nil
end

-- Mirrors rules.decide. Returns (new record or nil when unchanged, error code or nil, wrap_ended or nil).
local function decide(rec, it)
  if it.seq ~= nil and it.seq < rec.seq then return nil, 'stale' end
  local kind = it.kind
  if kind == 'set' then
    local err = validate_set(it.actor, it.state, it.reason)
    if err then return nil, err end
    if rec.state == 'on-call' then return nil, 'on_call' end
    if it.actor == 'agent' and rec.state == 'offline' then return nil, 'not_connected' end
    local reason = nil
    if it.state == 'away' then reason = it.reason end
    if rec.state == it.state and rec.reason == reason then return nil end
    rec.chosen = nil
    return to(rec, it.state, reason)
  elseif kind == 'connect' then
    rec.connections = rec.connections + 1
    rec.disc_ms = nil
    if rec.state == 'offline' then return to(rec, 'available', nil) end
    if rec.state == 'away' and rec.reason == 'disconnected' then
      local chosen = rec.chosen or {state = 'available'}
      rec.chosen = nil
      return to(rec, chosen.state, chosen.reason)
    end
    rec.seq = rec.seq + 1
    return rec
  elseif kind == 'disconnect' then
    local left = math.max(rec.connections - 1, 0)
    rec.connections = left
    if left == 0 then rec.disc_ms = NOW end
    rec.seq = rec.seq + 1
    return rec
  elseif kind == 'grace_expired' then
    local long_enough = rec.disc_ms ~= nil and NOW - rec.disc_ms >= GRACE_MS
    if rec.connections > 0 or not long_enough or (rec.state ~= 'available' and rec.state ~= 'wrap-up') then
      return nil
    end
    return to_disconnected_away(rec)
  elseif kind == 'call_start' then
    local call = it.call or {}
    if rec.state == 'on-call' and rec.call ~= nil and rec.call.call_sid == call.call_sid then return nil end
    rec.call = call
    return to(rec, 'on-call', nil)
  elseif kind == 'call_end' then
    if rec.state ~= 'on-call' or not same_call(rec.call, it.call) then return nil end
    local wrap = rec.call
    for k, v in pairs(it.call) do wrap[k] = v end
    rec.call = nil
    if rec.connections == 0 or WRAP_MS <= 0 then
      local new, err, ended
      if rec.connections == 0 then new, err, ended = to_disconnected_away(rec)
      else new, err, ended = to(rec, 'available', nil) end
      if ended == nil then wrap.wrap_ms = 0; ended = wrap end
      return new, err, ended
    end
    rec.wrap = wrap
    return to(rec, 'wrap-up', nil)
  elseif kind == 'wrap_done' then
    if rec.state ~= 'wrap-up' or not same_call(rec.wrap, it.call) then return nil end
    -- available since the timer was due, however late the sweep fired it (rules.decide says why)
    return to(rec, 'available', nil, math.max(math.min(NOW, rec.since_ms + WRAP_MS), rec.since_ms))
  end
  return nil, 'bad_kind'
end

-- Load, decide, store, emit. Returns the error code or false.
local function apply(id, it)
  local rec = load_rec(id)
  local prev_state, prev_reason = rec.state, rec.reason  -- decide() changes rec in place
  local new, err, wrap_ended = decide(rec, it)
  if new ~= nil then
    save_rec(id, new, wrap_ended)
    if new.state ~= prev_state or new.reason ~= prev_reason then
      fact({type = 'agent.state', agent = id, state = new.state, reason = nullable(new.reason),
            prev_state = prev_state})
    end
  end
  return err or false
end

-- An instance is gone (lease expired, or released after a drain): disconnect every connection still
-- registered under it (HDEL decides who does it when several run at once), drop the registry and the
-- lease. Returns how many connections it disconnected.
local function end_instance(inst)
  local reg = PREFIX .. 'conns:' .. inst
  local entries = redis.call('HGETALL', reg)
  local n = 0
  for i = 1, #entries, 2 do
    if redis.call('HDEL', reg, entries[i]) == 1 then
      apply(entries[i + 1], {kind = 'disconnect', actor = 'system'})
      n = n + 1
    end
  end
  redis.call('DEL', reg)
  redis.call('ZREM', INSTANCES, inst)
  return n
end
"""
    % {
        "agents": keys.AGENTS,
        "changes": keys.CHANGES,
        "timers": keys.TIMERS,
        "instances": keys.INSTANCES,
        "prefix": keys.PREFIX,
        "facts": keys.FACTS,
        "max_reason": 100,
    }
)

# APPLY_INTENTS — apply a batch of intents in order, atomically.
#   KEYS: none.  ARGV: header, then ARGV[6] = msgpack list of {a = agent id, kind, actor, state, reason, call,
#   seq, conn, inst}; connect/disconnect intents carry conn (connection id) and inst (instance id) and are
#   no-ops when the connection is already registered / already gone, which makes reaping idempotent.
#   Returns: msgpack list, one entry per intent: false (applied or unchanged) or an error code string.
APPLY_INTENTS_BODY = """
local intents = cmsgpack.unpack(ARGV[6])
local results = {}
for i, it in ipairs(intents) do
  local result = false
  if it.kind == 'connect' then
    if redis.call('HSETNX', PREFIX .. 'conns:' .. it.inst, it.conn, it.a) == 1 then result = apply(it.a, it) end
  elseif it.kind == 'disconnect' then
    if redis.call('HDEL', PREFIX .. 'conns:' .. it.inst, it.conn) == 1 then result = apply(it.a, it) end
  else
    result = apply(it.a, it)
  end
  results[i] = result
end
return cmsgpack.pack(results)
"""

# SWEEP — the liveness sweeper's one call; safe when every instance runs it at once.
#   KEYS: none.  ARGV: header, then ARGV[6] = max timers to fire in this call.
#   1. Each instance whose lease expired (score < now): its registered connections are disconnected one by
#      one (HDEL guards against a concurrent reaper), then the lease and the registry are deleted.
#   2. Due timers: grace:<id> -> grace_expired, wrap:<id> -> wrap_done for the wrap-up the record holds.
#   Returns: {instances reaped, connections reaped, timers fired}.
SWEEP_BODY = """
local reaped, conns, fired = 0, 0, 0
local dead = redis.call('ZRANGEBYSCORE', INSTANCES, '-inf', '(' .. NOW)
for _, inst in ipairs(dead) do
  conns = conns + end_instance(inst)
  reaped = reaped + 1
end
local due = redis.call('ZRANGEBYSCORE', TIMERS, '-inf', NOW, 'LIMIT', 0, tonumber(ARGV[6]))
for _, member in ipairs(due) do
  redis.call('ZREM', TIMERS, member)
  local sep = string.find(member, ':', 1, true)
  local kind, id = string.sub(member, 1, sep - 1), string.sub(member, sep + 1)
  if kind == 'grace' then
    apply(id, {kind = 'grace_expired', actor = 'system'})
  elseif kind == 'wrap' then
    local rec = load_rec(id)
    if rec.wrap ~= nil then apply(id, {kind = 'wrap_done', actor = 'system', call = {call_sid = rec.wrap.call_sid}}) end
  end
  fired = fired + 1
end
return {reaped, conns, fired}
"""

# HEARTBEAT — renew this instance's lease.
#   KEYS: none.  ARGV[1] instance id, ARGV[2] lease expiry ms.
#   Returns 1 when the lease was missing (first start, Redis lost its data, or we were reaped while stalled):
#   the caller must register its live connections again. 0 when it was renewed.
HEARTBEAT = """
return redis.call('ZADD', '%(instances)s', ARGV[2], ARGV[1])
""" % {"instances": keys.INSTANCES}

# RELEASE — drop this instance's lease after a graceful drain.
#   KEYS: none.  ARGV: header, then ARGV[6] instance id.
#   A connection still registered (its own disconnect write has not landed yet) is disconnected here,
#   exactly as the sweeper would, so deleting the registry can never leave an agent a ghost connection.
#   Returns the number of connections it disconnected.
RELEASE_BODY = """
return end_instance(ARGV[6])
"""

# Default handle-time hook: nothing (presence alone does not keep call statistics).
NO_HANDLED_HOOK = "call_handled = nil\n"


def build_script(body: str, handled_hook: str = NO_HANDLED_HOOK) -> str:
    """LIB + the handle-time hook definition + one script body."""
    return LIB + handled_hook + body
