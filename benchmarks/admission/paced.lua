-- wrk script for a fixed rate: like request.lua (POST the AdmissionReviews listed in the file
-- given after `--`, in turn), but each connection waits about `delay_ms` (the second argument)
-- after each answer before it sends the next request: with C connections, about
-- C * 1000 / delay_ms requests a second (a little less: each answer's own latency is added; the
-- rate reached is reported). Each wait is drawn uniformly from 0.5 to 1.5 times `delay_ms`, so
-- that the connections, which all start at once, do not keep arriving together in bursts.
-- wrk measures each request from its send to its answer, in C, on one thread.

local requests = {}
local next_index = 0
local delay_ms = 0

function init(args)
  local list = assert(io.open(args[1], "r"))
  for path in list:lines() do
    local f = assert(io.open(path, "rb"))
    local body = f:read("*a")
    f:close()
    requests[#requests + 1] =
      wrk.format("POST", nil, { ["Content-Type"] = "application/json" }, body)
  end
  list:close()
  delay_ms = tonumber(args[2])
  math.randomseed(os.time())
  next_index = math.random(#requests) - 1
end

function delay()
  return math.floor(delay_ms * (0.5 + math.random()) + 0.5)
end

function request()
  next_index = (next_index % #requests) + 1
  return requests[next_index]
end

function done(summary, latency, _)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests":%d,"duration_us":%d,"bytes":%d,"errors_connect":%d,' ..
    '"errors_read":%d,"errors_write":%d,"errors_status":%d,"errors_timeout":%d,' ..
    '"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d,"mean_us":%.1f}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write,
    e.status, e.timeout, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max, latency.mean))
end
