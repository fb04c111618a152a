-- One step of `assign::rotate` on the list KEYS[1]. ARGV: pool size, the
-- pool in order, then the eligible agents. Returns the chosen agent or nil.
local np = tonumber(ARGV[1])
local inpool, elig, seen, out = {}, {}, {}, {}
for i = 2, np + 1 do inpool[ARGV[i]] = true end
for i = np + 2, #ARGV do elig[ARGV[i]] = true end
for _, id in ipairs(redis.call('LRANGE', KEYS[1], 0, -1)) do
  if inpool[id] and not seen[id] then out[#out + 1] = id; seen[id] = true end
end
for i = 2, np + 1 do
  if not seen[ARGV[i]] then out[#out + 1] = ARGV[i]; seen[ARGV[i]] = true end
end
local chosen = false
for i, id in ipairs(out) do
  if elig[id] then chosen = table.remove(out, i); out[#out + 1] = chosen; break end
end
redis.call('DEL', KEYS[1])
for i = 1, #out, 1000 do
  redis.call('RPUSH', KEYS[1], unpack(out, i, math.min(i + 999, #out)))
end
return chosen
