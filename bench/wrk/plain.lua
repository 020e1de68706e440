-- A plain request (wrk's own, from the command line: method, path, headers, body) with
-- the runner's result line. Used for /healthz and for adnanh/webhook.
--
--   wrk -s plain.lua http://host:port/healthz
--   wrk -s plain.lua http://host:port/hooks/bench -- POST 'Bearer token' '{"a":1}'
local dir = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
local report = dofile(dir .. "report.lua")

setup = report.setup
done = report.done

function init(args)
  if args[1] then
    wrk.method = args[1]
    wrk.headers["Authorization"] = args[2]
    wrk.headers["Content-Type"] = "application/json"
    wrk.body = args[3]
  end
end
