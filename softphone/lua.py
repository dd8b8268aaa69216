"""Lua for the call controls: every check-then-write of a control is one atomic script.

Built with presence.lua.build_script(body, CALL_HANDLED_HOOK), so the presence LIB (NOW, apply, emit,
load_rec) and callflow's CF_LIB (k_call, k_leg, k_pop, k_waiting, unpop) are in scope: a transfer moves the
call to the second agent, puts that agent on-call and pops its screen in the same call, and the facts for
the recorder are appended to cb:facts there too.

Call hash fields added by the controls (keys.call(CallSid), next to callflow's): claim (the agent leg that
claimed a waiting caller in conference mode), conf (ConferenceSid), hold_since (ms, while on hold), hold_ms
(total), xfer (JSON of a transfer to an agent in progress: to, warm, from, offer (its routing offer id),
base (the public URL its callbacks use), part (the participant, once the offer is accepted)), transfers (JSON list), agents
(JSON list of every agent who held the call), disposition, note, disp_by, monitor (supervisor participant
CallSid), wq (the queue a transferred caller waits in), orphan (the holder's leg, when it left while a transfer
to an agent was pending: if that transfer fails, the caller is hung up).
"""

from __future__ import annotations

from callflow.lua import CALL_HANDLED_HOOK
from presence.lua import build_script
from routing.lua import ROUTING_LIB

# CONTROL — one control step.
#   KEYS: none.  ARGV: the presence header, then ARGV[6] = msgpack {op, sid, ...} (see softphone/store.py).
#   Returns msgpack {ok = true|false, code = reason when not ok, ...op results}.
CONTROL_BODY = """
local op = cmsgpack.unpack(ARGV[6])
local sid = op.sid or ''
local ck = k_call(sid)
local out = {ok = false}

local function fact(kind, fields)
  fields.type = kind
  fields.at_ms = NOW
  fields.call_sid = sid
  redis.call('XADD', FACTS, '*', 'f', cjson.encode(fields))  -- FACTS: from ROUTING_LIB
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

elseif kind == 'transfer_offer' then
  -- a transfer to an agent is an offer (routing's offer hash, OFFER_AGENTS, OFFER_DUE, the `offer` entry):
  -- checked and made here, with the call's xfer, in one atomic step
  local target = load_rec(op.to)
  if redis.call('HEXISTS', ck, 'end_ms') == 1 then
    out.code = 'call_ended'
  elseif redis.call('HEXISTS', ck, 'wq') == 1 then
    out.code = 'call_queued'
  elseif redis.call('HEXISTS', ck, 'xfer') == 1 then
    out.code = 'transfer_pending'
  elseif redis.call('HEXISTS', OFFER_AGENTS, op.to) == 1 then
    out.code = 'agent_ringing'
  elseif target.state ~= 'available' or (target.connections or 0) < 1 then
    out.code = 'agent_busy'
    out.state = target.state
  elseif not takes_calls(op.to, target) then
    out.code = 'no_softphone'
  else
    local id = 'of' .. redis.call('INCR', OFFER_SEQ)
    local due = NOW + op.timeout_ms
    local f = redis.call('HMGET', ck, 'queue', 'from', 'enq_ms')
    local queue = f[1] or ''
    redis.call('HSET', k_offer(id), 'call', sid, 'agent', op.to, 'queue', queue, 'state', 'open', 'kind', 'transfer',
               'from', op.from, 'warm', op.warm and '1' or '0', 'created_ms', NOW, 'due_ms', due,
               'entered_ms', f[3] or NOW)
    redis.call('PEXPIRE', k_offer(id), op.timeout_ms + op.connect_ms + 60000)
    redis.call('HSET', OFFER_AGENTS, op.to, id)
    redis.call('ZADD', OFFER_DUE, due, id)
    redis.call('HSET', ck, 'xfer', cjson.encode({to = op.to, warm = op.warm, from = op.from, offer = id,
                                                 base = op.base}))
    local msg = {type = 'offer', kind = 'transfer', offer_id = id, call_sid = sid, queue = queue,
                 from = f[2] or '', from_agent = op.from, warm = op.warm,
                 waited_s = math.max(NOW - tonumber(f[3] or NOW), 0) / 1000, expires_ms = due,
                 customers_json = redis.call('GET', k_caller(sid)) or ''}
    redis.call('HSET', k_offer(id), 'msg', cmsgpack.pack(msg))  -- for a mirror that resyncs
    emit('offer', op.to, msg)
    fact('offer.created', {offer_id = id, agent = op.to, queue = queue, kind = 'transfer', from = op.from})
    out.ok, out.offer_id, out.expires_ms = true, id, due
  end

elseif kind == 'transfer_connecting' then
  -- the accepted transfer's participant was created: the offer ends `accepted` for the agent and the facts
  -- (reservations kept until the participant answers or fails)
  local raw = redis.call('HGET', ck, 'xfer')
  local x = raw and cjson.decode(raw)
  local o = load_offer(op.offer)
  if x and x.offer == op.offer and o and o.state == 'accepting' then
    redis.call('HSET', k_offer(o.id), 'state', 'connecting')
    x.part = op.part
    redis.call('HSET', ck, 'xfer', cjson.encode(x))
    emit('offer_ended', o.agent, {type = 'offer_ended', offer_id = o.id, call_sid = sid, reason = 'accepted',
                                 missed_offers = missed_today(o.agent)})
    fact('offer.ended', {offer_id = o.id, agent = o.agent, result = 'accepted', reason = 'accepted', kind = 'transfer'})
    out.ok = true
  else
    out.code = 'stale'
  end

elseif kind == 'transfer_cancel' then
  -- the transfer's participant ended unanswered, or Twilio refused to create it
  local raw = redis.call('HGET', ck, 'xfer')
  local x = raw and cjson.decode(raw)
  local o = load_offer(op.offer or '')
  if x and x.offer == op.offer and o then
    local reason = op.reason
    if redis.call('HEXISTS', ck, 'end_ms') == 1 then reason = 'caller_left' end
    out.alone = end_transfer(o, reason, o.state ~= 'connecting' and 'cancelled' or nil)
    out.ok, out.reason = true, reason
  end

elseif kind == 'owner_left' then
  -- the holder's leg left the conference: with a transfer pending the caller waits for it (marked
  -- `orphan`, so a transfer that then fails hangs the caller up: end_transfer); else the caller is alone now
  local f = redis.call('HMGET', ck, 'end_ms', 'wq', 'leg')
  if f[1] or f[2] or op.leg ~= f[3] or op.leg == sid then
    out.action = 'none'
  elseif redis.call('HEXISTS', ck, 'xfer') == 1 then
    redis.call('HSET', ck, 'orphan', op.leg)
    out.action = 'wait'
  else
    out.action = 'complete'
  end
  out.ok = true

elseif kind == 'transfer_answered' then
  local raw = redis.call('HGET', ck, 'xfer')
  local x = raw and cjson.decode(raw)
  if not x or x.offer ~= op.offer or x.to ~= op.agent or redis.call('HEXISTS', ck, 'end_ms') == 1 then
    out.code = 'stale'
  else
    local prev_agent, prev_leg = redis.call('HGET', ck, 'agent'), redis.call('HGET', ck, 'leg')
    redis.call('HDEL', ck, 'xfer', 'orphan')
    local o = load_offer(op.offer)
    if o then end_offer(o, 'bridged', nil, false) end  -- released: the offer's reservations go with the answer
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
"""

# routing's LIB is in scope: a transfer to an agent is one of its offers (end_offer, end_transfer, takes_calls)
CONTROL = build_script(ROUTING_LIB + CONTROL_BODY, CALL_HANDLED_HOOK)
