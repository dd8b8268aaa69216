"""Lua for the call controls: every check-then-write of a control is one atomic script.

Built with presence.lua.build_script(body, CALL_HANDLED_HOOK), so the presence LIB (NOW, apply, emit,
load_rec) and callflow's CF_LIB (k_call, k_leg, k_pop, k_waiting, unpop) are in scope: a transfer moves the
call to the second agent, puts that agent on-call and pops its screen in the same call, and the facts for
the recorder are appended to cb:facts there too.

Call hash fields added by the controls (keys.call(CallSid), next to callflow's): claim (the agent leg that
claimed a waiting caller in conference mode), conf (ConferenceSid), hold_since (ms, while on hold), hold_ms
(total), xfer (JSON of a transfer in progress: to, warm, from, part), transfers (JSON list), agents
(JSON list of every agent who held the call), disposition, note, disp_by, monitor (supervisor participant
CallSid), wq (the queue a transferred caller waits in).
"""

from __future__ import annotations

from callboard import keys
from callflow.lua import CALL_HANDLED_HOOK
from presence.lua import build_script

# CONTROL — one control step.
#   KEYS: none.  ARGV: the presence header, then ARGV[6] = msgpack {op, sid, ...} (see softphone/store.py).
#   Returns msgpack {ok = true|false, code = reason when not ok, ...op results}.
CONTROL_BODY = """
local FACTS = '%(facts)s'
local op = cmsgpack.unpack(ARGV[6])
local sid = op.sid or ''
local ck = k_call(sid)
local out = {ok = false}

local function fact(kind, fields)
  fields.type = kind
  fields.at_ms = NOW
  fields.call_sid = sid
  redis.call('XADD', FACTS, '*', 'f', cjson.encode(fields))
end

local function notice(agent, msg)
  -- to one agent's softphone, through the change stream like every other push (never a side path)
  emit('notice', agent, msg)
end

local function agents_of(raw)
  if raw then return cjson.decode(raw) end
  return {}
end

local function add_agent(agent)
  local list = agents_of(redis.call('HGET', ck, 'agents'))
  for _, a in ipairs(list) do if a == agent then return end end
  list[#list + 1] = agent
  redis.call('HSET', ck, 'agents', cjson.encode(list))
end

-- Put `agent` on this caller, whose leg is `leg`: on-call, screen pop, owner of the call's wrap-up.
local function take_over(agent, leg)
  local prev = redis.call('HGET', ck, 'agent')
  if prev then add_agent(prev) end  -- every agent who held the call may record its wrap-up
  local f = redis.call('HMGET', ck, 'queue', 'from', 'to', 'qt_ms', 'ttl')
  local ttl = tonumber(f[5] or 0)
  if ttl <= 0 then ttl = 86400000 end
  redis.call('HSET', k_leg(leg), 'agent', agent, 'caller', sid)
  redis.call('PEXPIRE', k_leg(leg), ttl)
  redis.call('HSET', ck, 'agent', agent, 'leg', leg)
  add_agent(agent)
  apply(agent, {kind = 'call_start', actor = 'system', call = {call_sid = sid, queue = f[1], from = f[2], since_ms = NOW}})
  local pop = {type = 'pop', call_sid = sid, from = f[2], to = f[3], queue = f[1],
               waited_s = (tonumber(f[4]) or 0) / 1000, customers = {}}
  redis.call('SET', k_pop(agent), cmsgpack.pack(pop), 'PX', ttl)
  emit('pop', agent, pop)
end

local kind = op.op
if kind ~= 'claim' and redis.call('HEXISTS', ck, 'mode') == 0 then
  out.code = 'no_call'

elseif kind == 'claim' then
  -- conference mode, pull: the oldest waiting caller of the queue nobody has claimed yet
  out.code = 'none_waiting'
  local waiting = redis.call('ZRANGE', k_waiting(op.queue), 0, 99)
  for _, candidate in ipairs(waiting) do
    if redis.call('HSETNX', k_call(candidate), 'claim', op.leg) == 1 then
      out.ok, out.code, out.claimed = true, nil, candidate
      out.answered = redis.call('HEXISTS', k_call(candidate), 'ans') == 1
      break
    end
  end

elseif kind == 'unclaim' then
  if redis.call('HGET', ck, 'claim') == op.leg then redis.call('HDEL', ck, 'claim') end
  out.ok = true

elseif kind == 'took_again' then
  -- a caller that was transferred to a queue is taken by an agent: no second answer, a new holder
  local from_agent = redis.call('HGET', ck, 'agent')
  redis.call('HDEL', ck, 'claim', 'wq')
  redis.call('ZREM', k_waiting(op.queue), sid)
  take_over(op.agent, op.leg)
  emit_queue(op.queue, nil, nil)
  out.ok = true
  out.from = from_agent

elseif kind == 'hold' then
  if op.on then
    if redis.call('HSETNX', ck, 'hold_since', NOW) == 1 then
      fact('call.hold', {on = true})
      out.changed = true
    end
  else
    local since = redis.call('HGET', ck, 'hold_since')
    if since then
      redis.call('HDEL', ck, 'hold_since')
      redis.call('HINCRBY', ck, 'hold_ms', math.max(NOW - tonumber(since), 0))
      fact('call.hold', {on = false})
      out.changed = true
    end
  end
  out.ok = true
  out.hold_ms = tonumber(redis.call('HGET', ck, 'hold_ms') or 0)

elseif kind == 'disposition' then
  local mine = false
  for _, a in ipairs(agents_of(redis.call('HGET', ck, 'agents'))) do if a == op.agent then mine = true end end
  if redis.call('HGET', ck, 'agent') == op.agent then mine = true end
  if not mine then
    out.code = 'not_yours'
  else
    redis.call('HSET', ck, 'disposition', op.disposition, 'note', op.note, 'disp_by', op.agent)
    fact('call.disposition', {agent = op.agent, disposition = op.disposition, note = op.note})
    out.ok = true
  end

elseif kind == 'transfer_reserve' then
  local target = load_rec(op.to)
  if redis.call('HEXISTS', ck, 'end_ms') == 1 then
    out.code = 'call_ended'
  elseif target.state ~= 'available' or (target.connections or 0) == 0 then
    out.code = 'agent_busy'
    out.state = target.state
  elseif redis.call('HSETNX', ck, 'xfer', cjson.encode({to = op.to, warm = op.warm, from = op.from})) == 0 then
    out.code = 'transfer_pending'
  else
    out.ok = true
  end

elseif kind == 'transfer_ringing' then
  local raw = redis.call('HGET', ck, 'xfer')
  if raw then
    local x = cjson.decode(raw)
    x.part = op.part
    redis.call('HSET', ck, 'xfer', cjson.encode(x))
    out.ok = true
  end

elseif kind == 'transfer_cancel' then
  local raw = redis.call('HGET', ck, 'xfer')
  local x = raw and cjson.decode(raw)
  -- the participant's callbacks may overtake our own 'ringing' step: a transfer without a part yet is
  -- matched by its target agent
  if x and (op.part == nil or x.part == op.part or (x.part == nil and x.to == op.agent)) then
    redis.call('HDEL', ck, 'xfer')
    if x.from then notice(x.from, {type = 'transfer_failed', call_sid = sid, to = x.to, reason = op.reason}) end
    out.ok = true
  end

elseif kind == 'transfer_answered' then
  local raw = redis.call('HGET', ck, 'xfer')
  local x = raw and cjson.decode(raw)
  if not x or (x.part ~= nil and x.part ~= op.part) or x.to ~= op.agent or redis.call('HEXISTS', ck, 'end_ms') == 1 then
    out.code = 'stale'
  else
    local prev_agent, prev_leg = redis.call('HGET', ck, 'agent'), redis.call('HGET', ck, 'leg')
    redis.call('HDEL', ck, 'xfer')
    take_over(op.agent, op.part)
    local list = agents_of(redis.call('HGET', ck, 'transfers'))
    list[#list + 1] = {from = x.from, to = op.agent, at_ms = NOW, warm = x.warm}
    redis.call('HSET', ck, 'transfers', cjson.encode(list))
    fact('call.transfer', {from = x.from, to = op.agent, warm = x.warm})
    out.ok, out.prev_agent, out.prev_leg, out.warm = true, prev_agent, prev_leg, x.warm
  end

elseif kind == 'requeue' then
  if redis.call('HEXISTS', ck, 'end_ms') == 1 then
    out.code = 'call_ended'
  else
    local enq = tonumber(redis.call('HGET', ck, 'enq_ms') or NOW)
    redis.call('HDEL', ck, 'claim')
    redis.call('HSET', ck, 'wq', op.queue)
    -- the original enqueue time: the caller keeps its place among the waiting (FIFO by entered_ms)
    redis.call('ZADD', k_waiting(op.queue), enq, sid)
    local list = agents_of(redis.call('HGET', ck, 'transfers'))
    list[#list + 1] = {from = op.from, to = 'queue:' .. op.queue, at_ms = NOW, warm = false}
    redis.call('HSET', ck, 'transfers', cjson.encode(list))
    fact('call.transfer', {from = op.from, to = 'queue:' .. op.queue, warm = false})
    emit_queue(op.queue, nil, nil)
    out.ok = true
  end

elseif kind == 'left_requeue' then
  -- the transferred caller left the queue it waited in again (hung up there, or was taken)
  if redis.call('ZREM', k_waiting(op.queue), sid) == 1 then emit_queue(op.queue, nil, nil) end
  redis.call('HDEL', ck, 'wq')
  out.ok = true

elseif kind == 'monitor' then
  redis.call('HSET', ck, 'monitor', op.part or '', 'monitor_by', op.supervisor, 'monitor_mode', op.mode)
  fact('call.monitor', {supervisor = op.supervisor, mode = op.mode})
  local agent = redis.call('HGET', ck, 'agent')
  if agent then
    notice(agent, {type = 'monitor', call_sid = sid, supervisor = op.supervisor, mode = op.mode, active = true})
  end
  out.ok = true

elseif kind == 'monitor_end' then
  if redis.call('HGET', ck, 'monitor') == op.part then
    local by = redis.call('HGET', ck, 'monitor_by')
    redis.call('HDEL', ck, 'monitor', 'monitor_mode')
    local agent = redis.call('HGET', ck, 'agent')
    if agent then notice(agent, {type = 'monitor', call_sid = sid, supervisor = by, active = false}) end
    out.ok = true
  end

elseif kind == 'holder_leg' then
  -- an offered agent added as a participant answered: their leg is the holder's (for monitor and hang-up)
  if redis.call('HGET', ck, 'agent') == op.agent then
    redis.call('HSET', ck, 'leg', op.leg)
    add_agent(op.agent)
  end
  out.ok = true

elseif kind == 'conference' then
  -- the conference the caller is in now: a caller transferred to a queue and taken again is in a new one
  -- (same name, new ConferenceSid), so the latest join wins
  redis.call('HSET', ck, 'conf', op.conf)
  out.ok = true

else
  out.code = 'bad_op'
end
return cmsgpack.pack(out)
""" % {"facts": keys.facts()}

CONTROL = build_script(CONTROL_BODY, CALL_HANDLED_HOOK)
