-- kore_workflow.openresty inside a real nginx (Debian's nginx with
-- libnginx-mod-http-lua). The import of examples/nginx.conf runs while the
-- same worker keeps serving other requests. A blocking call in a handler
-- stalls the worker and logs one warning. In a phase where ngx.sleep does
-- not work, the client raises before it sends anything.
local socket = require("socket")
local cjson = require("cjson")
local emulator = require("support.emulator")
local fixtures = require("support.fixtures")
local openresty = require("support.openresty")

local KEY = fixtures.TEST_KEY
local STATUS_DELAY = 1 -- seconds the emulator takes for every dock-status reply
local PINGS = 100
-- Seconds between pings, so that the pings spread over most of the import
-- (two dock-status replies and one poll interval, about 3 s).
local PING_GAP = 0.015
local P99_LIMIT = 0.050 -- seconds
local WARNING = "kore_workflow: a blocking call ran in nginx's"
local NONBLOCKING_FORM = "require(\"kore_workflow.openresty\").client{...}"

-- Test-only locations, next to the example's. /blocking-status calls the
-- blocking client, which stalls the worker. /header-filter-call calls the
-- non-blocking client in the header_filter phase, where ngx.sleep does not
-- work. /short-sleeps sleeps for less than 1 ms through the adapter.
local TEST_LOCATIONS = [[
        location = /blocking-status {
            content_by_lua_block {
                local kw = require("kore_workflow")
                local client = kw.client { host = os.getenv("KORE_HOST"),
                                           api_key = os.getenv("KORE_API_KEY") }
                local job, err = client.workflow.status("ds-blocking-call")
                if job then
                    ngx.say(job.status)
                else
                    ngx.say("error ", err.kind, " ", tostring(err.status))
                end
            }
        }

        location = /header-filter-call {
            content_by_lua_block {
                local kwr = require("kore_workflow.openresty")
                ngx.ctx.client = kwr.client { host = os.getenv("KORE_HOST"),
                                              api_key = os.getenv("KORE_API_KEY") }
                -- This call leaves a kept-alive connection, on which the
                -- first step of the next request would already send it.
                ngx.ctx.client.workflow.status("ds-warm-up")
                ngx.say("body")
            }
            header_filter_by_lua_block {
                local kwr = require("kore_workflow.openresty")
                local _, status_error = pcall(ngx.ctx.client.workflow.status, "ds-header-filter")
                ngx.log(ngx.WARN, "status call: ", status_error)
                local _, sleep_error = pcall(kwr.adapter.sleep, 0.01)
                ngx.log(ngx.WARN, "adapter sleep: ", sleep_error)
            }
        }

        location = /short-sleeps {
            content_by_lua_block {
                local kwr = require("kore_workflow.openresty")
                for _, seconds in ipairs { 0, 0.0004, -1, 0 / 0 } do
                    kwr.adapter.sleep(seconds)
                end
                ngx.say("slept")
            }
        }
]]

-- Returns how many times needle occurs in text.
local function count_occurrences(text, needle)
  local found = 0
  local position = 1
  while true do
    local first, last = text:find(needle, position, true)
    if not first then
      return found
    end
    found = found + 1
    position = last + 1
  end
end

-- Returns the lines of text that contain needle.
local function lines_with(text, needle)
  local lines = {}
  for line in text:gmatch("[^\n]+") do
    if line:find(needle, 1, true) then
      lines[#lines + 1] = line
    end
  end
  return lines
end

-- Returns the value at a fraction of sorted values, by the nearest-rank method.
local function percentile(sorted, fraction)
  return sorted[math.max(1, math.ceil(fraction * #sorted))]
end

-- Sends `count` GET /ping requests on a fixed schedule, `gap` seconds apart,
-- each on its own connection and without waiting for earlier responses, so
-- that every ping sent while the worker is stalled waits, not only the
-- first one. Returns each ping's latency in seconds, from its scheduled send
-- time to the end of its response. Raises when a ping fails or when the
-- pings take longer than their schedule plus `timeout` seconds.
local function ping_on_schedule(server, count, gap, timeout)
  local start = socket.gettime()
  local limit = count * gap + timeout
  local deadline = start + limit
  local pending = {}
  local latencies = {}
  local sent = 0
  while sent < count or next(pending) do
    if socket.gettime() >= deadline then
      error(("the pings took longer than %.1f s"):format(limit))
    end
    while sent < count and start + sent * gap <= socket.gettime() do
      local connection = assert(server:send("GET", "/ping", timeout))
      connection:settimeout(0)
      pending[connection] = { scheduled = start + sent * gap, index = sent + 1, chunks = {} }
      sent = sent + 1
    end

    local waiting = {}
    for connection in pairs(pending) do
      waiting[#waiting + 1] = connection
    end
    local wait = 0.05
    if sent < count then
      wait = math.max(0, start + sent * gap - socket.gettime())
    end
    local readable = socket.select(waiting, nil, wait)
    for _, connection in ipairs(readable) do
      local ping = pending[connection]
      local data, err, partial = connection:receive(4096)
      ping.chunks[#ping.chunks + 1] = data or partial
      if err == "closed" then
        latencies[ping.index] = socket.gettime() - ping.scheduled
        connection:close()
        pending[connection] = nil
        local response = table.concat(ping.chunks)
        assert(response:find("^HTTP/1%.%d 200 ") and response:find("\r\n\r\npong\n$"),
          ("ping %d got an unexpected response: %s"):format(ping.index, response:sub(1, 200)))
      elseif err ~= nil and err ~= "timeout" then
        error(("ping %d failed: %s"):format(ping.index, err))
      end
    end
  end
  return latencies
end

describe("kore_workflow.openresty in nginx", function()
  local emu, server

  setup(function()
    openresty.build_core()
    emu = emulator.start { api_key = KEY, polls = 1 }
    emu:script {
      method = "GET",
      path_pattern = "^/api/public/dock%-status/",
      ["repeat"] = -1,
      responses = { { delay = STATUS_DELAY, passthrough = true } },
    }
    server = openresty.start {
      env = {
        KORE_HOST = emu.url,
        KORE_EXPORT_DIR = openresty.root .. "/" .. fixtures.EXAMPLE_DIR,
      },
      secret_env = { KORE_API_KEY = KEY },
      server_config = TEST_LOCATIONS
        .. "        include " .. openresty.root .. "/examples/nginx.conf;\n",
    }
  end)

  teardown(function()
    if server then
      server:stop()
    end
    if emu then
      emu:stop()
    end
  end)

  it("serves pings during a non-blocking import", function()
    local warnings_before = count_occurrences(server:error_log(), WARNING)
    local import_started = socket.gettime()
    local import = assert(server:send("POST", "/import/" .. fixtures.WORKFLOW_ID, 60))
    finally(function()
      import:close()
    end)

    local latencies = ping_on_schedule(server, PINGS, PING_GAP, 10)
    local readable = socket.select({ import }, nil, 0)
    local import_running = #readable == 0

    local status, body = openresty.read_response(import)
    local import_seconds = socket.gettime() - import_started
    table.sort(latencies)
    local p50 = percentile(latencies, 0.50)
    local p99 = percentile(latencies, 0.99)
    print(("ping p50 %.1f ms, p99 %.1f ms, max %.1f ms over %d requests during a %.1f s import")
      :format(p50 * 1000, p99 * 1000, latencies[#latencies] * 1000, PINGS, import_seconds))

    assert.equal(200, status, body)
    local reply = cjson.decode(body)
    assert.is_true(reply.ok)
    assert.equal("SUCCESS", reply.job.status)
    assert.is_string(reply.job.dockStatusId)
    assert.is_true(import_seconds >= STATUS_DELAY,
      ("the import took %.3f s, less than one dock-status reply"):format(import_seconds))
    assert.is_true(p99 < P99_LIMIT, ("ping p99 is %.1f ms"):format(p99 * 1000))
    assert.is_true(import_running, "the import ended before the last ping, so the pings did not overlap it")
    assert.is_true(emu:workflow(fixtures.WORKFLOW_ID).imported)

    assert.equal(warnings_before, count_occurrences(server:error_log(), WARNING))
  end)

  it("turns sleeps under 1 ms into 1 ms", function()
    local status, body = server:request("GET", "/short-sleeps", 10)
    assert.equal(200, status, body)
    assert.equal("slept\n", body)
    -- ngx.sleep(0) would log "ngx.sleep(0) called without delayed events
    -- patch" at level warn on Debian's lua module.
    assert.is_nil(server:error_log():find("ngx.sleep(0)", 1, true))
  end)

  it("stalls pings during a blocking call", function()
    local blocking = assert(server:send("GET", "/blocking-status", 30))
    socket.sleep(0.2)
    local status, body, seconds = server:request("GET", "/ping", 10)
    local blocking_status, blocking_body = openresty.read_response(blocking)
    print(("a ping sent during a blocking call took %.0f ms"):format(seconds * 1000))

    assert.equal(200, status, body)
    assert.is_true(seconds > STATUS_DELAY / 2,
      ("the ping took %.3f s, so the blocking call did not stall the worker"):format(seconds))
    assert.equal(200, blocking_status, blocking_body)
    assert.equal("error http 404\n", blocking_body)
  end)

  it("warns once about blocking calls", function()
    for _ = 1, 2 do
      local status, body = server:request("GET", "/blocking-status", 30)
      assert.equal(200, status, body)
      assert.equal("error http 404\n", body)
    end

    local warnings = lines_with(server:error_log(), WARNING)
    assert.equal(1, #warnings)
    assert.matches("[warn]", warnings[1], 1, true)
    assert.matches("content phase", warnings[1], 1, true)
    assert.matches(NONBLOCKING_FORM, warnings[1], 1, true)
  end)

  it("raises in the header_filter phase before sending", function()
    local status, body = server:request("GET", "/header-filter-call", 10)
    assert.equal(200, status, body)

    local log = server:error_log()
    local status_lines = lines_with(log, "status call: ")
    assert.equal(1, #status_lines)
    assert.matches("cannot wait in nginx's header_filter phase", status_lines[1], 1, true)
    local sleep_lines = lines_with(log, "adapter sleep: ")
    assert.equal(1, #sleep_lines)
    assert.matches("cannot wait in nginx's header_filter phase", sleep_lines[1], 1, true)
    for _, request in ipairs(emu:requests()) do
      assert.is_nil(request.path:find("ds-header-filter", 1, true), request.path)
    end
  end)

  it("keeps the key out of config, command lines and log", function()
    local config = fixtures.read_file(server.prefix .. "/nginx.conf")
    assert.is_nil(config:find(KEY, 1, true))
    assert.matches("env KORE_API_KEY;", config, 1, true)
    local processes = { server.pid }
    local children = fixtures.read_file(("/proc/%s/task/%s/children"):format(server.pid, server.pid))
    for child in children:gmatch("%d+") do
      processes[#processes + 1] = child
    end
    assert.equal(2, #processes)
    for _, pid in ipairs(processes) do
      local command_line = fixtures.read_file("/proc/" .. pid .. "/cmdline")
      assert.matches("nginx", command_line, 1, true)
      assert.is_nil(command_line:find(KEY, 1, true))
    end
    assert.is_nil(server:error_log():find(KEY, 1, true))
  end)
end)
