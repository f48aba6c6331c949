-- Circuit-breaker transitions, atomic per breaker (see storage.py: MemoryStorage is the same).
-- KEYS[1] state hash, KEYS[2] sliding-window hash (fields c:<bucket>, f:<bucket>).
-- ARGV: op, now, buckets, fail_max, failure_rate, window, min_calls, reset_timeout,
--       half_open_calls, events channel, pending successes, pending admissions, trial (record)
-- Publishes KEYS[1] on the events channel when the breaker starts failing (closed, first
-- failure) or opens, so processes drop their local admission leases (breaker.py).
local key, wkey = KEYS[1], KEYS[2]
local op, now, nbuckets = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local fail_max, rate, window = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local min_calls, reset_timeout, half_calls = tonumber(ARGV[7]), tonumber(ARGV[8]), tonumber(ARGV[9])
local channel, pending, leased = ARGV[10], tonumber(ARGV[11] or '0'), tonumber(ARGV[12] or '0')

local state = redis.call('HGET', key, 'state') or 'closed'
local previous = state

local function open_now()
  redis.call('HSET', key, 'state', 'open', 'opened_at', tostring(now), 'fails', 0)
  redis.call('DEL', wkey)
  redis.call('HINCRBY', key, 'n_opened', 1)
  redis.call('PUBLISH', channel, key)
  state = 'open'
end

-- Drop every bucket older than the window (not just the one just left behind: calls that
-- skip buckets would strand the others), so the hash holds at most 2 x (buckets + 1) fields
-- however long a busy breaker keeps refreshing its expiry. Deleted in chunks: a window grown
-- large before this pruning existed must not overflow unpack's stack.
local function prune_window(bucket)
  local stale = {}
  for _, field in ipairs(redis.call('HKEYS', wkey)) do
    local b = tonumber(string.sub(field, 3))
    if b == nil or b <= bucket - nbuckets then table.insert(stale, field) end
  end
  for s = 1, #stale, 1000 do
    redis.call('HDEL', wkey, unpack(stale, s, math.min(s + 999, #stale)))
  end
end

local function add_window(field, n)
  local bucket = math.floor(now / (window / nbuckets))
  prune_window(bucket)
  redis.call('HINCRBY', wkey, field .. bucket, n)
  redis.call('PEXPIRE', wkey, math.ceil(window * 1000) + 1000)
end

-- Successes (closed state) and lease admissions this process counted since its last call.
if pending > 0 then
  redis.call('HINCRBY', key, 'n_successes', pending)
  if state == 'closed' then add_window('c:', pending) end
end
if leased > 0 then redis.call('HINCRBY', key, 'n_allowed', leased) end

if op == 'acquire' then
  if state == 'open' then
    local retry_at = tonumber(redis.call('HGET', key, 'opened_at') or '0') + reset_timeout
    if now < retry_at then
      redis.call('HINCRBY', key, 'n_rejected', 1)
      return {0, 'open', 0, tostring(retry_at), previous}
    end
    redis.call('HSET', key, 'state', 'half_open', 'half_at', tostring(now), 'trials', 0, 'trial_ok', 0)
    state = 'half_open'
  end
  if state == 'half_open' then
    local half_at = tonumber(redis.call('HGET', key, 'half_at') or '0')
    if now >= half_at + reset_timeout then
      half_at = now  -- trials that never reported (their worker died): start a new round
      redis.call('HSET', key, 'half_at', tostring(now), 'trials', 0)
    end
    local trials = tonumber(redis.call('HGET', key, 'trials') or '0')
    if trials >= half_calls then
      redis.call('HINCRBY', key, 'n_rejected', 1)
      return {0, 'half_open', 0, tostring(half_at + reset_timeout), previous}
    end
    redis.call('HINCRBY', key, 'trials', 1)
    redis.call('HINCRBY', key, 'n_allowed', 1)
    return {1, 'half_open', 1, '0', previous}
  end
  redis.call('HINCRBY', key, 'n_allowed', 1)
  return {1, 'closed', 0, '0', previous, tonumber(redis.call('HGET', key, 'fails') or '0')}
end

local success = (op == 'success')
local trial = tonumber(ARGV[13] or '0') == 1
redis.call('HINCRBY', key, success and 'n_successes' or 'n_failures', 1)
if state == 'half_open' then
  if not success then
    open_now()
  elseif trial then
    if redis.call('HINCRBY', key, 'trial_ok', 1) >= half_calls then
      redis.call('HSET', key, 'state', 'closed', 'fails', 0)
      redis.call('DEL', wkey)
      state = 'closed'
    end
  end
elseif state == 'closed' then
  local width = window / nbuckets
  local bucket = math.floor(now / width)
  prune_window(bucket)
  redis.call('HINCRBY', wkey, 'c:' .. bucket, 1)
  redis.call('PEXPIRE', wkey, math.ceil(window * 1000) + 1000)
  if success then
    if redis.call('HGET', key, 'fails') ~= '0' then redis.call('HSET', key, 'fails', 0) end
  else
    redis.call('HINCRBY', wkey, 'f:' .. bucket, 1)
    local fails = redis.call('HINCRBY', key, 'fails', 1)
    local fields = {}
    for b = bucket - nbuckets + 1, bucket do
      table.insert(fields, 'c:' .. b)
      table.insert(fields, 'f:' .. b)
    end
    local values = redis.call('HMGET', wkey, unpack(fields))
    local calls, failed = 0, 0
    for i = 1, #values, 2 do
      calls = calls + tonumber(values[i] or '0')
      failed = failed + tonumber(values[i + 1] or '0')
    end
    if fails >= fail_max or (calls >= min_calls and failed >= rate * calls) then
      open_now()
    elseif fails == 1 then
      redis.call('PUBLISH', channel, key)  -- started failing: leases end fleet-wide
    end
  end
end
return {previous, state}
