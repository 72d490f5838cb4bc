-- An API key's token budgets kept in Redis: the buckets of keys/budget.rs on Redis's clock. KEYS[i]
-- is a budget, a hash of `level` (tokens times milliseconds of its window) and `at` (ms); ARGV holds
-- three numbers per budget: its limit (tokens per window), its window (ms) and the tokens to take
-- (below zero: to give back), then `reserve` (take only if every budget has them) or `settle` (take
-- in any case, into debt if need be). A budget never written, or expired, is full.
-- Returns {0, i, ms} when budget i is short and has room again in ms (nothing taken), else
-- {1, level...} with every budget's level after the take.
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local reserving = ARGV[#KEYS * 3 + 1] == 'reserve'
local levels = {}
for i, key in ipairs(KEYS) do
  local limit, window, tokens = tonumber(ARGV[i * 3 - 2]), tonumber(ARGV[i * 3 - 1]), tonumber(ARGV[i * 3])
  local full = limit * window
  local held = redis.call('HMGET', key, 'level', 'at')
  local level = full
  if held[1] then
    level = math.min(full, tonumber(held[1]) + math.max(0, now - tonumber(held[2])) * limit)
  end
  local need = tokens * window
  if reserving and level < need then
    return {0, i, math.ceil((need - level) / math.max(limit, 1))}
  end
  levels[i] = math.min(full, level - need)
end
local result = {1}
for i, key in ipairs(KEYS) do
  local limit, window = tonumber(ARGV[i * 3 - 2]), tonumber(ARGV[i * 3 - 1])
  local level = levels[i]
  redis.call('HSET', key, 'level', string.format('%.0f', level), 'at', string.format('%.0f', now))
  -- Full again (so the same as absent) once the window and any debt have refilled.
  redis.call('PEXPIRE', key, math.ceil((limit * window - level) / math.max(limit, 1)) + 1000)
  result[i + 1] = level
end
return result
