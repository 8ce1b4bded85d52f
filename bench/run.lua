-- The benchmark suite: kore_workflow against raw libcurl, the curl command
-- and the Lua HTTP clients, in one run, on one server. `make bench` builds
-- what it needs and runs this script; see BENCHMARKS.md for the method.
--
-- Usage: lua5.4 bench/run.lua --lua LUA --core DIR --tools DIR [options]
--   --lua LUA         interpreter of the Lua contenders (lua5.1: Debian's
--                     lua-curl exists only for 5.1 and 5.2)
--   --core DIR        directory holding kore_workflow/core.so built for LUA
--   --tools DIR       directory holding measure and libcurl_status
--   --calls N         sequential calls per run (default 4000)
--   --repeat N        runs of each measurement; figures are medians (default 25;
--                     the concurrency and upload cases run at most 3 times)
--   --upload-mb N     size of the uploaded file in MB (default 200)
--   --quick           a smoke run: few calls, one repetition, no targets
--   --out FILE        also write the results as Markdown to FILE
-- Exits 1 when a target is missed (not with --quick), 2 on a failed run.
local socket = require("socket")
local http = require("socket.http")

local function script_dir()
  local source = debug.getinfo(1, "S").source:match("^@(.*)$") or "bench/run.lua"
  return source:match("^(.*)/[^/]*$") or "."
end

local bench_dir = script_dir()
local root = bench_dir .. "/.."
package.path = root .. "/spec/?.lua;" .. package.path
local emulator = require("support.emulator")

local VALUE_OPTIONS = {
  lua = true, core = true, tools = true, calls = true, ["repeat"] = true, ["upload-mb"] = true,
  out = true,
}

local options = {
  calls = 4000,
  ["repeat"] = 25,
  ["upload-mb"] = 200,
}
do
  local i = 1
  while i <= #arg do
    local name = arg[i]:match("^%-%-(.+)$")
    if name == "quick" then
      options.quick = true
      i = i + 1
    elseif VALUE_OPTIONS[name] and arg[i + 1] then
      options[name] = arg[i + 1]
      i = i + 2
    else
      io.stderr:write("bench/run.lua: unknown argument ", arg[i], "\n")
      os.exit(2)
    end
  end
  for _, required in ipairs({ "lua", "core", "tools" }) do
    if not options[required] then
      io.stderr:write("bench/run.lua: --", required, " is required\n")
      os.exit(2)
    end
  end
  for _, numeric in ipairs({ "calls", "repeat", "upload-mb" }) do
    options[numeric] = tonumber(options[numeric])
    if not options[numeric] or options[numeric] < 1 then
      io.stderr:write("bench/run.lua: --", numeric, " needs a number of 1 or more\n")
      os.exit(2)
    end
  end
  if options.quick then
    options.calls, options["repeat"], options["upload-mb"] = 500, 1, 30
  end
end

local DELAY = 0.05 -- seconds the emulator waits before each reply in the concurrency case
local CONCURRENT_CALLS = options.quick and 64 or 512
local IN_FLIGHT = { 1, 8, 32, 128 }
local LOAD_RUNS = options.quick and 5 or 40
local BENCH_KEY = "kg-bench-7c1e5a9d-3b2f-4e8a-9d6c-1f0e2a3b4c5d"
local JOB_ID = "ds-4f1c2b7e-9a3d-4e51-8c6f-0d2a7b9e5c13"

local function shell_quote(text)
  return "'" .. tostring(text):gsub("'", "'\\''") .. "'"
end

-- A failed step raises this; the main chunk stops every server it started
-- and exits with status 2.
local Failure = {}

local function fail(message)
  error(setmetatable({ message = message }, Failure), 0)
end

-- Functions that stop what the run started, called last to first at the end.
local cleanups = {}

local function on_exit(fn)
  cleanups[#cleanups + 1] = fn
end

local function read_command(command)
  local handle = assert(io.popen(command))
  local output = handle:read("*a")
  handle:close()
  return output
end

local function write_file(path, content)
  local handle = assert(io.open(path, "wb"))
  handle:write(content)
  handle:close()
end

local function median(values)
  local sorted = {}
  for i, v in ipairs(values) do
    sorted[i] = v
  end
  table.sort(sorted)
  local n = #sorted
  if n % 2 == 1 then
    return sorted[(n + 1) / 2]
  end
  return (sorted[n / 2] + sorted[n / 2 + 1]) / 2
end

local workdir = read_command("mktemp -d"):gsub("%s+$", "")
local key_file = workdir .. "/key"
write_file(key_file, BENCH_KEY .. "\n")

-- Every contender talks to loopback servers directly, whatever proxy the
-- caller's environment names.
local no_proxy = "env -u http_proxy -u https_proxy -u HTTPS_PROXY -u all_proxy -u ALL_PROXY "
  .. "no_proxy='*' NO_PROXY='*' "
local lua_env = string.format("LUA_PATH=%s LUA_CPATH=%s",
  shell_quote(root .. "/lua/?.lua;" .. root .. "/lua/?/init.lua;;"),
  shell_quote(options.core .. "/?.so;;"))
local measure = options.tools .. "/measure"

-- nginx and each sequential contender run on the same CPU. On this kind of
-- virtual machine, a reply that wakes a process on the other CPU sometimes
-- takes a slow path through the hypervisor. Unpinned, the same loop ran at
-- 13,000 calls per second in one repetition and 32,000 in the next. On one
-- CPU every contender waits for nginx the same way, and repetitions agree
-- within a few percent.
local PIN_CPU = "0"
local pin = ""
if read_command("command -v taskset") ~= "" then
  pin = "taskset -c " .. PIN_CPU .. " "
end

-- Runs a command under measure. Returns a table of every key=value figure
-- that the command and measure printed.
local function measured(command)
  local output = read_command(measure .. " " .. command .. " 2>&1")
  local figures = {}
  for line in output:gmatch("[^\n]+") do
    -- measure's own line, or the contender's result line.
    if line:find("^measure: ") or line:find("^calls=") or line:find("^bytes=") then
      for key, value in line:gmatch("([%w_]+)=([%d%.]+)") do
        figures[key] = tonumber(value)
      end
    end
  end
  if figures.status ~= 0 or not figures.wall then
    fail("this command failed:\n  " .. measure .. " " .. command .. "\nIt printed:\n" .. output)
  end
  return figures
end

-- nginx ------------------------------------------------------------------

local function free_port()
  local server = assert(socket.bind("127.0.0.1", 0))
  local _, port = server:getsockname()
  server:close()
  return port
end

local function start_nginx()
  local prefix = workdir .. "/nginx"
  os.execute("mkdir -p " .. shell_quote(prefix))
  local handle = assert(io.open(bench_dir .. "/nginx.conf.in", "rb"))
  local template = handle:read("*a")
  handle:close()
  for _ = 1, 5 do
    local port = free_port()
    local conf = template:gsub("@PREFIX@", prefix):gsub("@PORT@", tostring(port))
    write_file(prefix .. "/nginx.conf", conf)
    -- timeout ends an nginx left behind by a bench run that was killed.
    os.execute(string.format("timeout 1200 %snginx -p %s -c %s >%s 2>&1 &", pin, shell_quote(prefix),
      shell_quote(prefix .. "/nginx.conf"), shell_quote(prefix .. "/stdout.log")))
    -- Ready once the port serves the fixed job record, which no other
    -- program that took the port in the meantime would.
    local deadline = socket.gettime() + 10
    local url = string.format("http://127.0.0.1:%d/api/public/dock-status/%s", port, JOB_ID)
    while socket.gettime() < deadline do
      local body, status = http.request(url)
      if status == 200 and type(body) == "string" and body:find('"status":"SUCCESS"', 1, true) then
        return { port = port, conf = prefix .. "/nginx.conf" }
      end
      socket.sleep(0.05)
    end
    os.execute("pkill -f " .. shell_quote(prefix .. "/nginx.conf") .. " 2>/dev/null")
  end
  fail("nginx did not start; see " .. prefix .. "/error.log")
end

-- Stops the nginx by its configuration path, which names this run's own
-- temporary directory, so that no other nginx is touched.
local function stop_nginx(server)
  if server and not server.stopped then
    server.stopped = true
    os.execute("pkill -f " .. shell_quote(server.conf) .. " 2>/dev/null")
  end
end

-- Machine ---------------------------------------------------------------

local function first_line(command)
  return (read_command(command .. " 2>&1"):match("[^\n]*") or ""):gsub("%s+$", "")
end

local machine = {
  cpu = (read_command("grep -m1 'model name' /proc/cpuinfo"):match(":%s*(.-)%s*$") or "unknown"),
  cores = first_line("nproc"),
  kernel = first_line("uname -r"),
  libcurl = first_line("curl-config --version"),
  nginx = first_line("nginx -v"):gsub("^nginx version: ", ""),
  lua = first_line(options.lua .. " -v"):match("^(%S+%s+%S+)") or options.lua,
}

-- Sequential calls -------------------------------------------------------

local contenders = {
  { name = "raw libcurl (C)", key = "libcurl",
    command = function(url, calls)
      return string.format("%s%s%s/libcurl_status %s %s %d", no_proxy, pin, options.tools,
        shell_quote(url), shell_quote(key_file), calls)
    end },
  { name = "kore_workflow", key = "kore_workflow", lua = "kore_workflow.lua" },
  { name = "Debian lua-curl", key = "lua_curl", lua = "lua_curl.lua" },
  { name = "LuaSocket socket.http", key = "luasocket", lua = "luasocket.lua" },
  { name = "curl command per call", key = "curl_cli", lua = "curl_cli.lua", divisor = 100 },
}
for _, contender in ipairs(contenders) do
  if contender.lua then
    local script = bench_dir .. "/contenders/" .. contender.lua
    contender.command = function(url, calls)
      return string.format("%s%s %s%s %s %s %s %d", no_proxy, lua_env, pin, options.lua,
        shell_quote(script), shell_quote(url), shell_quote(key_file), calls)
    end
  end
end

local function run_sequential(url)
  local results = {}
  for _, contender in ipairs(contenders) do
    -- The CPU time of a one-call run, the median of three, is start-up plus one call.
    local startup = {}
    for i = 1, 3 do
      startup[i] = measured(contender.command(url, 1)).cpu
    end
    results[contender.key] = { startup_cpu = median(startup), rate = {}, cpu = {}, rss = {},
      calls = math.max(50, math.floor(options.calls / (contender.divisor or 1))) }
  end
  math.randomseed(os.time())
  for rep = 1, options["repeat"] do
    -- Each repetition runs the contenders in a new random order, so that no
    -- contender always runs right after the same one.
    local order = {}
    for i, contender in ipairs(contenders) do
      table.insert(order, math.random(i), contender)
    end
    for _, contender in ipairs(order) do
      local result = results[contender.key]
      local figures = measured(contender.command(url, result.calls))
      result.rate[#result.rate + 1] = figures.calls / figures.seconds
      result.cpu[#result.cpu + 1] = math.max(0, figures.cpu - result.startup_cpu)
        / (figures.calls - 1)
      result.rss[#result.rss + 1] = figures.maxrss_kb
      io.stderr:write(string.format("  %-22s %8.0f calls/s %6.1f us CPU/call\n", contender.key,
        result.rate[#result.rate], result.cpu[#result.cpu] * 1e6))
    end
    io.stderr:write(string.format("sequential: repetition %d of %d done\n", rep, options["repeat"]))
  end
  -- A ratio between two contenders is the median of their ratios within each
  -- repetition, where both ran moments apart, so that the machine's drift
  -- between repetitions (this one is a shared virtual machine) cancels out.
  local function paired(a, b, field)
    local ratios = {}
    for rep = 1, options["repeat"] do
      ratios[rep] = results[a][field][rep] / results[b][field][rep]
    end
    return median(ratios)
  end
  -- Counts the repetitions in which contender a made fewer calls per second than b.
  local function slower(a, b)
    local count = 0
    for rep = 1, options["repeat"] do
      if results[a].rate[rep] < results[b].rate[rep] then
        count = count + 1
      end
    end
    return count
  end
  -- The smallest, first quartile, third quartile and largest of those ratios.
  local function spread(a, b)
    local ratios = {}
    for rep = 1, options["repeat"] do
      ratios[rep] = results[a].rate[rep] / results[b].rate[rep]
    end
    table.sort(ratios)
    local n = #ratios
    return ratios[1], ratios[math.max(1, math.floor(n / 4 + 0.5))],
      ratios[math.max(1, math.floor(3 * n / 4 + 0.5))], ratios[n]
  end
  local summary = { ratio = paired, slower = slower, spread = spread }
  for key, result in pairs(results) do
    summary[key] = {
      rate = median(result.rate),
      cpu = median(result.cpu),
      rss = median(result.rss),
      rate_ratio = paired(key, "libcurl", "rate"),
      cpu_ratio = paired(key, "libcurl", "cpu"),
      rss_ratio = paired(key, "libcurl", "rss"),
    }
  end
  return summary
end

-- Concurrency ------------------------------------------------------------

local function run_concurrency()
  local emu = emulator.start { api_key = BENCH_KEY, lua = "lua5.4", idle_exit = 300 }
  on_exit(function() emu:stop() end)
  local job = { _id = JOB_ID, workflowId = "a-00000000-0000-4000-8000-000000000001",
                jobType = "WORKFLOWS", action = "IMPORT", status = "SUCCESS" }
  emu:script { method = "GET", path = "/api/public/dock-status/" .. JOB_ID,
               responses = { { delay = DELAY, body = job } }, ["repeat"] = -1 }
  local url = emu.url .. "/api/public/dock-status/" .. JOB_ID
  local script = bench_dir .. "/contenders/concurrent.lua"
  local rows = {}
  for _, in_flight in ipairs(IN_FLIGHT) do
    local walls = {}
    for _ = 1, math.min(options["repeat"], 3) do
      local figures = measured(string.format("env %s %s %s %s %s %d %d", lua_env, options.lua,
        shell_quote(script), shell_quote(url), shell_quote(key_file), CONCURRENT_CALLS, in_flight))
      walls[#walls + 1] = figures.seconds
    end
    -- Calls go out in rounds of in_flight, each round waiting DELAY: 512 calls
    -- x 50 ms / in flight, as long as in flight divides the calls.
    local ideal = math.ceil(CONCURRENT_CALLS / in_flight) * DELAY
    rows[#rows + 1] = { in_flight = in_flight, wall = median(walls), ideal = ideal,
                        ratio = median(walls) / ideal }
    io.stderr:write(string.format("concurrency: %d in flight done\n", in_flight))
  end
  emu:stop()
  return rows
end

-- Upload -----------------------------------------------------------------

local function run_upload()
  local mb = options["upload-mb"]
  local path = workdir .. "/upload.bin"
  -- Pseudo-random bytes, so that nothing on the way can compress them.
  os.execute(string.format("head -c %d /dev/urandom > %s", mb * 1000000, shell_quote(path)))
  local emu = emulator.start { api_key = BENCH_KEY, lua = "lua5.4", idle_exit = 300 }
  on_exit(function() emu:stop() end)
  local script = bench_dir .. "/contenders/upload.lua"
  local runs = {}
  for _ = 1, math.min(options["repeat"], 3) do
    runs[#runs + 1] = measured(string.format("env %s %s %s %s %s %s", lua_env, options.lua,
      shell_quote(script), shell_quote(emu.url), shell_quote(key_file), shell_quote(path)))
  end
  emu:stop()
  os.remove(path)
  local rates, above, baselines, chunks = {}, {}, {}, nil
  for i, figures in ipairs(runs) do
    rates[i] = figures.bytes / figures.seconds / 1e6
    above[i] = (figures.peak_kb - figures.baseline_kb) / 1024
    baselines[i] = figures.baseline_kb / 1024
    chunks = figures.chunks
  end
  io.stderr:write("upload done\n")
  return { mb = mb, rate = median(rates), above_mib = median(above), chunks = chunks,
           baseline_mib = median(baselines) }
end

-- Module load ------------------------------------------------------------

local function run_load()
  local order = { "none", "cjson", "libcurl", "kore_workflow" }
  local codes = {
    none = "",
    cjson = "require('cjson')",
    -- The dynamic loader mapping libcurl and the libraries it needs, which
    -- any libcurl binding pays when it loads.
    libcurl = "assert(package.loadlib('libcurl.so.4', 'curl_easy_init'))",
    kore_workflow = "require('kore_workflow')",
  }
  local walls = {}
  for _, name in ipairs(order) do
    walls[name] = {}
  end
  for _ = 1, LOAD_RUNS do
    for _, name in ipairs(order) do
      local figures = measured(string.format("env %s %s -e %s", lua_env, options.lua,
        shell_quote(codes[name])))
      walls[name][#walls[name] + 1] = figures.wall
    end
  end
  local none = median(walls.none)
  io.stderr:write("module load done\n")
  return {
    interpreter_ms = none * 1000,
    cjson_ms = (median(walls.cjson) - none) * 1000,
    libcurl_ms = (median(walls.libcurl) - none) * 1000,
    kw_ms = (median(walls.kore_workflow) - none) * 1000,
  }
end

-- Instructions per call ---------------------------------------------------

-- callgrind counts the instructions a process runs, the same from run to run
-- whatever else the machine does. A run of N + 1 calls less a run of one
-- call leaves the instructions of N calls, start-up excluded.
local INSTRUCTION_CALLS = options.quick and 50 or 2000

local function instructions(command)
  local output = read_command(string.format(
    "valgrind --tool=callgrind --trace-children=yes --callgrind-out-file=/dev/null %s 2>&1", command))
  local total = output:match("Collected : (%d+)")
  if not total then
    fail("callgrind did not count this command:\n  " .. command .. "\nIt printed:\n" .. output)
  end
  return tonumber(total)
end

local function run_instructions(url)
  local counts = {}
  for _, contender in ipairs(contenders) do
    if contender.key ~= "curl_cli" then
      local one = instructions(contender.command(url, 1))
      local many = instructions(contender.command(url, INSTRUCTION_CALLS + 1))
      counts[contender.key] = (many - one) / INSTRUCTION_CALLS
    end
  end
  io.stderr:write("instruction counts done\n")
  return counts
end

-- Main -------------------------------------------------------------------

local sequential, instruction_counts, concurrency, upload, load

local function main()
  local nginx = start_nginx()
  on_exit(function() stop_nginx(nginx) end)
  local url = string.format("http://127.0.0.1:%d/api/public/dock-status/%s", nginx.port, JOB_ID)
  sequential = run_sequential(url)
  if read_command("command -v valgrind") ~= "" then
    instruction_counts = run_instructions(url)
  end
  stop_nginx(nginx)
  concurrency = run_concurrency()
  upload = run_upload()
  load = run_load()
end

local ok, err = xpcall(main, function(e)
  if getmetatable(e) == Failure then
    return e
  end
  return debug.traceback(tostring(e), 2)
end)
for i = #cleanups, 1, -1 do
  pcall(cleanups[i])
end
os.execute("rm -rf " .. shell_quote(workdir))
if not ok then
  io.stderr:write("bench/run.lua: ", getmetatable(err) == Failure and err.message or err, "\n")
  os.exit(2)
end

-- A ratio with two decimals, or three below 0.1 so that it never reads 0.00.
local function ratio(value)
  return string.format(value < 0.1 and "%.3f" or "%.2f", value)
end

local lines = {}
local function out(format, ...)
  lines[#lines + 1] = string.format(format, ...)
end

out("Machine: %s, %s cores, Linux %s; %s; nginx %s; contenders on %s.", machine.cpu,
  machine.cores, machine.kernel, machine.libcurl, machine.nginx, machine.lua)
out("Settings: %d sequential calls per run (%d for the curl command), %d %s; "
  .. "figures are medians, and ratios medians of the ratios within each repetition; %s.",
  options.calls, math.max(50, math.floor(options.calls / 100)),
  options["repeat"], options["repeat"] == 1 and "repetition" or "repetitions",
  pin ~= "" and ("nginx and the contenders on CPU " .. PIN_CPU)
    or "taskset not found, so nothing was pinned to a CPU")
out("")
out("Sequential GET dock-status against nginx, each body parsed:")
out("")
out("| client | calls/s | x libcurl | CPU us/call | x libcurl | peak RSS MiB | x libcurl |")
out("|---|---:|---:|---:|---:|---:|---:|")
for _, contender in ipairs(contenders) do
  local r = sequential[contender.key]
  out("| %s | %.0f | %s | %.1f | %s | %.1f | %s |", contender.name, r.rate,
    ratio(r.rate_ratio), r.cpu * 1e6, ratio(r.cpu_ratio), r.rss / 1024, ratio(r.rss_ratio))
end
out("")
for _, key in ipairs({ "libcurl", "lua_curl" }) do
  local low, first, third, high = sequential.spread("kore_workflow", key)
  out("kore_workflow's calls/s over %s's, within each repetition: %.2f to %.2f, the middle "
    .. "half %.2f to %.2f.", key == "libcurl" and "raw libcurl" or "lua-curl", low, high, first,
    third)
end
out("")
out("%d status calls against the emulator delaying each reply by %.0f ms:", CONCURRENT_CALLS,
  DELAY * 1000)
out("")
out("| in flight | wall s | ideal s | x ideal |")
out("|---:|---:|---:|---:|")
for _, row in ipairs(concurrency) do
  out("| %d | %.3f | %.3f | %.2f |", row.in_flight, row.wall, row.ideal, row.ratio)
end
out("")
out("Upload of %d MB through files.upload (%d chunks) to the emulator: %.1f MB/s, peak RSS "
  .. "%.1f MiB above the %.1f MiB baseline.", upload.mb, upload.chunks, upload.rate,
  upload.above_mib, upload.baseline_mib)
out("")
out("Module load (median of %d fresh %s processes for each, less the bare interpreter's "
  .. "%.2f ms): require \"kore_workflow\" %.2f ms, require \"cjson\" %.2f ms; loading "
  .. "libcurl alone takes %.2f ms. Differences below about 0.1 ms are noise.", LOAD_RUNS,
  options.lua, load.interpreter_ms, load.kw_ms, math.max(load.cjson_ms, 0), load.libcurl_ms)
if instruction_counts then
  out("")
  out("Instructions per call (callgrind: a run of %d calls less a run of 1, so start-up "
    .. "is excluded):", INSTRUCTION_CALLS + 1)
  out("")
  out("| client | instructions/call | x libcurl |")
  out("|---|---:|---:|")
  for _, contender in ipairs(contenders) do
    local count = instruction_counts[contender.key]
    if count then
      out("| %s | %.0f | %.2f |", contender.name, count, count / instruction_counts.libcurl)
    end
  end
else
  out("")
  out("Instructions per call: skipped, because valgrind is not installed.")
end

local kw = sequential.kore_workflow
local over_curl = sequential.ratio("kore_workflow", "curl_cli", "rate")

-- The smallest number of repetitions out of n in which kore_workflow must be
-- slower for a one-sided sign test to call it slower at the 5% level: under
-- equal speed, each repetition is a coin toss.
local function sign_test_limit(n)
  local function binomial(k)
    local value = 1
    for i = 1, k do
      value = value * (n - k + i) / i
    end
    return value
  end
  local tail = 0
  for k = n, 0, -1 do
    tail = tail + binomial(k) / 2 ^ n
    if tail > 0.05 then
      return k + 1
    end
  end
  return 0
end

-- "At least as fast as" a contender on the same transfer engine, judged so
-- that measurement noise cannot decide it: met unless kore_workflow was
-- slower in significantly many repetitions.
local function at_least(key)
  local ratio_value = sequential.ratio("kore_workflow", key, "rate")
  local slower = sequential.slower("kore_workflow", key)
  local limit = sign_test_limit(options["repeat"])
  if limit > options["repeat"] then
    -- With fewer than 5 repetitions, even slower in all of them is not significant.
    return nil, string.format("%.2fx, slower in %d of %d runs (too few runs to judge)",
      ratio_value, slower, options["repeat"])
  end
  return slower < limit, string.format("%.2fx, slower in %d of %d runs (%d would be significant)",
    ratio_value, slower, options["repeat"], limit)
end
local luasocket_met, luasocket_figure = at_least("luasocket")
local lua_curl_met, lua_curl_figure = at_least("lua_curl")
local at32
for _, row in ipairs(concurrency) do
  if row.in_flight == 32 then
    at32 = row
  end
end
local targets = {
  { "workflow.status calls/s >= 0.9x raw libcurl", kw.rate_ratio >= 0.9,
    string.format("%.2fx", kw.rate_ratio) },
  { "workflow.status calls/s >= 20x the curl command", over_curl >= 20,
    string.format("%.1fx", over_curl) },
  { "workflow.status calls/s >= LuaSocket", luasocket_met, luasocket_figure },
  { "workflow.status calls/s >= Debian lua-curl", lua_curl_met, lua_curl_figure },
  { "32 in flight within 1.3x the ideal time", at32.ratio <= 1.3,
    string.format("%.2fx", at32.ratio) },
  { "upload peak RSS within 16 MB of the baseline", upload.above_mib * 1048576 <= 16e6,
    string.format("%.1f MiB", upload.above_mib) },
}
out("")
out("| target | result | figure |")
out("|---|---|---|")
local missed = 0
local unjudged = 0
for _, target in ipairs(targets) do
  local result = target[2] and "met" or "MISSED"
  if options.quick or target[2] == nil then
    result = "not judged"
    unjudged = unjudged + 1
  elseif not target[2] then
    missed = missed + 1
  end
  out("| %s | %s | %s |", target[1], result, target[3])
end

local report = table.concat(lines, "\n") .. "\n"
io.write(report)
if options.out then
  write_file(options.out, report)
end
if options.quick then
  io.write("Quick run: figures from few calls; targets are not judged.\n")
  os.exit(0)
end
if unjudged > 0 then
  io.write(string.format("%d target(s) not judged: too few repetitions.\n", unjudged))
end
if missed > 0 then
  io.write(string.format("%d target(s) missed.\n", missed))
  os.exit(1)
end
