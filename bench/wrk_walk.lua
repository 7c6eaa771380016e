-- wrk script of bench/http.py: one request per id of a list.
--
-- Configured by environment variables (set by bench/http.py):
--   BENCH_METHOD   GET or POST
--   BENCH_PATH     path; "{id}" is replaced by the request's id
--   BENCH_BODY     request body ("" for none); "{id}" is replaced too
--   BENCH_KEY      X-API-Key header value ("" for none)
--   BENCH_IDS      file with one id per line ("" when the path has no "{id}")
--   BENCH_CYCLE    "1": each thread cycles through the whole list from its own
--                  offset (reads); otherwise thread n reads its own slice from
--                  BENCH_IDS .. "." .. n, one line per request (state
--                  transitions: no id is ever sent twice), and stops when the
--                  slice is used up, setting `exhausted`. Read as it goes, not
--                  loaded: wrk sets up each thread just before starting it, and a
--                  thread that loaded 100,000 ids first let the threads started
--                  before it run ahead of the timed run.
--   BENCH_THREADS  wrk's -t, to spread the cycling threads over the list
--   BENCH_STATUS   "1": count every response's status in Lua (2xx ok, anything
--                  else bad, with a sample body); otherwise leave the responses
--                  to wrk, which counts statuses over 399 (`errors.status`).
-- done() prints one line "BENCH {json}" with the totals of all threads.
--
-- Why it is built this way: the load generator's own work per request is part of
-- every turn of wrk's closed loop, and an endpoint that waits on Redis feels it
-- more than the bare route does (BENCHMARKS.md, "Why complete is short"). wrk's
-- SCRIPTING guide: building each request is expensive (pre-generate; here one
-- table.concat of prepared pieces per request instead of two gsubs and
-- wrk.format's string.format per header), and a `response` function makes wrk
-- parse every response's headers and body for Lua. A request without an id is
-- wrk's static request (no Lua per request at all).

local method = os.getenv("BENCH_METHOD") or "GET"
local path_tpl = os.getenv("BENCH_PATH") or "/"
local body_tpl = os.getenv("BENCH_BODY") or ""
local key = os.getenv("BENCH_KEY") or ""
local ids_file = os.getenv("BENCH_IDS") or ""
local cycle = os.getenv("BENCH_CYCLE") == "1"
local nthreads = tonumber(os.getenv("BENCH_THREADS") or "1")
local by_status = os.getenv("BENCH_STATUS") == "1"

local ids, slice = {}, nil
if ids_file ~= "" and cycle then
  for line in io.lines(ids_file) do
    if line ~= "" then ids[#ids + 1] = line end
  end
end

-- main state: hand each thread its index
local threads = {}
function setup(thread)
  threads[#threads + 1] = thread
  thread:set("tindex", #threads)
end

-- thread state
ok, bad, exhausted, codes, sample = 0, 0, 0, "", ""
local first, last, nxt = 1, 0, 1  -- cycling: the list's bounds and the next index
local counts = {}

-- `tpl` cut at each "{id}": its pieces, in `into` (from index `at`), with a
-- false where the id goes; returns the next index and how many ids it holds.
local function cut(tpl, into, at)
  local n, from = 0, 1
  while true do
    local s, e = string.find(tpl, "{id}", from, true)
    if not s then break end
    into[at] = string.sub(tpl, from, s - 1)
    into[at + 1] = false
    at, n, from = at + 2, n + 1, e + 1
  end
  into[at] = string.sub(tpl, from)
  return at + 1, n
end

-- The request as a table of pieces; each request fills in its id (and the
-- body's length) and joins them: what wrk.format(method, path, headers, body) gives.
local pieces, id_slots, len_slot, body_fixed, body_ids = {}, {}, nil, 0, 0

local function prepare()
  local at = cut(method .. " " .. path_tpl .. " HTTP/1.1\r\n", pieces, 1)
  local head = "Host: " .. wrk.headers["Host"] .. "\r\n"
  if key ~= "" then head = head .. "X-API-Key: " .. key .. "\r\n" end
  if body_tpl ~= "" then
    pieces[at] = head .. "Content-Type: application/json\r\nContent-Length: "
    len_slot = at + 1
    pieces[len_slot] = ""
    pieces[at + 2] = "\r\n\r\n"
    at, body_ids = cut(body_tpl, pieces, at + 3)
    body_fixed = #body_tpl - 4 * body_ids
  else
    pieces[at] = head .. "\r\n"
  end
  for i = 1, #pieces do
    if pieces[i] == false then id_slots[#id_slots + 1] = i end
  end
end

local function build(id)
  for i = 1, #id_slots do pieces[id_slots[i]] = id end
  if len_slot then pieces[len_slot] = tostring(body_fixed + body_ids * #id) end
  return table.concat(pieces)
end

function init(args)
  if ids_file ~= "" then
    if cycle then
      first, last = 1, #ids
      nxt = math.floor((tindex - 1) * #ids / nthreads) + 1
    else
      slice = assert(io.open(ids_file .. "." .. tindex))
    end
    prepare()
  else
    -- no id: wrk's static request, formatted once by wrk.init after this
    wrk.method, wrk.path = method, path_tpl
    if key ~= "" then wrk.headers["X-API-Key"] = key end
    if body_tpl ~= "" then
      wrk.headers["Content-Type"] = "application/json"
      wrk.body = body_tpl
    end
    request = nil
  end
  if not by_status then response = nil end
end

function request()
  local id
  if slice then
    id = slice:read("*l")
    if not id or id == "" then
      -- slice used up: stop this thread; the request returned here may still be
      -- written, so it goes to a path that changes nothing
      exhausted = 1
      wrk.thread:stop()
      return wrk.format("GET", "/bench-exhausted", {})
    end
  else
    if nxt > last then nxt = first end
    id = ids[nxt]
    nxt = nxt + 1
  end
  return build(id)
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
  if not by_status then
    t_bad = e.status
    t_ok = summary.requests - t_bad
  end
  io.write(string.format(
    'BENCH {"requests":%d,"duration_us":%d,"ok":%d,"bad":%d,"exhausted_threads":%d,"codes":"%s",' ..
    '"sample":"%s","errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
    '"p50_us":%d,"p99_us":%d,"by_status":%s}\n',
    summary.requests, summary.duration, t_ok, t_bad, t_exh, table.concat(all_codes, ","), esc(first_sample),
    e.connect, e.read, e.write, e.status, e.timeout, latency:percentile(50), latency:percentile(99),
    by_status and "true" or "false"))
end
