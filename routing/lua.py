"""Lua for offers: every check-then-write of routing is one script, so offers stay exclusive across instances.

Scripts are built with presence.lua.build_script(body, CALL_HANDLED_HOOK), so presence's LIB (NOW, DAY,
PREFIX, emit, load_rec, apply) is in scope: an agent set away for missed offers goes through the same
presence rules and change stream as any other transition, in the same atomic call.

Offer hash (keys.offer(id)) fields: call, agent, queue, state (open | accepting | connecting), created_ms,
due_ms, entered_ms, msg (the `offer` entry's payload, msgpack, for a resync); a transfer to an agent
(softphone/lua.py `transfer_offer`) adds kind = transfer, from (the first agent) and warm, and holds only
OFFER_AGENTS (its caller is in a conference, not waiting: the call hash's `xfer` is its per-call lock). Reservations: OFFER_AGENTS (agent -> offer id) and OFFER_CALLS (CallSid -> offer id);
an offer holds both from creation until it ends, so an agent has at most one offer and a caller is offered
to one agent at a time. OFFER_DUE orders offers by when they must be looked at again: an open offer at its
expiry, an accepted one at its connect deadline (an instance that died mid-dequeue cannot strand anyone).

Change-stream entries (the follower delivers them to the agent's sockets, like a screen pop):
`offer` (id = agent, payload = the offer message, customers as `customers_json`) and `offer_ended`
(payload {type, offer_id, call_sid, reason, missed_offers}). Facts (keys.facts(), field f = JSON):
offer.created, offer.ended, call.requeued.
"""

from __future__ import annotations

from callboard import keys
from callflow.lua import CALL_HANDLED_HOOK
from presence.lua import build_script

ROUTING_LIB = """
local OFFER_AGENTS = '%(offer_agents)s'
local OFFER_CALLS = '%(offer_calls)s'
local OFFER_DUE = '%(offer_due)s'
local OFFER_SEQ = '%(offer_seq)s'
local MISSED_ROW = '%(missed_row)s'
local FACTS = '%(facts)s'
local TWO_DAYS_MS = 2 * 86400000

local function k_offer(id) return PREFIX .. 'offer:' .. id end
local function k_missed(day) return PREFIX .. 'offers:missed:' .. day end
local function k_nocalls(agent) return PREFIX .. 'nocalls:' .. agent end
local function k_waiting_q(q) return PREFIX .. 'q:' .. q .. ':waiting' end
local function k_caller(sid) return PREFIX .. 'caller:' .. sid end
local function k_call_h(sid) return PREFIX .. 'call:' .. sid end
local function k_declined(sid) return PREFIX .. 'offers:declined:' .. sid end

local function fact(t)
  t.at_ms = NOW
  redis.call('XADD', FACTS, '*', 'f', cjson.encode(t))
end

local function load_offer(id)
  local flat = redis.call('HGETALL', k_offer(id))
  if #flat == 0 then return nil end
  local o = {id = id}
  for i = 1, #flat, 2 do o[flat[i]] = flat[i + 1] end
  return o
end

-- Can this agent take a call on at least one connection? Connections that said they cannot are listed
-- in nocalls (conn id -> instance), written before the connection registers and removed after it leaves,
-- so the count errs towards "cannot"; entries of an instance whose lease is gone are pruned here.
local function takes_calls(agent, rec)
  local k = k_nocalls(agent)
  local flat = redis.call('HGETALL', k)
  local cannot = 0
  for i = 1, #flat, 2 do
    if redis.call('ZSCORE', INSTANCES, flat[i + 1]) then
      cannot = cannot + 1
    else
      redis.call('HDEL', k, flat[i])
    end
  end
  return rec.connections > cannot
end

local function offerable(agent)
  if redis.call('HEXISTS', OFFER_AGENTS, agent) == 1 then return nil end
  local rec = load_rec(agent)
  if rec.state ~= 'available' or (rec.connections or 0) < 1 then return nil end
  if not takes_calls(agent, rec) then return nil end
  return rec
end

-- Still waiting: in the waiting set and has not left the queue nor hung up.
local function still_waiting(sid, queue)
  if not redis.call('ZSCORE', k_waiting_q(queue), sid) then return false end
  local f = redis.call('HMGET', k_call_h(sid), 'left', 'end_ms')
  return not f[1] and not f[2]
end

local function missed_today(agent)
  return tonumber(redis.call('HGET', k_missed(DAY), agent) or 0)
end

-- End an offer: drop it and its reservations, tell the agent, record the fact.
local function end_offer(o, reason, result, tell)
  redis.call('DEL', k_offer(o.id))
  if redis.call('HGET', OFFER_AGENTS, o.agent) == o.id then redis.call('HDEL', OFFER_AGENTS, o.agent) end
  if redis.call('HGET', OFFER_CALLS, o.call) == o.id then redis.call('HDEL', OFFER_CALLS, o.call) end
  redis.call('ZREM', OFFER_DUE, o.id)
  if tell then
    emit('offer_ended', o.agent, {type = 'offer_ended', offer_id = o.id, call_sid = o.call, reason = reason,
                                 missed_offers = missed_today(o.agent)})
  end
  if result == 'rejected' or result == 'missed' then
    -- this agent goes to the end of this caller's candidates (still offered when nobody else is there)
    redis.call('SADD', k_declined(o.call), o.agent)
    redis.call('PEXPIRE', k_declined(o.call), 3600000)
  end
  if result then
    fact({type = 'offer.ended', call_sid = o.call, offer_id = o.id, agent = o.agent, result = result,
          reason = reason, kind = o.kind})  -- kind: 'transfer' for a transfer offer, absent for a routed one
  end
end

-- Missed: the agent's missed-in-a-row and today's count go up; at missed_to_away the agent is set away.
local function count_missed(o)
  redis.call('HINCRBY', k_missed(DAY), o.agent, 1)
  redis.call('PEXPIRE', k_missed(DAY), TWO_DAYS_MS)
  return redis.call('HINCRBY', MISSED_ROW, o.agent, 1)
end

local function away_if_missed(o, row, missed_to_away)
  if missed_to_away > 0 and row >= missed_to_away then
    redis.call('HSET', MISSED_ROW, o.agent, 0)
    apply(o.agent, {kind = 'set', actor = 'system', state = 'away', reason = 'missed offers'})
  end
end

-- A transfer offer (kind = transfer) ended without the target taking the call: the call's transfer state
-- (the call hash's xfer, softphone/lua.py) goes in the same atomic call, so a transfer can never be both
-- answered and cancelled; the first agent hears why (transfer_failed); the caller never notices.
-- Returns true when the caller is now alone: the agent who held it left while the transfer was pending
-- (softphone's owner_left marked the call `orphan`), so the caller must be hung up, not left on hold music;
-- and, second, the target's participant call if one was created (the caller of a connect timeout ends it).
local function end_transfer(o, reason, result)
  end_offer(o, reason, result, true)
  local ck = k_call_h(o.call)
  local raw = redis.call('HGET', ck, 'xfer')
  local alone, part = false, nil
  if raw then
    local x = cjson.decode(raw)
    if x.offer == o.id then
      part = x.part
      redis.call('HDEL', ck, 'xfer')
      if x.from then
        -- the first agent reads `missed` where the target's own offer said `expired`
        emit('notice', x.from, {type = 'transfer_failed', call_sid = o.call, to = x.to, offer_id = o.id,
                                reason = reason == 'expired' and 'missed' or reason})
      end
      alone = redis.call('HEXISTS', ck, 'orphan') == 1 and redis.call('HEXISTS', ck, 'end_ms') == 0
    end
  end
  return alone, part
end
""" % {
    "offer_agents": keys.OFFER_AGENTS, "offer_calls": keys.OFFER_CALLS, "offer_due": keys.OFFER_DUE,
    "offer_seq": keys.OFFER_SEQ, "missed_row": keys.OFFER_MISSED_ROW, "facts": keys.facts(),
}

# ROUTE_TICK — one router tick: end what must end, then create offers for the proposals.
#   KEYS: none.  ARGV: the presence header, then ARGV[6] = msgpack settings {timeout_ms, connect_ms,
#   missed_to_away}, ARGV[7] = msgpack list of proposals {call, queue, cands = {agent ids, best first}}.
#   0. Transfer offers (kind = transfer, made by softphone/): caller hung up -> caller_left; open and the
#      target no longer offerable -> agent_unavailable; open past expiry -> expired (missed, as below);
#      accepted but not connected by the deadline -> connect_timeout (its participant call, if one was
#      created, is returned in `strays` for the router to end). Each also ends the call's `xfer` and tells
#      the first agent (transfer_failed). This part needs no proposals, so it runs in pull mode
#      too (the router there proposes nothing): expiry never depends on the instance that made the offer.
#   1. Open offers whose caller left -> caller_left (cancelled); whose agent is no longer offerable
#      (not available, no connection, cannot take calls) -> agent_unavailable (cancelled); past expiry ->
#      expired (missed): the agent's missed-in-a-row and today's count go up, and at missed_to_away the agent
#      is set away with reason "missed offers". Accepted offers whose caller hung up, or past their connect
#      deadline, are released.
#   2. Each proposal, in order: skipped unless the caller is still waiting with no offer; the first
#      candidate that is offerable gets the offer, agents who rejected or missed this caller last.
#   Returns msgpack {created = {{offer_id, call, agent, queue, entered_ms, since_ms}...},
#                    ended = {{queue, result}...}, orphans = {CallSids left alone by a failed transfer},
#                    strays = {{CallSid, participant CallSid} of transfers that timed out after ringing}}.
ROUTE_TICK_BODY = """
local cfg = cmsgpack.unpack(ARGV[6])
local proposals = cmsgpack.unpack(ARGV[7])
local created, ended, orphans, strays = {}, {}, {}, {}

local open = redis.call('HGETALL', OFFER_AGENTS)
for i = 1, #open, 2 do
  local o = load_offer(open[i + 1])
  if o == nil then
    redis.call('HDEL', OFFER_AGENTS, open[i])  -- an offer key that vanished (should not happen)
  elseif o.kind == 'transfer' then
    -- a transfer offer: its caller talks in a conference (not waiting); it ends when the caller hangs up,
    -- the target stops being offerable, it expires (missed), or an accepted one never connects in time
    local ended_as, alone = nil, false
    if redis.call('HEXISTS', k_call_h(o.call), 'end_ms') == 1 then
      end_transfer(o, 'caller_left', o.state ~= 'connecting' and 'cancelled' or nil)
      ended_as = 'cancelled'
    elseif o.state == 'open' then
      local rec = load_rec(o.agent)
      if rec.state ~= 'available' or (rec.connections or 0) < 1 or not takes_calls(o.agent, rec) then
        alone = end_transfer(o, 'agent_unavailable', 'cancelled')
        ended_as = 'cancelled'
      elseif tonumber(o.due_ms) <= NOW then
        local row = count_missed(o)
        alone = end_transfer(o, 'expired', 'missed')
        away_if_missed(o, row, cfg.missed_to_away)
        ended_as = 'missed'
      end
    elseif tonumber(o.due_ms) <= NOW then
      -- accepted, never connected in time. Its participant call may still ring, or may even have been
      -- answered with callboard never told (a status callback Twilio could not deliver): it is ended, so
      -- the target is never left in a call that is not theirs
      local part
      alone, part = end_transfer(o, 'connect_timeout', o.state == 'accepting' and 'cancelled' or nil)
      if part then strays[#strays + 1] = {o.call, part} end
      ended_as = 'cancelled'
    end
    if ended_as then ended[#ended + 1] = {o.queue, ended_as} end
    if alone then orphans[#orphans + 1] = o.call end
  elseif o.state == 'open' then
    if not still_waiting(o.call, o.queue) then
      end_offer(o, 'caller_left', 'cancelled', true)
      ended[#ended + 1] = {o.queue, 'cancelled'}
    else
      local rec = load_rec(o.agent)
      if rec.state ~= 'available' or (rec.connections or 0) < 1 or not takes_calls(o.agent, rec) then
        end_offer(o, 'agent_unavailable', 'cancelled', true)
        ended[#ended + 1] = {o.queue, 'cancelled'}
      elseif tonumber(o.due_ms) <= NOW then
        local row = count_missed(o)
        end_offer(o, 'expired', 'missed', true)
        ended[#ended + 1] = {o.queue, 'missed'}
        away_if_missed(o, row, cfg.missed_to_away)
      end
    end
  elseif redis.call('HEXISTS', k_call_h(o.call), 'end_ms') == 1 then
    -- accepted, and the caller hung up before the bridge: free the agent now, not at the deadline
    end_offer(o, 'caller_left', o.state == 'accepting' and 'cancelled' or nil, o.state == 'accepting')
    if o.state == 'accepting' then ended[#ended + 1] = {o.queue, 'cancelled'} end
  elseif tonumber(o.due_ms) <= NOW then
    -- accepted but never bridged nor failed in time (the instance doing the dequeue died): release
    end_offer(o, 'connect_timeout', o.state == 'accepting' and 'cancelled' or nil, o.state == 'accepting')
    if o.state == 'accepting' then ended[#ended + 1] = {o.queue, 'cancelled'} end
  end
end

for _, p in ipairs(proposals) do
  if redis.call('HEXISTS', OFFER_CALLS, p.call) == 0 and still_waiting(p.call, p.queue) then
    -- agents who rejected or missed this caller come last, in their order
    local cands, later = {}, {}
    for _, agent in ipairs(p.cands) do
      if redis.call('SISMEMBER', k_declined(p.call), agent) == 1 then later[#later + 1] = agent
      else cands[#cands + 1] = agent end
    end
    for _, agent in ipairs(later) do cands[#cands + 1] = agent end
    for _, agent in ipairs(cands) do
      local rec = offerable(agent)
      if rec then
        local id = 'of' .. redis.call('INCR', OFFER_SEQ)
        local entered = tonumber(redis.call('ZSCORE', k_waiting_q(p.queue), p.call))
        local due = NOW + cfg.timeout_ms
        redis.call('HSET', k_offer(id), 'call', p.call, 'agent', agent, 'queue', p.queue, 'state', 'open',
                   'created_ms', NOW, 'due_ms', due, 'entered_ms', entered)
        redis.call('PEXPIRE', k_offer(id), cfg.timeout_ms + cfg.connect_ms + 60000)
        redis.call('HSET', OFFER_AGENTS, agent, id)
        redis.call('HSET', OFFER_CALLS, p.call, id)
        redis.call('ZADD', OFFER_DUE, due, id)
        local from = redis.call('HGET', k_call_h(p.call), 'from') or ''
        local info = redis.call('GET', k_caller(p.call))
        local msg = {type = 'offer', offer_id = id, call_sid = p.call, queue = p.queue, from = from,
                     waited_s = math.max(NOW - entered, 0) / 1000, expires_ms = due, customers_json = info or ''}
        redis.call('HSET', k_offer(id), 'msg', cmsgpack.pack(msg))  -- for a mirror that resyncs
        emit('offer', agent, msg)
        fact({type = 'offer.created', call_sid = p.call, offer_id = id, agent = agent, queue = p.queue})
        created[#created + 1] = {id, p.call, agent, p.queue, entered, rec.since_ms or 0}
        break
      end
    end
  end
end
return cmsgpack.pack({created = created, ended = ended, orphans = orphans, strays = strays})
"""

# ANSWER — the agent's answer to an offer.
#   KEYS: none.  ARGV: header, ARGV[6] offer id, ARGV[7] agent id, ARGV[8] 'accept' | 'reject',
#   ARGV[9] connect deadline ms (accept only).
#   accept: an open offer of this agent becomes `accepting` (due at the connect deadline); the dequeue
#   follows outside Redis. reject: the offer ends `rejected`. Either resets the agent's missed-in-a-row.
#   A transfer offer (kind = transfer) rejected ends the call's transfer too (end_transfer); its accept is
#   followed by softphone/ adding the agent to the call's conference instead of a dequeue.
#   Returns {'ok', call, queue, kind, 'alone' | ''} ('alone': a rejected transfer left its caller alone) or
#   {'error', code} (no_offer: unknown, ended, or not this agent's).
ANSWER_BODY = """
local id, agent, answer = ARGV[6], ARGV[7], ARGV[8]
local o = load_offer(id)
if o == nil or o.agent ~= agent or o.state ~= 'open' then return {'error', 'no_offer'} end
local kind = o.kind or 'call'
if kind == 'transfer' and redis.call('HEXISTS', k_call_h(o.call), 'end_ms') == 1 then
  end_transfer(o, 'caller_left', 'cancelled')  -- the caller hung up a moment ago: nothing to accept
  return {'error', 'no_offer'}
end
redis.call('HSET', MISSED_ROW, agent, 0)
if answer == 'accept' then
  redis.call('HSET', k_offer(id), 'state', 'accepting', 'due_ms', ARGV[9])
  redis.call('ZADD', OFFER_DUE, ARGV[9], id)
  return {'ok', o.call, o.queue, kind, ''}
end
local alone = false
if kind == 'transfer' then alone = end_transfer(o, 'rejected', 'rejected') else end_offer(o, 'rejected', 'rejected', true) end
return {'ok', o.call, o.queue, kind, alone and 'alone' or ''}
"""

# DEQUEUED — the outcome of the REST dequeue of an accepted offer.
#   KEYS: none.  ARGV: header, ARGV[6] offer id, ARGV[7] 'ok' | 'failed', ARGV[8] reason (failed).
#   ok: the offer is `connecting` (reservations kept until the bridge or the dial-result) and ends
#   `accepted` for the agent and the facts. failed: it ends (cancelled, the reason given) and the caller,
#   still waiting in its queue, is offered again by the next tick.
#   Returns 1 if the offer was still accepting, else 0.
DEQUEUED_BODY = """
local id, outcome = ARGV[6], ARGV[7]
local o = load_offer(id)
if o == nil or o.state ~= 'accepting' then return 0 end
if outcome == 'ok' then
  redis.call('HSET', k_offer(id), 'state', 'connecting')
  -- out of Twilio's queue without a leaving: should the caller hang up before an agent answers, its end
  -- is its leaving (callflow counts the abandon at its status; no queue-result will come)
  if redis.call('EXISTS', k_call_h(o.call)) == 1 then redis.call('HSET', k_call_h(o.call), 'dq', 1) end
  emit('offer_ended', o.agent, {type = 'offer_ended', offer_id = id, call_sid = o.call, reason = 'accepted',
                               missed_offers = missed_today(o.agent)})
  fact({type = 'offer.ended', call_sid = o.call, offer_id = id, agent = o.agent, result = 'accepted',
        reason = 'accepted'})
else
  end_offer(o, ARGV[8], 'cancelled', true)
end
return 1
"""

# CONNECTED — Twilio's side of an accepted offer is over: the caller was bridged, or the dial to the
# agent did not connect and the caller went back to its queue.
#   KEYS: none.  ARGV: header, ARGV[6] offer id, ARGV[7] 'bridged' | 'requeued', ARGV[8] CallSid.
#   Releases the reservations (the caller keeps its place in the waiting set: entered_ms is untouched);
#   requeued also appends call.requeued. Returns 1 the first time, 0 after (Twilio may ask twice).
CONNECTED_BODY = """
local id, how, sid = ARGV[6], ARGV[7], ARGV[8]
local o = load_offer(id)
if o == nil or o.call ~= sid or o.state == 'open' then return 0 end
end_offer(o, how, nil, false)
if how == 'requeued' then
  redis.call('HDEL', k_call_h(o.call), 'dq')  -- back in Twilio's queue: its leaving comes as a queue-result again
  fact({type = 'call.requeued', call_sid = o.call, queue = o.queue})
end
return 1
"""

# NO_CALLS — a connection that cannot take offered calls (its hello said so) comes or goes.
#   KEYS: none.  ARGV: header, ARGV[6] agent, ARGV[7] conn id, ARGV[8] instance id or '' (gone).
NO_CALLS_BODY = """
if ARGV[8] ~= '' then redis.call('HSET', k_nocalls(ARGV[6]), ARGV[7], ARGV[8])
else redis.call('HDEL', k_nocalls(ARGV[6]), ARGV[7]) end
return 1
"""


def script(body: str) -> str:
    """presence LIB + the call hook + ROUTING_LIB + one body."""
    return build_script(ROUTING_LIB + body, CALL_HANDLED_HOOK)


ROUTE_TICK = script(ROUTE_TICK_BODY)
ANSWER = script(ANSWER_BODY)
DEQUEUED = script(DEQUEUED_BODY)
CONNECTED = script(CONNECTED_BODY)
NO_CALLS = script(NO_CALLS_BODY)
