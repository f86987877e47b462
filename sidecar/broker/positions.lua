-- sidecar: the positions of the named channels whose events a relay has just read (one command,
-- pipelined after the relay's XREAD, so that Redis runs it after the read).
--
-- KEYS[1]  the stream
-- ARGV[1]  the first entry ID the relay's XREAD could return ("<ms>-<seq>", inclusive)
-- ARGV[2]  the XREAD's COUNT
-- ARGV[3]  the prefix of a named channel's position key (the key is the prefix and the name)
--
-- Returns {name, epoch, seq, name, epoch, seq, ...}: each named channel of the events among
-- those entries, once, with its position's epoch and seq as HMGET gives them (false when
-- missing, an error text when the key is not a hash). The entries are those the XREAD returned
-- and perhaps more (written in between), never fewer unless a trim took some in between: the
-- relay reads the position of any channel missing here itself. A stream key that is not a
-- stream answers {} (the relay's read of it failed too).

local entries = redis.pcall('XRANGE', KEYS[1], ARGV[1], '+', 'COUNT', ARGV[2])
if type(entries) ~= 'table' or entries.err then return {} end
local answer, seen = {}, {}
for _, entry in ipairs(entries) do
  local fields, name, event = entry[2], nil, false
  for i = 1, #fields - 1, 2 do
    if fields[i] == 'c' then name = fields[i + 1] elseif fields[i] == 'd' then event = true end
  end
  if event and name and not seen[name] and #name <= 128 then
    seen[name] = true
    local position = redis.pcall('HMGET', ARGV[3] .. name, 'epoch', 'seq')
    if position.err then position = {position.err, position.err} end
    answer[#answer + 1] = name
    answer[#answer + 1] = position[1]
    answer[#answer + 1] = position[2]
  end
end
return answer
