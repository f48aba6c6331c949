-- Backlog and head age of queues, one round trip; the head watch is shared by the fleet.
-- KEYS: per queue, its `steps` priority sub-lists then its watch hash.
-- ARGV: now, steps, watch_ttl.
-- Returns per queue {messages waiting, seconds its longest-standing head has been the head}.
-- A head is told apart by a hash of its envelope's tail (its properties: delivery tag, id).
local now = tonumber(ARGV[1])
local steps = tonumber(ARGV[2])
local out = {}
for q = 0, #KEYS / (steps + 1) - 1 do
  local base = q * (steps + 1)
  local watch = KEYS[base + steps + 1]
  local total, age = 0, 0
  for s = 1, steps do
    local key = KEYS[base + s]
    local len = redis.call('LLEN', key)
    total = total + len
    local field, at_field = tostring(s), s .. ':at'
    if len > 0 then
      local id = redis.sha1hex(string.sub(redis.call('LINDEX', key, -1), -512))
      local seen = redis.call('HMGET', watch, field, at_field)
      local since = now
      if seen[1] == id then
        since = tonumber(seen[2])
      else
        redis.call('HSET', watch, field, id, at_field, string.format('%.3f', now))
      end
      if now - since > age then age = now - since end
    else
      redis.call('HDEL', watch, field, at_field)
    end
  end
  redis.call('EXPIRE', watch, ARGV[3])
  out[#out + 1] = total
  out[#out + 1] = string.format('%.3f', age)
end
return out
