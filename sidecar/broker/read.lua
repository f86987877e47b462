-- sidecar: read a channel's events after a seq, for a resume (one page, bounded in bytes).
--
-- KEYS[1]  the channel's meta hash (epoch, seq): the stream's meta for the default channel
-- KEYS[2]  the channel's history: a list, newest first, of "<pos> <envelope>"
-- ARGV[1]  the epoch the client resumes in
-- ARGV[2]  the seq it resumes after
-- ARGV[3]  most events to return
-- ARGV[4]  bytes of envelopes after which to stop (the event that crosses it included)
--
-- Returns {status, epoch, last seq, then "<pos> <envelope>" of each event after ARGV[2], oldest
-- first}: status "ok", or "gone" (another epoch, a seq ahead of the last, or a meta that is
-- not ours: no resume), and the events are fewer than asked when the history does not reach
-- back (the caller checks that they follow ARGV[2]).

local fields = redis.pcall('HMGET', KEYS[1], 'epoch', 'seq')
if fields.err then return {'gone', '', 0} end
local epoch, last = fields[1], fields[2]
if not epoch or not last or #last > 15 or not string.match(last, '^%d+$') then
  return {'gone', '', 0}
end
last = tonumber(last)
local after, limit, budget = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
if epoch ~= ARGV[1] or after > last then return {'gone', epoch, last} end
local answer = {'ok', epoch, last}
if after == last or limit < 1 then return answer end
if redis.call('TYPE', KEYS[2])['ok'] ~= 'list' then return answer end
-- seq k sits at index last - k; the page is seqs after+1 .. after+limit (at most last)
local newest = math.min(last, after + limit)
local entries = redis.call('LRANGE', KEYS[2], last - newest, last - after - 1)
local size = 0
for i = #entries, 1, -1 do  -- oldest first
  answer[#answer + 1] = entries[i]
  size = size + #entries[i] - (string.find(entries[i], ' ', 1, true) or 0)  -- the envelope's
  if size > budget then break end
end
return answer
