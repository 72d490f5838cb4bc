-- Leases of one counted thing shared by the gateways (a server's slots, a key's requests in flight).
-- KEYS[1] is its leases: a sorted set of lease ids scored by when each expires (ms, Redis's clock).
-- ARGV[1] = 'take': ARGV[2] leases at most, ARGV[3] the lease's life (ms), ARGV[4] its id; drops the
--   expired leases, and takes one if fewer than that are held. Returns 1 (taken) or 0.
-- ARGV[1] = 'renew': ARGV[2] the life (ms), then the ids of leases still held; each that is still
--   there lives on (a lease that expired meanwhile is not taken back). Returns how many lived on.
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
if ARGV[1] == 'take' then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
  if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then
    return 0
  end
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[4])
  redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[3]) * 2)
  return 1
end
local renewed = 0
for i = 3, #ARGV do
  renewed = renewed + redis.call('ZADD', KEYS[1], 'XX', 'CH', now + tonumber(ARGV[2]), ARGV[i])
end
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]) * 2)
return renewed
