-- nginx's limit_req for the shared zones of one request, atomically, on Redis's clock: the same
-- algorithm as policy/ratelimit.rs. KEYS[i] is a zone's key for the request; ARGV holds three numbers
-- per zone: its rate (milli-requests a second), its burst (milli-requests) and 1 for a dry run.
-- Each key is a hash of `excess` (milli-requests) and `last` (ms), expiring once its excess drained.
-- Returns {0, i, wait_ms} when zone i rejects (nothing is stored), else {1, excess...} with every
-- accepted zone's state stored (-1: a dry run's zone that would have rejected, left unstored).
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local states = {}
for i, key in ipairs(KEYS) do
  local rate = tonumber(ARGV[i * 3 - 2])
  local burst = tonumber(ARGV[i * 3 - 1])
  local held = redis.call('HMGET', key, 'excess', 'last')
  local excess, last = 0, now
  if held[1] then
    local before = tonumber(held[2])
    local elapsed = math.max(0, now - before)
    excess = math.max(0, tonumber(held[1]) + 1000 - math.floor(rate * elapsed / 1000))
    if elapsed == 0 then last = before end
  end
  if excess <= burst then
    states[i] = {excess, last, rate}
  elseif ARGV[i * 3] ~= '1' then
    return {0, i, math.ceil((excess - burst) * 1000 / rate)}
  end
end
local result = {1}
for i, key in ipairs(KEYS) do
  local state = states[i]
  if state then
    redis.call('HSET', key, 'excess', state[1], 'last', state[2])
    redis.call('PEXPIRE', key, math.ceil((state[1] + 1000) * 1000 / state[3]) + 1000)
    result[i + 1] = state[1]
  else
    result[i + 1] = -1
  end
end
return result
