-- VerifyVASP callbacks with unique bodies: a bearer token, and a counter in
-- `data.verificationUuid` (the de-duplication key), so that no callback repeats.
--
--   wrk -s verifyvasp.lua http://host:port/verifyvasp/callback -- <token> [threads] [first]
--
-- `first` is the first number to send: a later run against the same server starts past
-- what the earlier runs sent (or its callbacks would be duplicates, answered from the
-- idempotency record).
local dir = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
local report = dofile(dir .. "report.lua")

local auth, next_n, step

function setup(thread)
  report.setup(thread)
end

function init(args)
  auth = "Bearer " .. args[1]
  step = tonumber(args[2]) or 1
  next_n = (tonumber(args[3]) or 0) + (tonumber(id) or 0)
end

local template = '{"callbackType":"TX_REPORT","data":{"verificationUuid":' ..
  '"00000000-0000-4000-8000-%012d","txHash":' ..
  '"0x9fd7afd46e4402c7197b4d8deb0199fcf7c1f57ef70c339f403a1c0c31c28a1b"}}'

function request()
  local n = next_n
  next_n = next_n + step
  return wrk.format("POST", nil, {
    ["Content-Type"] = "application/json",
    ["Authorization"] = auth,
  }, string.format(template, n))
end

done = report.done
