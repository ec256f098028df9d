-- POST one form body per request, taken in order from the file named by BENCH_BODIES (one per line).
-- Single-use inputs (JWT assertions, first sign-ins) must never repeat: run with one thread (-t1); when
-- the lines run out the run ends early. `done` prints one JSON line the benchmark script parses.
local bodies = {}
local index = 0

function init(args)
  for line in io.lines(os.getenv("BENCH_BODIES")) do
    bodies[#bodies + 1] = line
  end
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"
end

function request()
  index = index + 1
  if index > #bodies then
    if os.getenv("BENCH_CYCLE") == "1" then
      index = 1
    else
      -- Out of single-use inputs: end the run rather than repeat one (rates use the real duration).
      wrk.thread:stop()
      index = #bodies
    end
  end
  return wrk.format(nil, nil, nil, bodies[index])
end

function done(summary, latency, requests)
  local errors = summary.errors
  io.write(string.format(
    '{"requests": %d, "duration_us": %d, "non_2xx": %d, "socket_errors": %d, ' ..
    '"p50_ms": %.3f, "p99_ms": %.3f, "mean_ms": %.3f}\n',
    summary.requests, summary.duration, errors.status,
    errors.connect + errors.read + errors.write + errors.timeout,
    latency:percentile(50) / 1000, latency:percentile(99) / 1000, latency.mean / 1000))
end
