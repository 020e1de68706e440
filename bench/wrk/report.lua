-- Shared by the wrk scripts of bench/wrk.sh: one machine-readable line at the end of a
-- run, which the runner parses. Latencies are in microseconds (wrk's unit).
--
--   RESULT rps=<requests/s> p50_us=<> p99_us=<> requests=<> non2xx=<> errors=<>
--
-- A script that serves requests from a finite list sets `wrapped` on its threads when it
-- ran past the end (then repeats were sent, and the figure is not one of unique bodies).

local report = {}

function report.done(summary, latency, _requests)
  local e = summary.errors
  local errors = e.connect + e.read + e.write + e.timeout
  local wrapped = 0
  for _, t in ipairs(report.threads or {}) do
    wrapped = wrapped + (tonumber(t:get("wrapped")) or 0)
  end
  io.write(string.format(
    "RESULT rps=%.0f p50_us=%d p99_us=%d requests=%d non2xx=%d errors=%d wrapped=%d\n",
    summary.requests / (summary.duration / 1e6),
    latency:percentile(50), latency:percentile(99),
    summary.requests, e.status, errors, wrapped))
end

-- Numbers the threads (setup runs once per thread, in the main state), so that each
-- takes every `count`th item of a list, starting at its own index.
function report.setup(thread)
  report.threads = report.threads or {}
  table.insert(report.threads, thread)
  thread:set("id", #report.threads - 1)
end

return report
