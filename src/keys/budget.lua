-- An API key's token budgets kept in Redis: the buckets of keys/budget.rs on Redis's clock.
-- KEYS[1..n] are its budgets, each a hash of `level` (tokens times milliseconds of its window) and
-- `at` (ms); KEYS[n+1], when given, is one reservation's marker. ARGV[1] is what to do, ARGV[2] is n,
-- then three numbers per budget: its limit (tokens per window), its window (ms) and the tokens to
-- take (below zero: to give back). A budget never written, or expired, is full.
--   reserve: take only if every budget has them, and write the marker (kept an hour);
--   settle:  take in any case, into debt if need be, and remove the marker;
--   cancel:  give back only if the marker is there (the reservation reached Redis), removing it.
-- Returns {0, i, ms} when budget i is short and has room again in ms (nothing taken), {2} when a
-- cancelled reservation never reached Redis, else {1, level...} with every budget's level after.
local mode, n = ARGV[1], tonumber(ARGV[2])
local marker = KEYS[n + 1]
if mode == 'cancel' and redis.call('DEL', marker) == 0 then
  return {2}
end
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local levels = {}
for i = 1, n do
  local limit, window, tokens = tonumber(ARGV[i * 3]), tonumber(ARGV[i * 3 + 1]), tonumber(ARGV[i * 3 + 2])
  local full = limit * window
  local held = redis.call('HMGET', KEYS[i], 'level', 'at')
  local level = full
  if held[1] then
    level = math.min(full, tonumber(held[1]) + math.max(0, now - tonumber(held[2])) * limit)
  end
  local need = tokens * window
  if mode == 'reserve' and level < need then
    return {0, i, math.ceil((need - level) / math.max(limit, 1))}
  end
  levels[i] = math.min(full, level - need)
end
local result = {1}
for i = 1, n do
  local limit, window = tonumber(ARGV[i * 3]), tonumber(ARGV[i * 3 + 1])
  local level = levels[i]
  redis.call('HSET', KEYS[i], 'level', string.format('%.0f', level), 'at', string.format('%.0f', now))
  -- Full again (so the same as absent) once the window and any debt have refilled.
  redis.call('PEXPIRE', KEYS[i], math.ceil((limit * window - level) / math.max(limit, 1)) + 1000)
  result[i + 1] = level
end
if marker and mode == 'reserve' then
  redis.call('SET', marker, 1, 'PX', 3600000)
elseif marker and mode == 'settle' then
  redis.call('DEL', marker)
end
return result
