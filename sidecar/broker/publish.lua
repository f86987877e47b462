-- sidecar: publish a batch of events (or none: just read the head), atomically.
--
-- KEYS[1]  the meta hash: epoch, seq (the last seq assigned), size (the history size)
-- KEYS[2]  the stream: one entry per event, ID "<seq>-0", field "d" = the envelope with seq
-- ARGV[1]  the epoch to create if there is none (random, chosen by the caller)
-- ARGV[2]  the history size to trim to and record; "" uses the recorded one
-- ARGV[3]  the history size to use when ARGV[2] is "" and none is recorded
-- ARGV[4..] encoded envelopes without seq, each a compact JSON object ending in "}"
--
-- Returns {epoch, last seq}: the events got seqs last-n+1 .. last, in ARGV order.
-- A missing epoch means Redis lost (or never had) this deployment's data: a new epoch
-- starts at seq 0 with an empty stream, so a seq is never reused within one epoch.

local meta, stream = KEYS[1], KEYS[2]

local epoch = redis.call('HGET', meta, 'epoch')
if not epoch then
  epoch = ARGV[1]
  redis.call('DEL', stream)
  redis.call('HSET', meta, 'epoch', epoch, 'seq', 0)
end

local size = ARGV[2]
if size == '' then
  size = redis.call('HGET', meta, 'size') or ARGV[3]
else
  redis.call('HSET', meta, 'size', size)
end

local n = #ARGV - 3
if n == 0 then
  return {epoch, tonumber(redis.call('HGET', meta, 'seq'))}
end

local last = redis.call('HINCRBY', meta, 'seq', n)
local first = last - n
for i = 1, n do
  local seq = first + i
  local envelope = ARGV[i + 3]
  local data = string.sub(envelope, 1, -2) .. string.format(',"seq":%d}', seq)
  redis.call('XADD', stream, string.format('%d-0', seq), 'd', data)
end
redis.call('XTRIM', stream, 'MAXLEN', '~', size)
return {epoch, last}
