-- Signed Pomelo notifications with unique bodies.
--
--   wrk -s pomelo.lua http://host:port/pomelo/tokenization/otp -- <signed file> <api key>
--       [threads] [first]
--
-- HMAC cannot be computed in wrk's Lua, so the runner pre-signs the requests: the file's
-- first line is the body template (one `%d`, the request's number), every further line
-- `<X-Timestamp> <X-Signature>` of the body with that line's number (0 for the second
-- line). Each thread takes every `count`th line from its own index, so that no body is
-- sent twice, even with several threads. `first` is the first number to send: a later run
-- against the same server starts past what the earlier runs sent (or its bodies would be
-- duplicates, answered from the idempotency record).
local dir = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
local report = dofile(dir .. "report.lua")

local template, signed, api_key, endpoint
local next_n, step

function setup(thread)
  report.setup(thread)
end

function init(args)
  local f = assert(io.open(args[1], "r"))
  template = f:read("*l")
  endpoint = f:read("*l")
  signed = {}
  for line in f:lines() do
    signed[#signed + 1] = line
  end
  f:close()
  api_key = args[2]
  step = tonumber(args[3]) or 1
  next_n = (tonumber(args[4]) or 0) + (tonumber(id) or 0)
end

function request()
  local n = next_n
  next_n = next_n + step
  local line = signed[n + 1]
  if line == nil then
    -- Past the end: start over (these are duplicates now; the result says so).
    wrapped = 1
    n = n % #signed
    line = signed[n + 1]
  end
  local ts, sig = line:match("^(%S+) (.+)$")
  return wrk.format("POST", nil, {
    ["Content-Type"] = "application/json",
    ["X-Api-Key"] = api_key,
    ["X-Signature"] = sig,
    ["X-Timestamp"] = ts,
    ["X-Endpoint"] = endpoint,
  }, string.format(template, n))
end

done = report.done
