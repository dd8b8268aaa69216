"""Lua for the call flow: every Twilio call event is one atomic script that counts, moves the agent and emits.

Scripts are built with presence.lua.build_script(body, CALL_HANDLED_HOOK), so the presence LIB (NOW, DAY,
PREFIX, emit, load_rec, apply) and this file's CF_LIB are in scope, and a call event and the agent's
transition it causes happen in one call: no reader ever sees a call answered with its agent still available.

Exactly-once: each count is guarded by a flag in the call hash set with HSETNX in the same script, so a
request Twilio sends twice, or requests arriving out of order, count once. Every time a count needs is taken
from the event itself (NOW is the event's time, also when a spooled event is replayed after an outage), so
the totals do not depend on the order in which the requests arrived.

Key names mirror callboard/keys.py (tests/test_callflow_lua.py proves the two agree).

Call hash (keys.call(CallSid)) fields: kind=caller, mode (enqueued|unstaffed), queue, from, to, day (the
`today` window of the enqueue), enq_ms, ttl (retention ms), ans (answered flag), left (leaving outcome),
qr (QueueResult seen), qt_ms, min (epoch minute the call left the queue), bridge_ms, agent, leg, end_ms,
talk_ms, wrap_ms, handled, dq (set by routing while an accepted offer's caller is out of
Twilio's queue: its end is then its leaving). Agent leg hash (keys.agent_leg(CallSid)): agent, caller, outbound, end_ms.
"""

from __future__ import annotations

from callboard import keys
from callflow import stats
from presence.lua import build_script

# CF_LIB — helpers shared by the call-event script and the handle-time hook (which runs inside every
# presence script, so it must not read ARGV beyond the header: retention comes from the call hash).
CF_LIB = """
local DAY_MS = 86400000
local HANDLED = {}  -- {queue, handle_ms} of calls finalized by this script call, reported for metrics
local IN_CALL_EVENT = false  -- true in CALL_EVENT: it returns HANDLED; presence scripts leave them in a list

local function k_call(sid) return PREFIX .. 'call:' .. sid end
local function k_leg(sid) return PREFIX .. 'leg:' .. sid end
local function k_waiting(q) return PREFIX .. 'q:' .. q .. ':waiting' end
local function k_day(q, day) return PREFIX .. 'q:' .. q .. ':day:' .. day end
local function k_min(q, m) return PREFIX .. 'q:' .. q .. ':min:' .. m end
local function k_pop(agent) return PREFIX .. 'pop:' .. agent end

-- The record's outcome for a counted leaving outcome (docs/DESIGN.md "Call records and reports").
local function record_outcome(outcome, qt_ms, short_ms)
  if outcome == 'abandoned' and qt_ms and qt_ms < short_ms then return 'short_abandoned' end  -- unknown wait: never short
  if outcome == 'system_error' then return 'error' end
  return outcome
end

local function minute_of(ms) return math.floor(ms / 60000) end

-- Mirrors stats.bounded_queue_time_ms: (queue time ms or nil when unknown, why Twilio's was refused or nil).
local function bounded_queue_time(given_ms, enq_ms, seen_enter)
  local measured = nil
  if enq_ms then measured = math.max(NOW - enq_ms, 0) end
  if given_ms == nil then return measured, nil end
  if given_ms > %(max_qt_ms)d then return measured, 'over_max' end
  if seen_enter and measured ~= nil and given_ms > measured + %(qt_tolerance_ms)d then
    return measured, 'over_measured'
  end
  return given_ms, nil
end

-- A bucket lives until it has slid out of last_30m (plus a minute of slack for clock skew).
local function minute_ttl(m) return (m + 32) * 60000 - NOW end

local function bump(key, field, by, ttl_ms)
  redis.call('HINCRBY', key, field, by)
  redis.call('PEXPIRE', key, ttl_ms)
end

local function counters(key)
  local flat = redis.call('HGETALL', key)
  local t = {}
  for i = 1, #flat, 2 do t[flat[i]] = tonumber(flat[i + 1]) end
  return t
end

-- One stream entry per touched queue, with absolute values only: the follower may apply it twice.
local function emit_queue(q, day, minute)
  local wk = k_waiting(q)
  local first = redis.call('ZRANGE', wk, 0, 0, 'WITHSCORES')
  local p = {waiting = redis.call('ZCARD', wk), oldest_ms = tonumber(first[2] or 0)}
  -- The enqueue times of the oldest 50 waiting callers: the wallboard counts those past the SL threshold
  -- ("at risk") every second from these, with no event when a caller crosses it. 50: past that many
  -- callers at risk the exact number no longer changes what a supervisor does.
  local oldest = redis.call('ZRANGE', wk, 0, 49, 'WITHSCORES')
  local since = {}
  for i = 2, #oldest, 2 do since[#since + 1] = tonumber(oldest[i]) end
  p.waiting_ms = since
  if day then p.day = day; p.today = counters(k_day(q, day)) end
  if minute then p.minute = minute; p.bucket = counters(k_min(q, minute)) end
  emit('queue', q, p)
end

-- Count a handled call once both its talk time (caller's end) and its wrap-up are known.
local function finalize(sid)
  local ck = k_call(sid)
  local f = redis.call('HMGET', ck, 'talk_ms', 'wrap_ms', 'queue', 'day', 'min', 'ttl')
  if not f[1] or not f[2] or not f[3] or not f[4] then return end
  if redis.call('HSETNX', ck, 'handled', 1) == 0 then return end
  local handle = tonumber(f[1]) + tonumber(f[2])
  local q, day, m = f[3], f[4], tonumber(f[5])
  local day_ttl = tonumber(f[6] or 0) + DAY_MS
  bump(k_day(q, day), 'handled', 1, day_ttl)
  bump(k_day(q, day), 'handle_ms', handle, day_ttl)
  local touched = nil
  if m and minute_ttl(m) > 0 then
    bump(k_min(q, m), 'handled', 1, minute_ttl(m))
    bump(k_min(q, m), 'handle_ms', handle, minute_ttl(m))
    touched = m
  end
  emit_queue(q, day, touched)
  if IN_CALL_EVENT then
    HANDLED[#HANDLED + 1] = {q, handle}
  else
    redis.call('RPUSH', '%(handled_obs)s', q .. '\t' .. handle)
    redis.call('LTRIM', '%(handled_obs)s', -10000, -1)
  end
end

-- The screen pop of `sid` is over: forget it and tell the agent's softphone.
local function unpop(agent, sid)
  local raw = redis.call('GET', k_pop(agent))
  if raw and cmsgpack.unpack(raw).call_sid == sid then
    redis.call('DEL', k_pop(agent))
    emit('unpop', agent, {call_sid = sid})
  end
end
""" % {"handled_obs": keys.HANDLED_OBSERVATIONS, "max_qt_ms": stats.MAX_QUEUE_TIME_S * 1000,
       "qt_tolerance_ms": stats.QUEUE_TIME_TOLERANCE_S * 1000}

# CALL_HANDLED_HOOK — presence calls it when a wrap-up ends (or a call ends straight to available/away):
# `wrap` is the call_start call table ({call_sid, queue, from, since_ms}) merged with call_end's, plus
# wrap_ms. Outbound calls (no queue) and unknown calls are ignored. Records the wrap-up once, then tries to
# finalize the call's handle time.
CALL_HANDLED_HOOK = CF_LIB + """
call_handled = function(agent_id, wrap)
  if wrap == nil or wrap.call_sid == nil or wrap.queue == nil then return end
  local ck = k_call(wrap.call_sid)
  if redis.call('EXISTS', ck) == 0 then return end
  -- after a transfer only the wrap-up of the agent who held the call last counts (softphone/, docs/softphone.md)
  local holder = redis.call('HGET', ck, 'agent')
  if holder and holder ~= agent_id then return end
  local wrap_ms = math.max(math.floor(tonumber(wrap.wrap_ms) or 0), 0)
  if redis.call('HSETNX', ck, 'wrap_ms', wrap_ms) == 1 then
    fact({type = 'call.wrap_up', call_sid = wrap.call_sid, agent = agent_id, wrap_up_s = wrap_ms / 1000})
  end
  finalize(wrap.call_sid)
end
"""

# CALL_EVENT — apply one Twilio call event.
#   KEYS: none.  ARGV: the presence header (now_ms = the event's time, day = its `today` window), then
#   ARGV[6] = msgpack event {kind = incoming|bridge|queue_result|status|agent_leg, sid, ...} (see
#   callflow/events.py), ARGV[7] = msgpack settings {sl_ms, short_ms, ttl_ms}.
#   Returns msgpack {counted = 0|1, mode?, outcome?, qt_ms?, queue?, handled = {{queue, handle_ms}...}}.
CALL_EVENT_BODY = """
IN_CALL_EVENT = true
local ev = cmsgpack.unpack(ARGV[6])
local cfg = cmsgpack.unpack(ARGV[7])
local TTL = cfg.ttl_ms
local result = {counted = 0}

local function given_qt_ms(ev)
  if ev.qt_s == nil then return nil end
  return ev.qt_s * 1000
end

local function adopt(ck, ev)
  -- A bridge or queue-result for a call whose incoming we never saw (lost, or Redis lost its data):
  -- record it as offered now (in the window of this event), so answered and abandoned never exceed
  -- offered. It entered QueueTime ago when Twilio says so within bounds; otherwise nobody knows when,
  -- and its wait stays unknown (no enq_ms) rather than zero.
  redis.call('HSET', ck, 'kind', 'caller', 'mode', 'enqueued', 'queue', ev.queue, 'from', ev.from or '',
             'to', ev.to or '', 'day', DAY, 'ttl', TTL, 'adopted', 1)
  local qt_ms = bounded_queue_time(given_qt_ms(ev), nil, false)
  if qt_ms then redis.call('HSET', ck, 'enq_ms', NOW - qt_ms) end
  redis.call('PEXPIRE', ck, TTL)
  bump(k_day(ev.queue, DAY), 'offered', 1, TTL + DAY_MS)
  fact({type = 'call.entered', call_sid = ev.sid, from = ev.from or '', to = ev.to or '', queue = ev.queue,
        at_ms = NOW - (qt_ms or 0)})
end

-- (queue time ms or nil when unknown, why Twilio's QueueTime was refused or nil)
local function queue_time(ck, ev)
  local f = redis.call('HMGET', ck, 'enq_ms', 'adopted')
  return bounded_queue_time(given_qt_ms(ev), tonumber(f[1]), not f[2])
end

local function refused(qt_ms, why)
  if why then result.qt_refused, result.qt_given_s = why, ev.qt_s end
end

local function attach_agent(agent, leg, sid, c)
  -- Put the agent on this call; if the agent's leg already ended (its status came first), replay the
  -- start and the end at their own times so the wrap-up is what it would have been in order.
  local lk = k_leg(leg)
  redis.call('HSET', lk, 'agent', agent, 'caller', sid)
  redis.call('PEXPIRE', lk, TTL)
  local call = {call_sid = sid, queue = c.queue, from = c.from, since_ms = NOW}
  local leg_end = redis.call('HGET', lk, 'end_ms')
  if not leg_end then
    apply(agent, {kind = 'call_start', actor = 'system', call = call})
    if not c.end_ms then
      local pop = {type = 'pop', call_sid = sid, from = c.from, to = c.to, queue = c.queue,
                   waited_s = c.qt_ms and c.qt_ms / 1000, customers = {}}  -- unknown wait: absent
      -- The directory's answer (customers/lookup.py); not there yet: the lookup re-sends this pop with it.
      local ok, caller = pcall(cjson.decode, redis.call('GET', PREFIX .. 'caller:' .. sid) or 'null')
      if ok and type(caller) == 'table' then
        pop.customers, pop.withheld = caller.customers or {}, caller.withheld
        pop.directory_unavailable = caller.directory_unavailable
      else
        pop.lookup_pending = true
      end
      redis.call('SET', k_pop(agent), cmsgpack.pack(pop), 'PX', TTL)
      emit('pop', agent, pop)
    end
    return
  end
  if load_rec(agent).state == 'on-call' then
    -- already on another call: the wrap-up of this one never happened
    if redis.call('HSETNX', k_call(sid), 'wrap_ms', 0) == 1 then
      fact({type = 'call.wrap_up', call_sid = sid, agent = agent, wrap_up_s = 0})
    end
    return
  end
  apply(agent, {kind = 'call_start', actor = 'system', call = call})
  local bridged_at = NOW
  NOW = math.max(tonumber(leg_end), bridged_at)
  apply(agent, {kind = 'call_end', actor = 'system', call = {call_sid = sid}})
  NOW = bridged_at
end

-- Count the leaving of call `ck` (its `left` flag just set by the caller) from queue q of window `day`.
local function left_queue(ck, q, day, outcome)
  local m = minute_of(NOW)
  local qt_ms, why = queue_time(ck, ev)
  refused(qt_ms, why)
  redis.call('HSET', ck, 'min', m)
  if qt_ms then redis.call('HSET', ck, 'qt_ms', qt_ms) end
  result.counted, result.queue, result.outcome, result.qt_ms = 1, q, outcome, qt_ms
  local short = 0
  if outcome == 'abandoned' and qt_ms and qt_ms < cfg.short_ms then short = 1 end
  local dk, mk = k_day(q, day), k_min(q, m)
  local day_ttl, min_ttl = TTL + DAY_MS, minute_ttl(m)
  bump(dk, outcome, 1, day_ttl); bump(dk, 'short_abandoned', short, day_ttl)
  bump(mk, 'offered', 1, min_ttl); bump(mk, outcome, 1, min_ttl); bump(mk, 'short_abandoned', short, min_ttl)
  if outcome == 'abandoned' and not qt_ms then
    bump(dk, 'abandoned_wait_unknown', 1, day_ttl); bump(mk, 'abandoned_wait_unknown', 1, min_ttl)
  end
  redis.call('ZREM', k_waiting(q), ev.sid)
  fact({type = 'call.left_queue', call_sid = ev.sid, outcome = record_outcome(outcome, qt_ms, cfg.short_ms),
        wait_s = nullable(qt_ms and qt_ms / 1000)})
  return m
end

local kind = ev.kind
if kind == 'incoming' then
  local ck = k_call(ev.sid)
  local mode = redis.call('HGET', ck, 'mode')
  if mode then
    result.mode = mode
  else
    mode = ev.staffed and 'enqueued' or 'unstaffed'
    result.mode, result.counted, result.queue = mode, 1, ev.queue
    redis.call('HSET', ck, 'kind', 'caller', 'mode', mode, 'queue', ev.queue, 'from', ev.from or '',
               'to', ev.to or '', 'day', DAY, 'enq_ms', NOW, 'ttl', TTL)
    redis.call('PEXPIRE', ck, TTL)
    fact({type = 'call.entered', call_sid = ev.sid, from = ev.from or '', to = ev.to or '', queue = ev.queue})
    if mode == 'enqueued' then
      bump(k_day(ev.queue, DAY), 'offered', 1, TTL + DAY_MS)
      if redis.call('HEXISTS', ck, 'end_ms') == 0 then redis.call('ZADD', k_waiting(ev.queue), NOW, ev.sid) end
      emit_queue(ev.queue, DAY, nil)
    else
      local m = minute_of(NOW)
      redis.call('HSET', ck, 'min', m, 'left', 'unstaffed')
      fact({type = 'call.left_queue', call_sid = ev.sid, outcome = 'unstaffed', wait_s = 0})
      bump(k_day(ev.queue, DAY), 'unstaffed', 1, TTL + DAY_MS)
      bump(k_min(ev.queue, m), 'unstaffed', 1, minute_ttl(m))
      emit_queue(ev.queue, DAY, m)
    end
  end

elseif kind == 'bridge' then
  local ck = k_call(ev.sid)
  if redis.call('HEXISTS', ck, 'mode') == 0 then adopt(ck, ev) end
  local f = redis.call('HMGET', ck, 'mode', 'queue', 'day', 'from', 'to', 'end_ms')
  local c = {mode = f[1], queue = f[2], day = f[3], from = f[4], to = f[5], end_ms = f[6]}
  -- The first leaving outcome wins: a bridge for a call that already left another way (say a hangup
  -- reported first) is a contradiction from Twilio and changes nothing, agent included.
  if c.mode == 'enqueued' and redis.call('HSETNX', ck, 'ans', 1) == 1
      and redis.call('HSETNX', ck, 'left', 'answered') == 1 then
    local why
    c.qt_ms, why = queue_time(ck, ev)
    refused(c.qt_ms, why)
    local m = minute_of(NOW)
    redis.call('HSET', ck, 'bridge_ms', NOW, 'leg', ev.leg or '', 'min', m)
    if c.qt_ms then redis.call('HSET', ck, 'qt_ms', c.qt_ms) end
    if c.end_ms then redis.call('HSET', ck, 'talk_ms', math.max(tonumber(c.end_ms) - NOW, 0)) end
    result.counted, result.queue, result.qt_ms = 1, c.queue, c.qt_ms
    local dk, mk = k_day(c.queue, c.day), k_min(c.queue, m)
    local day_ttl, min_ttl = TTL + DAY_MS, minute_ttl(m)
    bump(dk, 'answered', 1, day_ttl); bump(mk, 'offered', 1, min_ttl); bump(mk, 'answered', 1, min_ttl)
    if c.qt_ms then
      local within = 0
      if c.qt_ms <= cfg.sl_ms then within = 1 end
      bump(dk, 'answer_wait_ms', c.qt_ms, day_ttl); bump(dk, 'answered_within_sl', within, day_ttl)
      bump(mk, 'answer_wait_ms', c.qt_ms, min_ttl); bump(mk, 'answered_within_sl', within, min_ttl)
    else
      bump(dk, 'answered_wait_unknown', 1, day_ttl); bump(mk, 'answered_wait_unknown', 1, min_ttl)
    end
    redis.call('ZREM', k_waiting(c.queue), ev.sid)
    local agent = ev.agent
    if (agent == nil or agent == '') and ev.leg then agent = redis.call('HGET', k_leg(ev.leg), 'agent') end
    fact({type = 'call.answered', call_sid = ev.sid, agent = nullable(ev.leg and agent), wait_s = nullable(c.qt_ms and c.qt_ms / 1000)})  -- unknown wait: null, never 0
    if agent and agent ~= '' and ev.leg then
      redis.call('HSET', ck, 'agent', agent)
      attach_agent(agent, ev.leg, ev.sid, c)
    elseif redis.call('HSETNX', ck, 'wrap_ms', 0) == 1 then  -- nobody to wrap up: handle time is the talk time
      fact({type = 'call.wrap_up', call_sid = ev.sid, agent = cjson.null, wrap_up_s = 0})
    end
    finalize(ev.sid)
    emit_queue(c.queue, c.day, m)
  end

elseif kind == 'queue_result' then
  local ck = k_call(ev.sid)
  if redis.call('HEXISTS', ck, 'mode') == 0 then adopt(ck, ev) end
  redis.call('HSETNX', ck, 'qr', ev.result)
  local f = redis.call('HMGET', ck, 'mode', 'queue', 'day')
  if f[1] == 'enqueued' and ev.outcome and redis.call('HSETNX', ck, 'left', ev.outcome) == 1 then
    emit_queue(f[2], f[3], left_queue(ck, f[2], f[3], ev.outcome))
  end

elseif kind == 'status' then
  local ck, lk = k_call(ev.sid), k_leg(ev.sid)
  if ev.agent == nil and redis.call('HEXISTS', ck, 'mode') == 1 then
    -- the caller hung up: talk time ends; never re-enters the queue
    if redis.call('HSETNX', ck, 'end_ms', NOW) == 1 then
      result.counted = 1
      local f = redis.call('HMGET', ck, 'queue', 'day', 'bridge_ms', 'agent', 'mode', 'dq')
      local minute = nil
      -- dequeued for an accepted offer (routing set dq) and gone before any agent answered: no queue-result
      -- will ever come for it (a dequeue is not a leaving), so its end is its leaving: an abandon
      if f[5] == 'enqueued' and f[6] and redis.call('HSETNX', ck, 'left', 'abandoned') == 1 then
        minute = left_queue(ck, f[1], f[2], 'abandoned')
      end
      local talk_s = cjson.null
      if f[3] then
        redis.call('HSET', ck, 'talk_ms', math.max(NOW - tonumber(f[3]), 0))
        talk_s = math.max(NOW - tonumber(f[3]), 0) / 1000
      end
      fact({type = 'call.ended', call_sid = ev.sid, talk_s = talk_s})
      if f[4] then unpop(f[4], ev.sid) end
      redis.call('ZREM', k_waiting(f[1]), ev.sid)
      finalize(ev.sid)
      emit_queue(f[1], f[2], minute)
    end
  else
    -- an agent's softphone leg ended: its call ends, wrap-up starts (presence rules decide)
    local agent = ev.agent or redis.call('HGET', lk, 'agent')
    if agent and redis.call('HSETNX', lk, 'end_ms', NOW) == 1 then
      result.counted = 1
      redis.call('HSETNX', lk, 'agent', agent)
      redis.call('PEXPIRE', lk, TTL)
      local f = redis.call('HMGET', lk, 'caller', 'outbound')
      if f[1] then
        apply(agent, {kind = 'call_end', actor = 'system', call = {call_sid = f[1]}})
        unpop(agent, f[1])
      elseif f[2] then
        apply(agent, {kind = 'call_end', actor = 'system', call = {call_sid = ev.sid}})
      end
    end
  end

elseif kind == 'agent_leg' then
  local lk = k_leg(ev.sid)
  redis.call('HSETNX', lk, 'agent', ev.agent)
  redis.call('PEXPIRE', lk, TTL)
  if ev.outbound and redis.call('HSETNX', lk, 'outbound', ev.outbound) == 1
      and redis.call('HEXISTS', lk, 'end_ms') == 0 then
    result.counted = 1
    apply(ev.agent, {kind = 'call_start', actor = 'system',
                     call = {call_sid = ev.sid, to = ev.outbound, direction = 'outbound', since_ms = NOW}})
  end
end

result.handled = HANDLED
return cmsgpack.pack(result)
"""

CALL_EVENT = build_script(CALL_EVENT_BODY, CALL_HANDLED_HOOK)

# QUEUE_TIME_PROBE — for tests: bounded_queue_time with the header's NOW, to prove it equals the Python.
#   ARGV: header, ARGV[6] given ms ('' = none), ARGV[7] enq ms ('' = none), ARGV[8] '1' when seen entering.
#   Returns {queue time ms or -1 when unknown, refusal reason or ''}.
QUEUE_TIME_PROBE = build_script("""
local qt, why = bounded_queue_time(tonumber(ARGV[6]), tonumber(ARGV[7]), ARGV[8] == '1')
return {qt or -1, why or ''}
""", CALL_HANDLED_HOOK)

# KEY_NAMES — for tests: returns the key names CF_LIB builds, to compare with callboard/keys.py.
#   ARGV: header, ARGV[6] sid, ARGV[7] queue, ARGV[8] day, ARGV[9] minute, ARGV[10] agent.
KEY_NAMES = build_script("""
return {k_call(ARGV[6]), k_leg(ARGV[6]), k_waiting(ARGV[7]), k_day(ARGV[7], ARGV[8]),
        k_min(ARGV[7], ARGV[9]), k_pop(ARGV[10])}
""", CALL_HANDLED_HOOK)
