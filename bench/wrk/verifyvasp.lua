-- VerifyVASP callbacks with unique bodies: a bearer token, and a counter in
-- `data.verificationUuid` (the de-duplication key), so that no callback repeats.
--
--   wrk -s verifyvasp.lua http://host:port/verifyvasp/callback -- <token> [threads] [first] [random]
--
-- `first` is the first number to send: a later run against the same server starts past
-- what the earlier runs sent (or its callbacks would be duplicates, answered from the
-- idempotency record). With `random`, the UUID's first 16 hex digits are random, as a real
-- provider's are, and the counter stays in its last group: the keys then land all over the
-- store's key space instead of at its end, which costs the store more (the counter alone
-- flatters it).
local dir = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
local report = dofile(dir .. "report.lua")

local auth, next_n, step, random_keys

function setup(thread)
  report.setup(thread)
end

function init(args)
  auth = "Bearer " .. args[1]
  step = tonumber(args[2]) or 1
  next_n = (tonumber(args[3]) or 0) + (tonumber(id) or 0)
  random_keys = args[4] == "random"
  if random_keys then
    math.randomseed(os.time() * 1000 + (tonumber(id) or 0))
  end
end

local template = '{"callbackType":"TX_REPORT","data":{"verificationUuid":' ..
  '"%08x-%04x-4%03x-8000-%012d","txHash":' ..
  '"0x9fd7afd46e4402c7197b4d8deb0199fcf7c1f57ef70c339f403a1c0c31c28a1b"}}'

function request()
  local n = next_n
  next_n = next_n + step
  local a, b, c = 0, 0, 0
  if random_keys then
    a, b, c = math.random(0, 0xffffffff), math.random(0, 0xffff), math.random(0, 0xfff)
  end
  return wrk.format("POST", nil, {
    ["Content-Type"] = "application/json",
    ["Authorization"] = auth,
  }, string.format(template, a, b, c, n))
end

done = report.done
