-- sidecar: publish a batch of events (or none: just read the head), atomically, at most once
-- per idempotency key.
--
-- KEYS[1]  the meta hash: epoch, seq (the last seq assigned), size (the history size)
-- KEYS[2]  the stream: one entry per event, ID "<seq>-0", field "d" = the envelope with seq
-- KEYS[3]  with an idempotency key only: the key's record, "<epoch> <last seq> <count>"
-- ARGV[1]  the epoch to create if there is none (random, chosen by the caller)
-- ARGV[2]  the history size to trim to and record; "" uses the recorded one
-- ARGV[3]  the history size to use when ARGV[2] is "" and none is recorded
-- ARGV[4]  seconds the idempotency record is kept ("" without a key)
-- ARGV[5..] encoded envelopes without seq, each a compact JSON object ending in "}"
--
-- Returns {epoch, last seq, count, duplicate}: the events got seqs last-count+1 .. last, in
-- ARGV order. duplicate is 1 when an earlier publish with the same key answered instead:
-- nothing was published, and epoch, last and count are that publish's.
--
-- Redis does not roll back a script: a command that fails halfway leaves every write before
-- it. So the keys are checked before anything is written; the counter is raised only after
-- every XADD went in; an XADD that meets a foreign ID (at or above one of ours) starts a new
-- epoch, whose DEL takes what this script added with it; and the only other failure is the
-- first write refused for memory (Redis refuses a script's first write only), which leaves
-- nothing. A refused publish leaves no trace and uses up no seq.
--
-- The keys are anyone's to overwrite. What cannot be continued is treated like lost data: a
-- new epoch starts at seq 0 with an empty stream (clients resume and refetch), so that a seq
-- is never reused within one epoch and nothing foreign blocks publishing for good:
--   * no epoch, an epoch a client could not send back in `since`, a seq that is not a
--     decimal number below 10^15, or a meta key that is not a hash;
--   * a stream key that is not a stream;
--   * an entry someone appended beyond our last seq (an `XADD … *` has a millisecond ID far
--     above any seq): Redis would refuse every later "<seq>-0" as not above the stream's top.

local meta, stream, record = KEYS[1], KEYS[2], KEYS[3]
local n = #ARGV - 4

-- Idempotency (KEYS[3], ARGV[4]): separate from the numbering below.

local function recall()
  if not record then return nil end
  local seen = redis.pcall('GET', record)
  if type(seen) ~= 'string' then return nil end  -- none, or not a string: not ours
  local epoch, last, count = string.match(seen, '^(%S+) (%d+) (%d+)$')
  if not epoch then return nil end
  return {epoch, tonumber(last), tonumber(count), 1}
end

local function remember(epoch, last)
  if record then
    redis.call('SET', record, string.format('%s %d %d', epoch, last, n), 'EX', ARGV[4])
  end
end

-- Numbering.

local function head()
  local fields = redis.pcall('HMGET', meta, 'epoch', 'seq')
  if fields.err then return nil end  -- not a hash
  local epoch, seq = fields[1], fields[2]
  if not epoch or #epoch > 64 or not string.match(epoch, '^[%w_-]+$') then return nil end
  if not seq or #seq > 15 or not string.match(seq, '^%d+$') then return nil end
  return epoch, tonumber(seq)
end

local function fresh()
  if redis.call('TYPE', meta)['ok'] ~= 'hash' then redis.call('DEL', meta) end
  redis.call('DEL', stream)
  redis.call('HSET', meta, 'epoch', ARGV[1], 'seq', 0)
  return ARGV[1], 0
end

-- The size to trim to, and whether it is to be recorded (a hub's, when it is new).
local function history_size()
  local recorded = redis.call('HGET', meta, 'size')
  if ARGV[2] ~= '' then return ARGV[2], recorded ~= ARGV[2] end
  if recorded and #recorded <= 15 and string.match(recorded, '^[1-9]%d*$') then
    return recorded, false
  end
  return ARGV[3], false
end

-- Whether an entry we did not write sits at or above "<last + 1>-0".
local function blocked(last)
  local info = redis.pcall('XINFO', 'STREAM', stream)
  if info.err then return false end  -- no stream: nothing blocks
  for i = 1, #info, 2 do
    if info[i] == 'last-generated-id' then
      local ms = string.match(info[i + 1], '^(%d+)-')
      return #ms > 15 or tonumber(ms) > last
    end
  end
  return false
end

-- XADD the events as last+1 .. last+n; nil, or the first error and how many were added.
local function append(last)
  for i = 1, n do
    local seq = last + i
    local data = string.sub(ARGV[i + 4], 1, -2) .. string.format(',"seq":%d}', seq)
    local added = redis.pcall('XADD', stream, string.format('%d-0', seq), 'd', data)
    if type(added) == 'table' and added.err then return added, i - 1 end
  end
  return nil, n
end

local seen = recall()
if seen then return seen end

local epoch, last = head()
local kind = redis.call('TYPE', stream)['ok']
if not epoch or (kind ~= 'none' and kind ~= 'stream') then
  epoch, last = fresh()
end
local size, record_size = history_size()

if n > 0 then
  local failed, added = append(last)
  if failed then
    -- the first write refused (out of memory): nothing was written
    if added == 0 and not blocked(last) then return failed end
    -- a foreign ID at or above one of ours; the new epoch drops what was added too
    epoch, last = fresh()
    append(last)  -- an empty stream takes any ID
  end
  last = redis.call('HINCRBY', meta, 'seq', n)
end
if record_size then redis.call('HSET', meta, 'size', size) end
if n > 0 then
  redis.call('XTRIM', stream, 'MAXLEN', '~', size)
  remember(epoch, last)
end
return {epoch, last, n, 0}
