-- wrk script of bench/http.py: one request per id of a list, every status counted.
--
-- Configured by environment variables (set by bench/http.py):
--   BENCH_METHOD   GET or POST
--   BENCH_PATH     path; "{id}" is replaced by the request's id
--   BENCH_BODY     request body ("" for none); "{id}" is replaced too
--   BENCH_KEY      X-API-Key header value ("" for none)
--   BENCH_IDS      file with one id per line ("" when the path has no "{id}")
--   BENCH_CYCLE    "1": each thread cycles through the whole list from its own
--                  offset (reads); otherwise each thread walks its own disjoint
--                  slice once (state transitions: no id is ever sent twice) and
--                  stops when the slice is used up, setting `exhausted`.
--   BENCH_THREADS  wrk's -t, to cut the list into slices
-- done() prints one line "BENCH {json}" with the totals of all threads.

local method = os.getenv("BENCH_METHOD") or "GET"
local path_tpl = os.getenv("BENCH_PATH") or "/"
local body_tpl = os.getenv("BENCH_BODY") or ""
local key = os.getenv("BENCH_KEY") or ""
local ids_file = os.getenv("BENCH_IDS") or ""
local cycle = os.getenv("BENCH_CYCLE") == "1"
local nthreads = tonumber(os.getenv("BENCH_THREADS") or "1")

local ids = {}
if ids_file ~= "" then
  for line in io.lines(ids_file) do
    if line ~= "" then ids[#ids + 1] = line end
  end
end

local headers = {}
if key ~= "" then headers["X-API-Key"] = key end
if body_tpl ~= "" then headers["Content-Type"] = "application/json" end

-- main state: hand each thread its index
local threads = {}
function setup(thread)
  threads[#threads + 1] = thread
  thread:set("tindex", #threads)
end

-- thread state
ok, bad, exhausted, codes, sample = 0, 0, 0, "", ""
local first, last, nxt = 1, 0, 1
local counts = {}

function init(args)
  local n = #ids
  if n > 0 then
    if cycle then
      first, last = 1, n
      nxt = math.floor((tindex - 1) * n / nthreads) + 1
    else
      first = math.floor((tindex - 1) * n / nthreads) + 1
      last = math.floor(tindex * n / nthreads)
      nxt = first
    end
  end
end

local function fill(tpl, id)
  return (string.gsub(tpl, "{id}", id))
end

function request()
  if #ids == 0 then
    return wrk.format(method, path_tpl, headers, body_tpl ~= "" and body_tpl or nil)
  end
  if nxt > last then
    if cycle then
      nxt = first
    else
      -- slice used up: stop this thread; the request returned here may still be
      -- written, so it goes to a path that changes nothing
      exhausted = 1
      wrk.thread:stop()
      return wrk.format("GET", "/bench-exhausted", {})
    end
  end
  local id = ids[nxt]
  nxt = nxt + 1
  return wrk.format(method, fill(path_tpl, id), headers, body_tpl ~= "" and fill(body_tpl, id) or nil)
end

function response(status, hdrs, body)
  if status >= 200 and status < 300 then
    ok = ok + 1
  else
    bad = bad + 1
    counts[status] = (counts[status] or 0) + 1
    local parts = {}
    for s, c in pairs(counts) do parts[#parts + 1] = s .. ":" .. c end
    codes = table.concat(parts, ",")
    if sample == "" and body then sample = string.sub(body, 1, 200) end
  end
end

local function esc(s)
  return (string.gsub(s, '[%c"\\]', function(c) return string.format("\\u%04x", string.byte(c)) end))
end

function done(summary, latency, requests)
  local t_ok, t_bad, t_exh, all_codes, first_sample = 0, 0, 0, {}, ""
  for _, t in ipairs(threads) do
    t_ok = t_ok + (t:get("ok") or 0)
    t_bad = t_bad + (t:get("bad") or 0)
    t_exh = t_exh + (t:get("exhausted") or 0)
    local c = t:get("codes") or ""
    if c ~= "" then all_codes[#all_codes + 1] = c end
    local s = t:get("sample") or ""
    if first_sample == "" then first_sample = s end
  end
  local e = summary.errors
  io.write(string.format(
    'BENCH {"requests":%d,"duration_us":%d,"ok":%d,"bad":%d,"exhausted_threads":%d,"codes":"%s",' ..
    '"sample":"%s","errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
    '"p50_us":%d,"p99_us":%d}\n',
    summary.requests, summary.duration, t_ok, t_bad, t_exh, table.concat(all_codes, ","), esc(first_sample),
    e.connect, e.read, e.write, e.status, e.timeout, latency:percentile(50), latency:percentile(99)))
end
