-- wrk script for `make bench`: POST a small non-streaming chat completion and print a JSON
-- summary line (parsed by scripts/bench/bench.py). BENCH_CLOSE=1 sends `Connection: close`,
-- so every request opens a new TCP connection; BENCH_AUTH=KEY adds a bearer token (LiteLLM).
wrk.method = "POST"
wrk.body = os.getenv("BENCH_BODY")
  or '{"model":"echo","messages":[{"role":"user","content":"hello there world"}]}'
wrk.headers["Content-Type"] = "application/json"
local auth = os.getenv("BENCH_AUTH")
if auth and auth ~= "" then
  wrk.headers["Authorization"] = "Bearer " .. auth
end
if os.getenv("BENCH_CLOSE") == "1" then
  wrk.headers["Connection"] = "close"
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '\nBENCH_JSON {"requests":%d,"duration_us":%d,"p50_us":%d,"p99_us":%d,"mean_us":%.1f,' ..
    '"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    latency.mean, e.connect, e.read, e.write, e.status, e.timeout))
end
