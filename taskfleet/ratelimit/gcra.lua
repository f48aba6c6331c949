-- GCRA over several keys at once, with batch cost, slot booking, counters, and (at enqueue)
-- the publish of the jobs it admits, so a limited enqueue costs no extra round trip.
-- KEYS: n state keys (one per policy), the job's booked-slot key, the counters' index,
--       t counter hashes to bump, then the lists to push to (one per group of envelopes).
-- ARGV: now, cost, horizon, n, slot_ttl_grace, tally_ttl, tally_cap, name_allowed,
--       name_reserved, name_refused, late, t, then per state key: interval, tolerance;
--       then per push list: its envelope count, then its envelopes (pushed if admitted).
-- Returns {outcome, wait}: 0 allowed now; 1 reserved (its slot is `wait` s from now, booked
-- in the slot key); 2 refused (admissible with a booking in `wait` s); 3 allowed on a slot
-- booked earlier (nothing else is charged). A slot missed by more than `late` seconds is
-- dropped and the call checked afresh: running late jobs together would exceed the rate.
local now = tonumber(ARGV[1])
local cost = tonumber(ARGV[2])
local horizon = tonumber(ARGV[3])
local n = tonumber(ARGV[4])
local t = tonumber(ARGV[12])
local slot_key = KEYS[n + 1]
local index_key = KEYS[n + 2]

local function tally(field, amount)
  for i = n + 3, n + 2 + t do
    -- A hash seen for the first time (or again after it expired) joins the index.
    if redis.call('HINCRBY', KEYS[i], field, amount) == amount then
      redis.call('ZADD', index_key, now, KEYS[i])
      redis.call('ZREMRANGEBYRANK', index_key, 0, -tonumber(ARGV[7]) - 1)
      redis.call('EXPIRE', index_key, ARGV[6])
    end
    redis.call('EXPIRE', KEYS[i], ARGV[6])
  end
end

local function push()
  local at = 13 + 2 * n
  for i = n + 3 + t, #KEYS do
    local count = tonumber(ARGV[at])
    redis.call('LPUSH', KEYS[i], unpack(ARGV, at + 1, at + count))
    at = at + count + 1
  end
end

local function decide()
  if slot_key ~= '' then
    local slot = redis.call('GET', slot_key)
    if slot then
      redis.call('DEL', slot_key)
      if now <= tonumber(slot) + tonumber(ARGV[11]) then
        tally(ARGV[8], cost)
        return {3, '0'}
      end
    end
  end
  local at, tats = now, {}
  for i = 1, n do
    local interval = tonumber(ARGV[11 + 2 * i])
    local tolerance = tonumber(ARGV[12 + 2 * i])
    local tat = tonumber(redis.call('GET', KEYS[i]) or now)
    if tat < now then tat = now end
    tats[i] = tat
    local earliest = tat + (cost - 1) * interval - tolerance
    if earliest > at then at = earliest end
  end
  local wait = at - now
  if wait > horizon + 1e-6 then  -- float noise must not refuse a call that exactly fits
    tally(ARGV[10], cost)
    return {2, string.format('%.6f', wait - horizon)}
  end
  for i = 1, n do
    local new = math.max(tats[i], at) + cost * tonumber(ARGV[11 + 2 * i])
    redis.call('SET', KEYS[i], string.format('%.6f', new), 'PX', math.ceil((new - now) * 1000) + 1)
  end
  if wait <= 0 then
    tally(ARGV[8], cost)
    return {0, '0'}
  end
  if slot_key ~= '' then
    local ttl_ms = math.ceil((wait + tonumber(ARGV[5])) * 1000)
    redis.call('SET', slot_key, string.format('%.6f', at), 'PX', ttl_ms)
  end
  tally(ARGV[9], cost)
  return {1, string.format('%.6f', wait)}
end

local verdict = decide()
if verdict[1] ~= 2 then push() end
return verdict
