-- sidecar: publish a batch of events of any channels (or none: read positions), atomically,
-- at most once per idempotency key.
--
-- KEYS[1]  the meta hash: epoch (the stream's and the default channel's), pos (the last
--          global position), seq (the default channel's last seq), size (the history size),
--          ttl (the seconds a named channel's history is kept)
-- KEYS[2]  the stream: one entry per event, ID "<pos>-0", fields d (the envelope with its
--          seq, and its channel if named), s (the channel's seq), and for a named channel
--          c (its name) and e (its epoch); a revocation has k=revoke, u (the user), c
-- KEYS[3]  the default channel's history: a list, newest first, of "<pos> <envelope>"
-- KEYS[4]  the idempotency record of this publish's key ("" without a key)
-- KEYS[5..4+2m]  for each of the m named channels: its meta hash (epoch, seq), its history
-- ARGV[1]  the epoch to create for the stream if there is none (random, the caller's)
-- ARGV[2]  the history size to trim to and record; "" uses the recorded one
-- ARGV[3]  the history size to use when ARGV[2] is "" and none is recorded
-- ARGV[4]  seconds the idempotency record is kept ("" without a key)
-- ARGV[5]  seconds a named channel's history is kept after its last event, to record; ""
--          uses the recorded one (a hub's), or 3600 when none is recorded
-- ARGV[6]  seconds a named channel's position is kept after its last event
-- ARGV[7]  m, the number of named channels
-- ARGV[8..7+m]  for each named channel: its name, then (ARGV[8+m..7+2m]) the epoch to give
--          it if it has none (random, the caller's)
-- ARGV[8+2m..]  the items, three values each: kind ("e" an event, "r" a revocation), the
--          channel's index (0: the default channel, 1..m: a named one), and the data (an
--          event's envelope without seq, a compact JSON object ending in "}"; a revocation's
--          user)
--
-- Returns {epoch, last pos, count, duplicate, default seq, then for each named channel its
-- epoch and last seq, then each item's seq (0 for a revocation)}. duplicate is 1 when an
-- earlier publish with the same key answered instead: nothing was published, and the seqs
-- are that publish's.
--
-- Redis does not roll back a script: a command that fails halfway leaves every write before
-- it. So the keys are checked before anything is written; every XADD goes in before any other
-- write; an XADD that meets a foreign ID (at or above one of ours) starts a new stream epoch,
-- whose DEL takes what this script added with it; and the only other failure is the first
-- write refused for memory (Redis refuses a script's first write only), which leaves nothing.
-- A refused publish leaves no trace and uses up no seq.
--
-- The keys are anyone's to overwrite. What cannot be continued is treated like lost data:
--   * the stream: no epoch, an epoch a client could not send back in `since`, a pos or seq
--     that is not a decimal number below 10^15, a meta key that is not a hash, a stream key
--     that is not a stream, or an entry someone appended beyond our last pos (Redis would
--     refuse every later "<pos>-0"): a new epoch, an empty stream and default history;
--   * a named channel: a meta that is missing or not as written here (a new epoch for that
--     channel, its history emptied), a history key that is not a list (emptied);
--   * the default channel's history key that is not a list: emptied (its seqs go on).

local meta, stream, default_history, record = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local m = tonumber(ARGV[7])
local first_item = 8 + 2 * m
local n = (#ARGV - first_item + 1) / 3

local function number(text)
  if not text or #text > 15 or not string.match(text, '^%d+$') then return nil end
  return tonumber(text)
end

local function epoch_ok(text)
  return type(text) == 'string' and #text <= 64 and string.match(text, '^[%w_-]+$') ~= nil
end

-- Idempotency (KEYS[4], ARGV[4]): separate from the numbering below.

local function whole(value)
  return type(value) == 'number' and value >= 0 and value < 1e15 and value == math.floor(value)
end

-- The answer remember() stored under the key, or nil: none, or not one remember() writes
-- (anyone may SET the key): epoch, pos, count, 0, default seq, then two values per named
-- channel, then count seqs.
local function recall()
  if record == '' then return nil end
  local seen = redis.pcall('GET', record)
  if type(seen) ~= 'string' then return nil end  -- none, or not a string: not ours
  local ok, answer = pcall(cjson.decode, seen)
  if not ok or type(answer) ~= 'table' or not epoch_ok(answer[1]) then return nil end
  local count = answer[3]
  if not whole(answer[2]) or not whole(count) or count < 1 or not whole(answer[5]) then
    return nil
  end
  local named = #answer - 5 - count
  if named < 0 or named % 2 ~= 0 then return nil end
  for i = #answer - count + 1, #answer do
    if not whole(answer[i]) then return nil end
  end
  answer[4] = 1
  return answer
end

local function remember(answer)
  if record ~= '' then
    redis.call('SET', record, cjson.encode(answer), 'EX', ARGV[4])
  end
end

-- The stream's numbering.

local function head()
  local fields = redis.pcall('HMGET', meta, 'epoch', 'pos', 'seq')
  if fields.err then return nil end  -- not a hash
  local epoch, pos, seq = fields[1], number(fields[2]), number(fields[3])
  if not epoch_ok(epoch) or not pos or not seq then return nil end
  return epoch, pos, seq
end

local function fresh()
  if redis.call('TYPE', meta)['ok'] ~= 'hash' then redis.call('DEL', meta) end
  redis.call('DEL', stream, default_history)
  redis.call('HSET', meta, 'epoch', ARGV[1], 'pos', 0, 'seq', 0)
  return ARGV[1], 0, 0
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

-- The seconds a named channel's history is kept, and whether they are to be recorded (as the
-- size: a hub's, so that outside publishers keep the deployment's).
local function history_ttl()
  local recorded = redis.call('HGET', meta, 'ttl')
  if ARGV[5] ~= '' then return ARGV[5], recorded ~= ARGV[5] end
  if recorded and #recorded <= 15 and string.match(recorded, '^[1-9]%d*$') then
    return recorded, false
  end
  return '3600', false
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

-- The named channels: name, epoch, last seq, and whether their keys must be (re)made.

local channels = {}
for i = 1, m do
  local key, history = KEYS[3 + 2 * i], KEYS[4 + 2 * i]
  local c = {name = ARGV[7 + i], key = key, history = history}
  local fields = redis.pcall('HMGET', key, 'epoch', 'seq')
  local epoch, seq = nil, nil
  if not fields.err then epoch, seq = fields[1], number(fields[2]) end
  if epoch_ok(epoch) and seq then
    c.epoch, c.seq, c.new = epoch, seq, false
  else
    c.epoch, c.seq, c.new = ARGV[7 + m + i], 0, true
  end
  local kind = redis.call('TYPE', history)['ok']
  c.clear = c.new or (kind ~= 'none' and kind ~= 'list')
  channels[i] = c
end

-- The items: the envelope (or the revocation's fields) each one gets, as XADD arguments.

local function entry(i, pos, default_seq, seqs)
  local at = first_item + 3 * (i - 1)
  local kind, index, data = ARGV[at], tonumber(ARGV[at + 1]), ARGV[at + 2]
  if kind == 'r' then
    return {'k', 'revoke', 'u', data, 'c', channels[index].name}, nil, 0
  end
  if index == 0 then
    local seq = default_seq + 1
    local envelope = string.sub(data, 1, -2) .. string.format(',"seq":%d}', seq)
    return {'d', envelope, 's', seq}, envelope, seq
  end
  local c = channels[index]
  local seq = seqs[index] + 1
  local envelope = string.sub(data, 1, -2)
    .. string.format(',"seq":%d,"channel":"%s"}', seq, c.name)
  return {'d', envelope, 's', seq, 'c', c.name, 'e', c.epoch}, envelope, seq
end

-- XADD every item after pos; nil, or the first error and how many were added. Fills
-- `answers` with each item's seq and `kept` with what goes into which history.
local function append(pos, default_seq, answers, kept)
  local seqs = {}
  for i = 1, m do seqs[i] = channels[i].seq end
  for i = 1, n do
    local fields, envelope, seq = entry(i, pos + i, default_seq, seqs)
    local added = redis.pcall('XADD', stream, string.format('%d-0', pos + i), unpack(fields))
    if type(added) == 'table' and added.err then return added, i - 1 end
    local index = tonumber(ARGV[first_item + 3 * (i - 1) + 1])
    if envelope then
      if index == 0 then default_seq = seq else seqs[index] = seq end
      kept[#kept + 1] = {index, string.format('%d ', pos + i) .. envelope}
    end
    answers[i] = seq
  end
  return nil, n, default_seq, seqs
end

local seen = recall()
if seen then return seen end

local epoch, pos, default_seq = head()
local kind = redis.call('TYPE', stream)['ok']
if not epoch or (kind ~= 'none' and kind ~= 'stream') then
  epoch, pos, default_seq = fresh()
end
local size, record_size = history_size()
local ttl, record_ttl = history_ttl()

local answers, kept, seqs = {}, {}, {}
for i = 1, m do seqs[i] = channels[i].seq end
if n > 0 then
  local failed, added, last_default, last_seqs = append(pos, default_seq, answers, kept)
  if failed then
    -- the first write refused (out of memory): nothing was written
    if added == 0 and not blocked(pos) then return failed end
    -- a foreign ID at or above one of ours; the new epoch drops what was added too
    epoch, pos, default_seq = fresh()
    answers, kept = {}, {}
    failed, added, last_default, last_seqs = append(pos, default_seq, answers, kept)
  end
  pos, default_seq, seqs = pos + n, last_default, last_seqs
  redis.call('HSET', meta, 'pos', pos, 'seq', default_seq)
end
if record_size then redis.call('HSET', meta, 'size', size) end
if record_ttl then redis.call('HSET', meta, 'ttl', ttl) end

-- The named channels' positions (created if new), then the histories.
for i = 1, m do
  local c = channels[i]
  if c.clear then redis.call('DEL', c.history) end
  if c.new or seqs[i] ~= c.seq then
    if c.new and redis.call('TYPE', c.key)['ok'] ~= 'hash' then redis.call('DEL', c.key) end
    redis.call('HSET', c.key, 'epoch', c.epoch, 'seq', seqs[i])
  end
  -- a position nothing was published on yet (a subscribe's) lives as long as a history
  redis.call('EXPIRE', c.key, seqs[i] == 0 and ttl or ARGV[6])
end
-- (a default history of another type would fail the LPUSH after the XADDs: emptied too)
local default_kind = redis.call('TYPE', default_history)['ok']
if default_kind ~= 'none' and default_kind ~= 'list' then redis.call('DEL', default_history) end
local touched = {}
for _, item in ipairs(kept) do
  local index, value = item[1], item[2]
  local history = index == 0 and default_history or channels[index].history
  redis.call('LPUSH', history, value)
  touched[index] = history
end
for index, history in pairs(touched) do
  redis.call('LTRIM', history, 0, size - 1)
  if index > 0 then redis.call('EXPIRE', history, ttl) end
end
if n > 0 then redis.call('XTRIM', stream, 'MAXLEN', '~', size) end

local answer = {epoch, pos, n, 0, default_seq}
for i = 1, m do
  answer[#answer + 1] = channels[i].epoch
  answer[#answer + 1] = seqs[i]
end
for i = 1, n do answer[#answer + 1] = answers[i] end
if n > 0 then remember(answer) end
return answer
