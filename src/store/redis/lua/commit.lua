-- The commit script (see `commit.rs` and the module doc of `store::redis`):
-- one call applies a batch of commits of one workspace, in order, each as
-- if alone (a refused commit writes nothing and does not stop the others),
-- and publishes each stored one as its own message.
-- KEYS: the fixed keys, all of one workspace (one hash tag):
--   1 users, 2 channels, 3 contacts, 4 conversations, 5 settings, 6 threads,
--   7 seqs, 8 commits, 9 activity, 10 marks, 11 messages; then each commit's
--   optional keys, in commit order. A commit sees KEYS 1-11 and its own
--   optional keys as 12, 13, … (the indices below).
-- ARGV: 1 publish command and bus channel (`PUBLISH sb:ws:W`, or
-- `SPUBLISH sb:{W}:bus` on a Redis Cluster), 2 number of commits, then per
-- commit: its number of optional keys, its number of arguments, and these
-- arguments (numbered A1, A2, …):
-- A1 change JSON, A2 sequenced conversation or "",
-- A3 index of its history key, A4 index of the idempotency key, A5 its TTL,
-- A6 the idempotency record's fields after `seq` (`"message":…,"fp":…`),
-- A7 history length, A8 "1" to clear the directory (replace import),
-- A9 index of a history key to drop, then quadruples (op, a, b, c):
-- - `hset` / `hdel` hash `a` field `b` (value `c`); `set` the settings to `c`;
-- - `expect`: precondition, hash `a` field `b` must equal `c`;
-- - `claim` (threads): precondition, the thread field `b` is free, already
--   `c`'s, or held by a conversation that no longer holds it (gone, closed,
--   moved); then set to `c`;
-- - `bind` (threads): the same without the precondition (left alone if held);
-- - `release` (threads): removes the thread field of the *stored*
--   conversation `b` if it names `b` (run before the conversation is rewritten);
-- - `hmax`: sets hash `a` field `b` to `c` (`""` = this commit's seq) if higher;
-- - `hseq`: sets hash `a` field `b` to this commit's seq followed by `c`;
-- - `hlatest`: sets hash `a` field `b` to conversation `c`'s latest seq (0 if none);
-- - `redact`: in the sequenced conversation's history, replaces the member
--   `b` (score `a`) by `c` (redacted by `domain::redact`, or given its
--   receipt by `domain::record_delivery`, in Rust) if it is still there;
-- - `forget`: with a replace import, the history key KEYS[a] of conversation
--   `b` is dropped; every conversation with a seq must be named (else {4});
-- - `outbox`: records a delivery of event `b` (fields `c`, JSON) in the
--   stream KEYS[a] if the sequenced conversation is a customer's on a channel
--   whose outbound settings subscribe to `b` (see `outbox_record`).
-- Returns one reply per commit, in order: {0, commit, seq}, {1, idempotency
-- record} for a duplicate, {2} when an `expect` failed, {3, holder, commit
-- counter} when a `claim` failed, or {4} when a replace import did not name
-- every history key (nothing written in all but the first case).
-- Publishes the stored commits' events (`{"n":…,"seq":…,"change":…}`, `n`
-- the workspace's commit counter after the commit), one message each, in
-- order: the format every version reads, so nodes of the previous version
-- follow a cluster being upgraded.
-- Redis refuses the whole script up front when out of memory; none of its
-- commands can fail on the data it writes (stored JSON is decoded under
-- `pcall`), so it never stops half-way.
local H = {
  users = KEYS[1], channels = KEYS[2], contacts = KEYS[3], conversations = KEYS[4],
  threads = KEYS[6], seqs = KEYS[7], activity = KEYS[9], marks = KEYS[10],
  messages = KEYS[11],
}
local settings, commits = KEYS[5], KEYS[8]
-- The Lua twin of `Conversation::open_thread` (with `keys::thread_field`):
-- the thread field a stored conversation routes, and whether it is open.
local function thread_of(raw)
  if not raw then return nil, false end
  local ok, c = pcall(cjson.decode, raw)
  if not ok or type(c) ~= 'table' or type(c.channel) ~= 'string' or type(c.thread) ~= 'string' then
    return nil, false
  end
  return string.len(c.channel) .. ':' .. c.channel .. c.thread, c.status ~= 'closed'
end
local function holds(id, field)
  local f, open = thread_of(redis.call('HGET', H.conversations, id))
  return open and f == field
end

-- The Lua twin of the checks of `domain::outbound::delivery_for`; the
-- stream entry holds the fields of `OutboxRecord` (see `redis/outbox.rs`).
local function outbox_record(conv, key, event, detail, seqs)
  local okc, c = pcall(cjson.decode, redis.call('HGET', H.conversations, conv) or '')
  if not okc or type(c) ~= 'table' or type(c.channel) ~= 'string' then return end
  if c.kind ~= nil and c.kind ~= 'customer' then return end
  local okh, ch = pcall(cjson.decode, redis.call('HGET', H.channels, c.channel) or '')
  if not okh or type(ch) ~= 'table' or type(ch.outbound) ~= 'table' then return end
  local events, on = ch.outbound.events, false
  if type(events) == 'table' then
    for _, e in ipairs(events) do if e == event then on = true end end
  else
    on = event == 'message.created'
  end
  if not on then return end
  local t = redis.call('TIME')
  local ts = string.format('%d', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))
  local fields = {'conversation', conv, 'channel', c.channel, 'seq', seqs, 'ts', ts,
    'type', event, 'detail', detail}
  if type(c.contact) == 'string' then
    fields[#fields + 1] = 'contact'; fields[#fields + 1] = c.contact
  end
  if type(c.thread) == 'string' then
    fields[#fields + 1] = 'thread'; fields[#fields + 1] = c.thread
  end
  redis.call('XADD', key, '*', unpack(fields))
end

-- The id of the message a history member holds, nil for other changes.
-- Members are written by this script (`{"seq":…,"change":{"op":…`), so
-- the pattern finds a message's id without decoding the member.
local function message_id_of(member)
  local id = string.match(member, '^{"seq":%d+,"change":{"op":"message","message":{"id":"([^"\\]*)"')
  if id then return id end
  if not string.find(member, '"op":"message"', 1, true) then return nil end
  local ok, e = pcall(cjson.decode, member)
  if ok and type(e) == 'table' and type(e.change) == 'table' and e.change.op == 'message'
      and type(e.change.message) == 'table' and type(e.change.message.id) == 'string' then
    return e.change.message.id
  end
  return nil
end

-- One commit: K its keys, A its arguments (see above). Returns its reply,
-- and its event when it was stored.
local function commit(K, A)
  local conv = A[2]
  local hist = tonumber(A[3])
  local idem = tonumber(A[4])
  local replace = A[8] == '1'
  local drop = tonumber(A[9])

  for i = 10, #A, 4 do
    local op = A[i]
    if op == 'expect' and redis.call('HGET', H[A[i + 1]], A[i + 2]) ~= A[i + 3] then
      return {2}
    elseif op == 'claim' then
      local cur = redis.call('HGET', H.threads, A[i + 2])
      if cur and cur ~= A[i + 3] and holds(cur, A[i + 2]) then
        return {3, cur, tonumber(redis.call('GET', commits) or '0')}
      end
    end
  end
  local forget = {}
  if replace then
    for i = 10, #A, 4 do
      if A[i] == 'forget' then forget[A[i + 2]] = K[tonumber(A[i + 1])] end
    end
    for _, c in ipairs(redis.call('HKEYS', H.seqs)) do
      if not forget[c] then return {4} end
    end
  end
  if idem > 0 then
    local prev = redis.call('GET', K[idem])
    if prev then return {1, prev} end
  end
  local seq = 0
  if conv ~= '' then seq = redis.call('HINCRBY', H.seqs, conv, 1) end
  local seqs = string.format('%d', seq)
  if replace then
    for _, k in pairs(forget) do redis.call('DEL', k) end
    redis.call('DEL', H.users, H.channels, H.contacts, H.conversations, H.threads, H.messages)
    local keep = {}
    for i = 10, #A, 4 do
      if A[i] == 'hset' and A[i + 1] == 'conversations' then keep[A[i + 2]] = true end
    end
    for _, c in ipairs(redis.call('HKEYS', H.activity)) do
      if not keep[c] then redis.call('HDEL', H.activity, c) end
    end
  end
  if drop > 0 then redis.call('DEL', K[drop]) end
  for i = 10, #A, 4 do
    local op = A[i]
    local h = H[A[i + 1]]
    if op == 'hset' then redis.call('HSET', h, A[i + 2], A[i + 3])
    elseif op == 'hdel' then redis.call('HDEL', h, A[i + 2])
    elseif op == 'set' then redis.call('SET', settings, A[i + 3])
    elseif op == 'claim' then redis.call('HSET', H.threads, A[i + 2], A[i + 3])
    elseif op == 'bind' then
      local cur = redis.call('HGET', H.threads, A[i + 2])
      if not cur or cur == A[i + 3] or not holds(cur, A[i + 2]) then
        redis.call('HSET', H.threads, A[i + 2], A[i + 3])
      end
    elseif op == 'release' then
      local f = thread_of(redis.call('HGET', H.conversations, A[i + 2]))
      if f and redis.call('HGET', H.threads, f) == A[i + 2] then redis.call('HDEL', H.threads, f) end
    elseif op == 'hmax' then
      local v = A[i + 3]
      if v == '' then v = seqs end
      local n = tonumber(v)
      if n and n > (tonumber(redis.call('HGET', h, A[i + 2]) or '') or -1) then
        redis.call('HSET', h, A[i + 2], v)
      end
    elseif op == 'hseq' then redis.call('HSET', h, A[i + 2], seqs .. A[i + 3])
    elseif op == 'hlatest' then
      redis.call('HSET', h, A[i + 2], redis.call('HGET', H.seqs, A[i + 3]) or '0')
    elseif op == 'redact' and hist > 0 then
      if redis.call('ZREM', K[hist], A[i + 2]) == 1 then
        redis.call('ZADD', K[hist], A[i + 1], A[i + 3])
      end
    elseif op == 'outbox' and conv ~= '' then
      outbox_record(conv, K[tonumber(A[i + 1])], A[i + 2], A[i + 3], seqs)
    end
  end
  if hist > 0 then
    local h = K[hist]
    redis.call('ZADD', h, seq, '{"seq":' .. seqs .. ',"change":' .. A[1] .. '}')
    local excess = redis.call('ZCARD', h) - tonumber(A[7])
    if excess > 0 then
      -- A message leaving history leaves the `messages` hash too (as in
      -- the memory store): it would otherwise grow with every message.
      local gone = redis.call('ZRANGE', h, 0, excess - 1, 'WITHSCORES')
      for j = 1, #gone, 2 do
        local id = message_id_of(gone[j])
        if id and redis.call('HGET', H.messages, id) == gone[j + 1] .. ' ' .. conv then
          redis.call('HDEL', H.messages, id)
        end
      end
      redis.call('ZREMRANGEBYRANK', h, 0, excess - 1)
    end
  end
  if idem > 0 then
    redis.call('SET', K[idem], '{"seq":' .. seqs .. ',' .. A[6] .. '}', 'EX', A[5])
  end
  local n = redis.call('INCR', commits)
  return {0, n, seq}, '{"n":' .. string.format('%d', n) .. ',"seq":' .. seqs .. ',"change":' .. A[1] .. '}'
end

local publish, channel = string.match(ARGV[1], '^(%u+) (.*)$')
local replies, events = {}, {}
local nk, na = 11, 2 -- the last KEYS and ARGV consumed
for c = 1, tonumber(ARGV[2]) do
  local kc, ac = tonumber(ARGV[na + 1]), tonumber(ARGV[na + 2])
  local K, A = {}, {}
  for j = 1, 11 do K[j] = KEYS[j] end
  for j = 1, kc do K[11 + j] = KEYS[nk + j] end
  for j = 1, ac do A[j] = ARGV[na + 2 + j] end
  nk, na = nk + kc, na + 2 + ac
  local reply, event = commit(K, A)
  replies[c] = reply
  if event then events[#events + 1] = event end
end
for _, event in ipairs(events) do
  redis.call(publish, channel, event)
end
return replies
