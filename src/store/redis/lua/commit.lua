-- The commit script (see `commit.rs` and the module doc of `store::redis`).
-- Every key comes in KEYS, all of one workspace (one hash tag):
--   1 users, 2 channels, 3 contacts, 4 conversations, 5 settings, 6 threads,
--   7 seqs, 8 commits, 9 activity, 10 marks, 11 messages, then the optional keys named by
--   index below (0 = none).
-- ARGV: 1 publish command and bus channel (`PUBLISH sb:ws:W`, or
-- `SPUBLISH sb:{W}:bus` on a Redis Cluster), 2 change JSON, 3 sequenced conversation or "",
-- 4 index of its history key, 5 index of the idempotency key, 6 its TTL,
-- 7 the idempotency record's fields after `seq` (`"message":…,"fp":…`),
-- 8 history length, 9 "1" to clear the directory (replace import),
-- 10 index of a history key to drop, then quadruples (op, a, b, c):
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
-- Returns {0, commit, seq}, {1, idempotency record} for a duplicate, {2}
-- when an `expect` failed, {3, holder, commit counter} when a `claim` failed,
-- or {4} when a replace import did not name every history key (nothing
-- written in all but the first case).
-- Redis refuses the whole script up front when out of memory; none of its
-- commands can fail on the data it writes (stored JSON is decoded under
-- `pcall`), so it never stops half-way.
local H = {
  users = KEYS[1], channels = KEYS[2], contacts = KEYS[3], conversations = KEYS[4],
  threads = KEYS[6], seqs = KEYS[7], activity = KEYS[9], marks = KEYS[10],
  messages = KEYS[11],
}
local settings, commits = KEYS[5], KEYS[8]
local conv = ARGV[3]
local hist = tonumber(ARGV[4])
local idem = tonumber(ARGV[5])
local replace = ARGV[9] == '1'
local drop = tonumber(ARGV[10])

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
local function outbox_record(key, event, detail, seqs)
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

for i = 11, #ARGV, 4 do
  local op = ARGV[i]
  if op == 'expect' and redis.call('HGET', H[ARGV[i + 1]], ARGV[i + 2]) ~= ARGV[i + 3] then
    return {2}
  elseif op == 'claim' then
    local cur = redis.call('HGET', H.threads, ARGV[i + 2])
    if cur and cur ~= ARGV[i + 3] and holds(cur, ARGV[i + 2]) then
      return {3, cur, tonumber(redis.call('GET', commits) or '0')}
    end
  end
end
local forget = {}
if replace then
  for i = 11, #ARGV, 4 do
    if ARGV[i] == 'forget' then forget[ARGV[i + 2]] = KEYS[tonumber(ARGV[i + 1])] end
  end
  for _, c in ipairs(redis.call('HKEYS', H.seqs)) do
    if not forget[c] then return {4} end
  end
end
if idem > 0 then
  local prev = redis.call('GET', KEYS[idem])
  if prev then return {1, prev} end
end
local seq = 0
if conv ~= '' then seq = redis.call('HINCRBY', H.seqs, conv, 1) end
local seqs = string.format('%d', seq)
if replace then
  for _, k in pairs(forget) do redis.call('DEL', k) end
  redis.call('DEL', H.users, H.channels, H.contacts, H.conversations, H.threads, H.messages)
  local keep = {}
  for i = 11, #ARGV, 4 do
    if ARGV[i] == 'hset' and ARGV[i + 1] == 'conversations' then keep[ARGV[i + 2]] = true end
  end
  for _, c in ipairs(redis.call('HKEYS', H.activity)) do
    if not keep[c] then redis.call('HDEL', H.activity, c) end
  end
end
if drop > 0 then redis.call('DEL', KEYS[drop]) end
for i = 11, #ARGV, 4 do
  local op = ARGV[i]
  local h = H[ARGV[i + 1]]
  if op == 'hset' then redis.call('HSET', h, ARGV[i + 2], ARGV[i + 3])
  elseif op == 'hdel' then redis.call('HDEL', h, ARGV[i + 2])
  elseif op == 'set' then redis.call('SET', settings, ARGV[i + 3])
  elseif op == 'claim' then redis.call('HSET', H.threads, ARGV[i + 2], ARGV[i + 3])
  elseif op == 'bind' then
    local cur = redis.call('HGET', H.threads, ARGV[i + 2])
    if not cur or cur == ARGV[i + 3] or not holds(cur, ARGV[i + 2]) then
      redis.call('HSET', H.threads, ARGV[i + 2], ARGV[i + 3])
    end
  elseif op == 'release' then
    local f = thread_of(redis.call('HGET', H.conversations, ARGV[i + 2]))
    if f and redis.call('HGET', H.threads, f) == ARGV[i + 2] then redis.call('HDEL', H.threads, f) end
  elseif op == 'hmax' then
    local v = ARGV[i + 3]
    if v == '' then v = seqs end
    local n = tonumber(v)
    if n and n > (tonumber(redis.call('HGET', h, ARGV[i + 2]) or '') or -1) then
      redis.call('HSET', h, ARGV[i + 2], v)
    end
  elseif op == 'hseq' then redis.call('HSET', h, ARGV[i + 2], seqs .. ARGV[i + 3])
  elseif op == 'hlatest' then
    redis.call('HSET', h, ARGV[i + 2], redis.call('HGET', H.seqs, ARGV[i + 3]) or '0')
  elseif op == 'redact' and hist > 0 then
    if redis.call('ZREM', KEYS[hist], ARGV[i + 2]) == 1 then
      redis.call('ZADD', KEYS[hist], ARGV[i + 1], ARGV[i + 3])
    end
  elseif op == 'outbox' and conv ~= '' then
    outbox_record(KEYS[tonumber(ARGV[i + 1])], ARGV[i + 2], ARGV[i + 3], seqs)
  end
end
if hist > 0 then
  local h = KEYS[hist]
  redis.call('ZADD', h, seq, '{"seq":' .. seqs .. ',"change":' .. ARGV[2] .. '}')
  local excess = redis.call('ZCARD', h) - tonumber(ARGV[8])
  if excess > 0 then redis.call('ZREMRANGEBYRANK', h, 0, excess - 1) end
end
if idem > 0 then
  redis.call('SET', KEYS[idem], '{"seq":' .. seqs .. ',' .. ARGV[7] .. '}', 'EX', ARGV[6])
end
local n = redis.call('INCR', commits)
local publish, channel = string.match(ARGV[1], '^(%u+) (.*)$')
redis.call(publish, channel,
  '{"n":' .. string.format('%d', n) .. ',"seq":' .. seqs .. ',"change":' .. ARGV[2] .. '}')
return {0, n, seq}
