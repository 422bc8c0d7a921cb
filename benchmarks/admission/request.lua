-- wrk script: POST the AdmissionReviews listed (one file path a line) in the file given after
-- `--`, in turn, and print the figures as one JSON line (WRKJSON ...) when done.
--
-- A second argument, a number of milliseconds, makes it a fixed-rate script: each connection
-- then waits about that long after each answer before it sends the next request (with C
-- connections, about C * 1000 / delay_ms requests a second, a little less: each answer's own
-- latency is added; the rate reached is reported). Each wait is drawn uniformly from 0.5 to 1.5
-- times the delay, so that the connections, which all start at once, do not keep arriving
-- together in bursts. wrk measures each request from its send to its answer, in C.

local requests = {}
local next_index = 0

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
  local delay_ms = tonumber(args[2])
  if delay_ms then
    math.randomseed(os.time() + #requests)
    -- wrk looks for a global delay() after init: defined only for a fixed rate
    delay = function()
      return math.floor(delay_ms * (0.5 + math.random()) + 0.5)
    end
  end
  -- threads start at different items so that they do not send the same review at once
  next_index = math.random(#requests) - 1
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
