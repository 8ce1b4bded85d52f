-- Fault suite: the client against a server that misbehaves, over real
-- loopback sockets. The emulator's script entries (delay, stall, trickle,
-- raw, close, stream, read_rate, drop, reset) make each fault; see the header
-- of lua/kore_workflow/mock.lua. Limits are 1 s where the case is about a
-- limit, and time assertions leave a wide margin and print the measured figure.
local kw = require "kore_workflow"
local socket = require "socket"
local emulator = require "support.emulator"
local fixtures = require "support.fixtures"

local KEY = fixtures.TEST_KEY
local WORKFLOW_ID = fixtures.WORKFLOW_ID
local IMPORT_PATH = "/api/public/workflows/" .. WORKFLOW_ID .. "/import"
local FILES_PATH = "/api/public/files"
local IMPORT_FIELDS = { workflowDataFileId = "f1", flowDataFileId = "f2", envVariablesFileId = "f3" }
local MIB = 1024 * 1024

-- Number of fault cases that ran, printed when the file ends.
local cases_run = 0

-- Declares a fault case: a busted test that also counts towards the summary.
local function fault(name, body)
  it(name, function()
    cases_run = cases_run + 1
    body()
  end)
end

local function status_path(id)
  return "/api/public/dock-status/" .. id
end

local function job_body(id, status, extra)
  local body = { _id = id, status = status or "SUCCESS" }
  for k, v in pairs(extra or {}) do
    body[k] = v
  end
  return body
end

-- Calls fn and returns the seconds it took, then its results.
local function timed(fn, ...)
  local started = socket.gettime()
  local results = table.pack(fn(...))
  return socket.gettime() - started, table.unpack(results, 1, results.n)
end

-- Returns the emulator's request log without control requests, filtered to one path when given.
local function requests_to(emu, path)
  local found = {}
  for _, record in ipairs(emu:requests()) do
    if path == nil or record.path == path then
      found[#found + 1] = record
    end
  end
  return found
end

-- Returns a sleep function for wait that records each delay without sleeping.
local function recording_sleep()
  local sleeps = {}
  return sleeps, function(seconds)
    sleeps[#sleeps + 1] = seconds
  end
end

local function assert_finite_sleeps(sleeps)
  for i, seconds in ipairs(sleeps) do
    assert.is_number(seconds)
    assert.is_true(seconds == seconds, ("sleep %d is NaN"):format(i))
    assert.is_true(seconds < math.huge, ("sleep %d is infinite"):format(i))
    assert.is_true(seconds >= 0, ("sleep %d is negative: %s"):format(i, tostring(seconds)))
  end
end

-- Runs a shell command and returns its standard output. Raises when it fails.
local function run(command)
  local handle = assert(io.popen(command, "r"))
  local output = handle:read("*a")
  local ok, _, code = handle:close()
  assert(ok, ("command failed with status %s: %s"):format(tostring(code), command))
  return output
end

local function shell_quote(text)
  return "'" .. text:gsub("'", "'\\''") .. "'"
end

-- Returns the SHA-256 of a file as hex. The file goes in on standard input,
-- because sha256sum escapes a name with a line break in its output.
local function sha256_of_file(path)
  return run("sha256sum < " .. shell_quote(path)):match("^(%x+)")
end

-- Returns this process's resident set size in bytes, from /proc/self/status.
local function resident_bytes()
  local kilobytes = fixtures.read_file("/proc/self/status"):match("VmRSS:%s*(%d+) kB")
  return tonumber(kilobytes) * 1024
end

local function assert_timeout(err, elapsed, limit)
  assert.is_true(elapsed < limit, ("the call ended after %.2f s, not within %.2f s"):format(elapsed, limit))
  assert.is_table(err)
  assert.equal("timeout", err.kind)
  assert.is_nil(err.status, "a timed-out transfer carries an HTTP status: " .. tostring(err.status))
  assert.is_true(err.retryable)
end

describe("faults", function()
  local emu

  setup(function()
    emu = emulator.start { api_key = KEY }
  end)

  teardown(function()
    emu:stop()
    print(("\nfault suite: %d fault cases run"):format(cases_run))
  end)

  before_each(function()
    emu:reset()
  end)

  -- Every result, error and verbose log line of the fault suite's clients,
  -- searched for the key by the last spec of this file.
  local outputs = {}

  local function keep(...)
    for i = 1, select("#", ...) do
      local value = select(i, ...)
      outputs[#outputs + 1] = value
      if type(value) == "table" then
        outputs[#outputs + 1] = tostring(value)
      end
    end
    return ...
  end

  local function recorded(call)
    return function(...)
      return keep(call(...))
    end
  end

  local function new_client(options)
    local settings = {
      host = emu.url, api_key = KEY, verbose = true,
      logger = function(line) outputs[#outputs + 1] = line end,
    }
    for k, v in pairs(options or {}) do
      settings[k] = v
    end
    local client = kw.client(settings)
    for _, namespace in ipairs { "workflow", "files" } do
      for name, call in pairs(client[namespace]) do
        client[namespace][name] = recorded(call)
      end
    end
    local methods = getmetatable(client).__index
    for _, name in ipairs { "wait", "import_files", "download", "export_to" } do
      client[name] = recorded(methods[name])
    end
    return client
  end

  local function script_status(id, responses, repeat_count)
    emu:script { method = "GET", path = status_path(id), responses = responses, ["repeat"] = repeat_count }
  end

  describe("timeouts and broken transfers", function()
    fault("status call times out on a silent server", function()
      script_status("ds-silent", { { delay = 5, body = job_body("ds-silent") } })
      local client = new_client { timeout = 1 }
      local elapsed, job, err = timed(client.workflow.status, "ds-silent")
      print(("\nsilent server: timed out after %.2f s (timeout 1 s)"):format(elapsed))
      assert.is_nil(job)
      assert_timeout(err, elapsed, 3)
      assert.matches("timed out", err.message, 1, true)
    end)

    fault("stall limit catches a silent server", function()
      script_status("ds-silent-stall", { { delay = 5, body = job_body("ds-silent-stall") } })
      local client = new_client { timeout = 30, stall_timeout = 1 }
      local elapsed, job, err = timed(client.workflow.status, "ds-silent-stall")
      print(("\nsilent server: stalled after %.2f s (stall_timeout 1 s, timeout 30 s): %s"):format(elapsed,
        tostring(err)))
      assert.is_nil(job)
      assert_timeout(err, elapsed, 3)
      assert.is_nil(err.message:find("limit 30", 1, true),
        "the message names the 30 s timeout, but the 1 s stall limit ended the call")
    end)

    fault("upload to a silent server hits the stall limit", function()
      -- Uploads have no overall timeout, so the stall limit is their only guard.
      emu:script { method = "POST", path = FILES_PATH, responses = { { delay = 10, passthrough = true } } }
      local client = new_client { stall_timeout = 1 }
      local elapsed, file, err = timed(client.files.upload, fixtures.EXAMPLE_DIR .. "/env_variables.json")
      print(("\nsilent upload: ended after %.2f s (stall_timeout 1 s): %s"):format(elapsed, tostring(err)))
      assert.is_true(elapsed < 3, ("the upload ended after %.2f s"):format(elapsed))
      assert.is_nil(file)
      assert.equal("timeout", err.kind)
    end)

    fault("head then a stalled body times out", function()
      script_status("ds-stall", { { body = job_body("ds-stall"), stall = 5 } })
      local client = new_client { timeout = 1 }
      local elapsed, job, err = timed(client.workflow.status, "ds-stall")
      print(("\nstalled body: timed out after %.2f s (timeout 1 s)"):format(elapsed))
      assert.is_nil(job)
      assert_timeout(err, elapsed, 3)
    end)

    fault("body stalled midway times out", function()
      local raw = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 60\r\n\r\n"
        .. '{"_id":"ds-mid","sta'
      script_status("ds-mid", { { raw = raw } })
      local client = new_client { timeout = 30, stall_timeout = 1 }
      local elapsed, job, err = timed(client.workflow.status, "ds-mid")
      print(("\nbody stalled midway: timed out after %.2f s (stall_timeout 1 s)"):format(elapsed))
      assert.is_nil(job)
      assert_timeout(err, elapsed, 3)
    end)

    fault("trickled body is cut by the timeout", function()
      -- One byte per second is at the client's low-speed limit of 1 byte/s, so the
      -- stall limit (30 s by default) is no guard here and the overall timeout must end it.
      script_status("ds-trickle", { { body = job_body("ds-trickle"), trickle = 1 } })
      local client = new_client { timeout = 1 }
      local elapsed, job, err = timed(client.workflow.status, "ds-trickle")
      print(("\ntrickled body: timed out after %.2f s (timeout 1 s)"):format(elapsed))
      assert.is_nil(job)
      assert_timeout(err, elapsed, 3)
    end)

    fault("wait deadline cuts a silent request", function()
      script_status("ds-silent-wait", { { delay = 10, body = job_body("ds-silent-wait") } })
      local client = new_client()
      local elapsed, job, err = timed(client.wait, client, "ds-silent-wait", { timeout = 1.5 })
      print(("\nwait with a 1.5 s deadline on a silent server: ended after %.2f s"):format(elapsed))
      assert.is_nil(job)
      assert.equal("timeout", err.kind)
      assert.is_true(elapsed < 3, ("wait ended after %.2f s"):format(elapsed))
    end)

    fault("slow but moving upload completes", function()
      local size = 2 * 1000 * 1000
      local rate = 700 * 1000
      local path = fixtures.write_temp(("0123456789abcdef"):rep(size / 16), ".json")
      finally(function()
        os.remove(path)
      end)
      emu:script { method = "POST", path = FILES_PATH, responses = { { read_rate = rate, passthrough = true } } }
      local client = new_client { timeout = 1 }
      local elapsed, file, err = timed(client.files.upload, path)
      print(("\nslow upload: %d bytes in %.2f s at %d bytes/s, with timeout 1 s"):format(size, elapsed, rate))
      assert.is_nil(err)
      assert.is_string(file.fileId)
      -- Less than this and the upload was not slow, so the case would prove nothing.
      assert.is_true(elapsed > 2, ("upload took only %.2f s"):format(elapsed))
      local uploads = requests_to(emu, FILES_PATH)
      assert.equal(1, #uploads)
      assert.equal(size, uploads[1].parts[1].size)
    end)

    fault("short Content-Length body is an error", function()
      -- The 20 bytes that arrive are a complete job record, so a client that
      -- decoded a truncated body would return a SUCCESS job here.
      local raw = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n"
        .. '{"status":"SUCCESS"}'
      script_status("ds-short", { { raw = raw, close = true } })
      local client = new_client { timeout = 5 }
      local job, err = client.workflow.status("ds-short")
      print("\nshort body: " .. tostring(err))
      assert.is_nil(job)
      assert.equal("network", err.kind)
      assert.matches("closed", err.message:lower(), 1, true)
      assert.is_nil(err.status, "a truncated transfer carries an HTTP status: " .. tostring(err.status))
    end)

    fault("chunked body closed early is an error", function()
      local raw = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        .. '14\r\n{"status":"SUCCESS"}\r\n'
      script_status("ds-chunks", { { raw = raw, close = true } })
      local client = new_client { timeout = 5 }
      local job, err = client.workflow.status("ds-chunks")
      print("\nchunked body closed early: " .. tostring(err))
      assert.is_nil(job)
      assert.equal("network", err.kind)
      assert.matches("closed", err.message:lower(), 1, true)
      assert.is_nil(err.status, "a truncated transfer carries an HTTP status: " .. tostring(err.status))
    end)

    fault("late response never reaches next call", function()
      script_status("ds-late", { { delay = 2, body = job_body("ds-late", "SUCCESS") } })
      script_status("ds-next", { { body = job_body("ds-next", "IN_PROGRESS") } })
      script_status("ds-third", { { body = job_body("ds-third", "FAILED") } })
      local client = new_client { timeout = 1 }
      local late, late_err = client.workflow.status("ds-late")
      assert.is_nil(late)
      assert.equal("timeout", late_err.kind)

      local next_job, next_err = client.workflow.status("ds-next")
      assert.is_nil(next_err)
      assert.equal("ds-next", next_job.dockStatusId)
      assert.equal("IN_PROGRESS", next_job.status)

      -- By now the late response has been written, so a reused connection would hold it.
      socket.sleep(1.5)
      local third, third_err = client.workflow.status("ds-third")
      assert.is_nil(third_err)
      assert.equal("ds-third", third.dockStatusId)
      assert.equal("FAILED", third.status)

      local log = emu:requests()
      assert.equal(3, #log)
      print(("\nconnections: late %d, next %d, third %d"):format(log[1].connection, log[2].connection,
        log[3].connection))
      assert.are_not.equal(log[1].connection, log[2].connection)
      assert.are_not.equal(log[1].connection, log[3].connection)
    end)
  end)

  describe("statuses, bodies and retries", function()
    for _, status in ipairs { 400, 401, 403, 404 } do
      for _, shape in ipairs { "message", "errors" } do
        fault(("HTTP %d with an %s body"):format(status, shape), function()
          local text = ("server text for %d in %s"):format(status, shape)
          local body = shape == "message" and { message = text } or { errors = { { msg = text } } }
          local id = ("ds-%d-%s"):format(status, shape)
          script_status(id, { { status = status, body = body } })
          local job, err = new_client().workflow.status(id)
          assert.is_nil(job)
          assert.equal("http", err.kind)
          assert.equal(status, err.status)
          assert.matches(text, err.message, 1, true)
          assert.is_false(err.retryable)
        end)
      end
    end

    fault("wait ends at once on 404", function()
      local client = new_client()
      local elapsed, job, err = timed(client.wait, client, "ds-missing", { timeout = 10 })
      assert.is_nil(job)
      assert.equal("http", err.kind)
      assert.equal(404, err.status)
      assert.equal(1, #requests_to(emu))
      assert.is_true(elapsed < 1, ("wait took %.2f s"):format(elapsed))
    end)

    for _, status in ipairs { 502, 503, 504 } do
      fault(("wait retries an empty %d"):format(status), function()
        local id = "ds-gateway-" .. status
        script_status(id, { { status = status }, { body = job_body(id, "SUCCESS") } })
        local sleeps, sleep = recording_sleep()
        local job, err = new_client():wait(id, { timeout = 30, sleep = sleep })
        assert.is_nil(err)
        assert.equal("SUCCESS", job.status)
        assert.equal(2, #requests_to(emu))
        assert.equal(1, #sleeps)
      end)
    end

    -- Waits on a dock status that first returns 429 with the given
    -- Retry-After and then SUCCESS. Returns the gap between the two requests'
    -- arrivals at the emulator.
    local function retry_gap(id, retry_after)
      script_status(id, {
        { status = 429, headers = { ["retry-after"] = retry_after }, body = { message = "slow down" } },
        { body = job_body(id, "SUCCESS") },
      })
      local job, err = new_client { timeout = 5 }:wait(id, { timeout = 20 })
      assert.is_nil(err)
      assert.equal("SUCCESS", job.status)
      local log = requests_to(emu)
      assert.equal(2, #log)
      return log[2].received_at - log[1].received_at
    end

    fault("429 Retry-After seconds delays the retry", function()
      local gap = retry_gap("ds-429-seconds", "2")
      print(("\nretry-after: 2 -> next request %.3f s later"):format(gap))
      assert.is_true(gap >= 1.99, ("next request came %.3f s later"):format(gap))
      assert.is_true(gap < 5, ("next request came %.3f s later"):format(gap))
    end)

    fault("429 Retry-After date delays the retry", function()
      -- HTTP dates have whole seconds, so a date 3 s after this second is 2 to 3 s away.
      local date = os.date("!%a, %d %b %Y %H:%M:%S GMT", os.time() + 3)
      local gap = retry_gap("ds-429-date", date)
      print(("\nretry-after: %s -> next request %.3f s later"):format(date, gap))
      assert.is_true(gap >= 1.9, ("next request came %.3f s later"):format(gap))
      assert.is_true(gap < 5, ("next request came %.3f s later"):format(gap))
    end)

    fault("day-long Retry-After ends at the deadline", function()
      script_status("ds-day", { { status = 429, headers = { ["Retry-After"] = "86400" } } }, -1)
      local client = new_client()
      local elapsed, job, err = timed(client.wait, client, "ds-day", { timeout = 10 })
      print(("\nretry-after 86400 with a 10 s deadline: ended after %.2f s"):format(elapsed))
      assert.is_nil(job)
      assert.equal("timeout", err.kind)
      assert.is_true(err.rate_limited)
      assert.is_true(elapsed >= 9, ("ended after %.2f s"):format(elapsed))
      assert.is_true(elapsed < 13, ("ended after %.2f s"):format(elapsed))
      -- The server allows no second request before the deadline, so none is sent.
      assert.equal(1, #requests_to(emu))
    end)

    fault("503 backoff is capped with full jitter", function()
      -- Two processes started together, each with the default random source,
      -- record their retry delays against six 503s and then a 404.
      local retries = 6
      local max_interval = 4
      local child = fixtures.write_temp(table.concat({
        'local kw = require "kore_workflow"',
        'local fixtures = require "support.fixtures"',
        "local client = kw.client { host = arg[1], api_key = fixtures.TEST_KEY, timeout = 5 }",
        "local delays = {}",
        "local _, err = client:wait(arg[2], { timeout = 600, max_interval = " .. max_interval .. ",",
        "  sleep = function(s) delays[#delays + 1] = ('%.17g'):format(s) end })",
        "print(tostring(err and err.status) .. ' ' .. table.concat(delays, ' '))",
      }, "\n"), ".lua")
      finally(function()
        os.remove(child)
      end)
      local lua = os.getenv("KORE_TEST_LUA") or "lua5.4"
      local environment = ("LUA_PATH=%s LUA_CPATH=%s "):format(shell_quote(package.path), shell_quote(package.cpath))
      local handles = {}
      for i = 1, 2 do
        script_status("ds-jitter-" .. i, { { status = 503 } }, retries)
        handles[i] = assert(io.popen(environment .. lua .. " " .. shell_quote(child) .. " "
          .. shell_quote(emu.url) .. " ds-jitter-" .. i .. " 2>&1", "r"))
      end
      local sequences = {}
      for i = 1, 2 do
        local output = handles[i]:read("*a")
        handles[i]:close()
        local status, rest = output:match("^(%S+) ?([^\n]*)")
        assert.equal("404", status, "child process output: " .. output)
        local delays = {}
        for value in rest:gmatch("%S+") do
          delays[#delays + 1] = tonumber(value)
        end
        sequences[i] = delays
        print(("\nprocess %d retry delays: %s"):format(i, rest))
      end
      for _, delays in ipairs(sequences) do
        assert.equal(retries, #delays)
        assert_finite_sleeps(delays)
        local below_ceiling = 0
        for attempt, delay in ipairs(delays) do
          local ceiling = math.min(max_interval, 2 ^ (attempt - 1))
          assert.is_true(delay <= ceiling, ("delay %d is %.3f s, above %g s"):format(attempt, delay, ceiling))
          if delay < 0.99 * ceiling then
            below_ceiling = below_ceiling + 1
          end
        end
        assert.is_true(below_ceiling > 0, "every delay sits at its ceiling, so there is no jitter")
      end
      assert.are_not.same(sequences[1], sequences[2])
    end)
  end)

  describe("import is never resent", function()
    local function import_once(client)
      local job, err = client.workflow.import(WORKFLOW_ID, IMPORT_FIELDS)
      assert.is_nil(job)
      assert.equal(1, #requests_to(emu, IMPORT_PATH))
      assert.is_false(err.retryable)
      return err
    end

    fault("import answered after the timeout", function()
      emu:script { method = "POST", path = IMPORT_PATH, responses = { { delay = 2, body = job_body("ds-i") } } }
      local err = import_once(new_client { timeout = 1 })
      print("\nslow import: " .. tostring(err))
      assert.equal("outcome_unknown", err.kind)
    end)

    fault("import connection reset after the body", function()
      emu:script { method = "POST", path = IMPORT_PATH, responses = { { reset = true } } }
      local err = import_once(new_client { timeout = 5 })
      print("\nreset import: " .. tostring(err))
      assert.equal("outcome_unknown", err.kind)
    end)

    fault("import connection dropped after the body", function()
      emu:script { method = "POST", path = IMPORT_PATH, responses = { { drop = true } } }
      local err = import_once(new_client { timeout = 5 })
      assert.equal("outcome_unknown", err.kind)
    end)

    fault("import answered with 502", function()
      emu:script { method = "POST", path = IMPORT_PATH, responses = { { status = 502, body = "bad gateway" } } }
      local err = import_once(new_client { timeout = 5 })
      assert.equal("http", err.kind)
      assert.equal(502, err.status)
    end)

    fault("import_files sends one import after a 502", function()
      emu:script { method = "POST", path = IMPORT_PATH, responses = { { status = 502 } } }
      local job, err = new_client():import_files(WORKFLOW_ID, fixtures.EXAMPLE_DIR, { timeout = 10 })
      assert.is_nil(job)
      assert.equal(502, err.status)
      assert.equal(1, #requests_to(emu, IMPORT_PATH))
      assert.equal(3, #requests_to(emu, FILES_PATH))
    end)

    fault("import to a refused port is retryable", function()
      local listener = assert(socket.bind("127.0.0.1", 0))
      local _, port = listener:getsockname()
      listener:close()
      local client = kw.client { host = "http://127.0.0.1:" .. port, api_key = KEY }
      local job, err = client.workflow.import(WORKFLOW_ID, IMPORT_FIELDS)
      assert.is_nil(job)
      assert.equal("network", err.kind)
      assert.is_true(err.retryable)
    end)
  end)

  describe("content encoding", function()
    fault("gzip body is decoded", function()
      local json = '{"_id":"ds-gzip","status":"SUCCESS","note":"' .. ("compressible "):rep(50) .. '"}'
      local path = fixtures.write_temp(json)
      finally(function()
        os.remove(path)
      end)
      local gzipped = run("gzip -c -n " .. shell_quote(path))
      assert.equal("\31\139", gzipped:sub(1, 2))
      assert.is_true(#gzipped < #json)
      script_status("ds-gzip", { { body = gzipped,
        headers = { ["Content-Encoding"] = "gzip", ["Content-Type"] = "application/json" } } })
      local job, err = new_client().workflow.status("ds-gzip")
      assert.is_nil(err)
      assert.equal("SUCCESS", job.status)
      assert.equal(("compressible "):rep(50), job.note)
    end)

    fault("body mislabelled as gzip is rejected", function()
      script_status("ds-not-gzip", { { body = job_body("ds-not-gzip"),
        headers = { ["Content-Encoding"] = "gzip", ["Content-Type"] = "application/json" } } })
      script_status("ds-after-gzip", { { body = job_body("ds-after-gzip") } })
      local client = new_client()
      local job, err = client.workflow.status("ds-not-gzip")
      print("\nmislabelled gzip: " .. tostring(err))
      assert.is_nil(job)
      assert.equal("invalid_response", err.kind)
      assert.matches("Content-Encoding", err.message, 1, true)
      local after = client.workflow.status("ds-after-gzip")
      assert.equal("SUCCESS", after.status)
    end)

    fault("deflate bodies are decoded, in the zlib format and raw", function()
      local json = '{"_id":"ds-deflate","status":"SUCCESS","note":"' .. ("packed "):rep(40) .. '"}'
      local path = fixtures.write_temp(json)
      finally(function()
        os.remove(path)
      end)
      local compress = "python3 -c 'import sys, zlib; data = zlib.compress(sys.stdin.buffer.read()); "
        .. "sys.stdout.buffer.write(data if sys.argv[1] == \"zlib\" else data[2:-4])' %s < "
        .. shell_quote(path)
      for _, format in ipairs { "zlib", "raw" } do
        local deflated = run(compress:format(format))
        assert.is_true(#deflated > 0 and #deflated < #json)
        script_status("ds-deflate", { { body = deflated,
          headers = { ["Content-Encoding"] = "deflate", ["Content-Type"] = "application/json" } } })
        local job, err = new_client().workflow.status("ds-deflate")
        assert.is_nil(err, format)
        assert.equal(("packed "):rep(40), job.note)
      end
    end)

    fault("a gzip body of nothing is reported as empty", function()
      local path = fixtures.write_temp("")
      finally(function()
        os.remove(path)
      end)
      local gzipped = run("gzip -c -n " .. shell_quote(path))
      assert.equal("\31\139", gzipped:sub(1, 2))
      script_status("ds-empty-gzip", { { body = gzipped,
        headers = { ["Content-Encoding"] = "gzip", ["Content-Type"] = "application/json" } } })
      local job, err = new_client().workflow.status("ds-empty-gzip")
      assert.is_nil(job)
      assert.equal("invalid_response", err.kind)
      assert.matches("HTTP 200 with an empty body", err.message, 1, true)
    end)

    fault("a coding the client does not decode is named in the error", function()
      script_status("ds-brotli", { { body = "\x1b\x03\x00",
        headers = { ["Content-Encoding"] = "br", ["Content-Type"] = "application/json" } } })
      local job, err = new_client().workflow.status("ds-brotli")
      assert.is_nil(job)
      assert.equal("invalid_response", err.kind)
      assert.matches("Content-Encoding (br is not a coding the client decodes)", err.message, 1, true)
    end)

    fault("an HTTP error with an undecodable body still reports its status", function()
      script_status("ds-gone", { { status = 503, body = "not gzip",
        headers = { ["Content-Encoding"] = "gzip", ["Content-Type"] = "application/json" } } })
      local job, err = new_client().workflow.status("ds-gone")
      assert.is_nil(job)
      assert.equal("http", err.kind)
      assert.equal(503, err.status)
    end)

    fault("a gzip body past max_response is cut off after decoding", function()
      local json = '{"_id":"ds-bomb","status":"SUCCESS","pad":"' .. ("0"):rep(200000) .. '"}'
      local path = fixtures.write_temp(json)
      finally(function()
        os.remove(path)
      end)
      local gzipped = run("gzip -c -n " .. shell_quote(path))
      assert.is_true(#gzipped < 2000)
      script_status("ds-bomb", { { body = gzipped,
        headers = { ["Content-Encoding"] = "gzip", ["Content-Type"] = "application/json" } } })
      local job, err = new_client().workflow.status("ds-bomb", { max_response = 100000 })
      assert.is_nil(job)
      assert.equal("invalid_response", err.kind)
      assert.matches("larger than the limit of 100000 bytes", err.message, 1, true)
    end)

    fault("JSON calls ask for no content coding", function()
      script_status("ds-plain", { { body = job_body("ds-plain") } })
      assert(new_client().workflow.status("ds-plain"))
      local record = requests_to(emu, status_path("ds-plain"))[1]
      for name in pairs(record.headers) do
        assert.are_not.equal("accept-encoding", name:lower())
      end
    end)
  end)

  describe("JSON", function()
    for _, number in ipairs { "NaN", "Infinity", "-Infinity", "0x10" } do
      fault("number " .. number .. " is rejected", function()
        script_status("ds-number", { { body = '{"_id":"ds-number","status":"SUCCESS","percentageComplete":'
          .. number .. "}" } })
        local job, err = new_client().workflow.status("ds-number")
        assert.is_nil(job)
        assert.equal("invalid_response", err.kind)
      end)
    end

    fault("overflowing percentage never makes a bad sleep", function()
      local progress = '{"_id":"ds-huge-pct","status":"IN_PROGRESS","percentageComplete":1e999}'
      script_status("ds-huge-pct", { { body = progress }, { body = progress },
        { body = job_body("ds-huge-pct", "SUCCESS") } })
      local sleeps, sleep = recording_sleep()
      local job, err = new_client():wait("ds-huge-pct", { timeout = 30, sleep = sleep })
      assert.is_nil(err)
      assert.equal("SUCCESS", job.status)
      assert.equal(2, #sleeps)
      assert_finite_sleeps(sleeps)
    end)

    fault("huge Retry-After never makes a bad sleep", function()
      script_status("ds-huge-ra", { { status = 503, headers = { ["Retry-After"] = "99999999999999999999" } } }, -1)
      local sleeps, sleep = recording_sleep()
      local job, err = new_client():wait("ds-huge-ra", { timeout = 5, sleep = sleep })
      print(("\nRetry-After 99999999999999999999: %d sleeps, retry_after %s, %s"):format(#sleeps,
        tostring(err and err.retry_after), tostring(err)))
      assert.is_nil(job)
      assert.equal("timeout", err.kind)
      assert.is_true(#sleeps > 0)
      assert_finite_sleeps(sleeps)
    end)

    fault("deeply nested arrays are an error", function()
      script_status("ds-deep", { { body = ("["):rep(100000) } })
      script_status("ds-after-deep", { { body = job_body("ds-after-deep") } })
      local client = new_client()
      local ok, job, err = pcall(client.workflow.status, "ds-deep")
      assert.is_true(ok, "the call raised: " .. tostring(job))
      assert.is_nil(job)
      assert.equal("invalid_response", err.kind)
      local after = client.workflow.status("ds-after-deep")
      assert.equal("SUCCESS", after.status)
    end)

    for _, chunked in ipairs { false, true } do
      local framing = chunked and "chunked" or "Content-Length"
      fault("200 MB " .. framing .. " body is cut off", function()
        script_status("ds-huge-body", { { stream = { bytes = 200 * MIB, chunk = "x", chunked = chunked } } })
        collectgarbage()
        local before = resident_bytes()
        local elapsed, job, err = timed(new_client().workflow.status, "ds-huge-body")
        collectgarbage()
        local growth = resident_bytes() - before
        print(("\n200 MB %s body: ended after %.2f s, RSS grew by %.1f MB: %s"):format(framing, elapsed,
          growth / MIB, tostring(err)))
        assert.is_nil(job)
        assert.equal("invalid_response", err.kind)
        assert.matches("larger than the limit of " .. 4 * MIB .. " bytes", err.message, 1, true)
        assert.is_true(growth < 64 * MIB, ("RSS grew by %.1f MB"):format(growth / MIB))
      end)
    end

    fault("host cjson settings do not reach the client", function()
      local cjson = require "cjson"
      local host_setting = cjson.decode_invalid_numbers()
      finally(function()
        cjson.decode_invalid_numbers(host_setting)
      end)
      -- The host allows NaN in its own decoder, but the client must still reject it.
      cjson.decode_invalid_numbers(true)
      local client = new_client()
      script_status("ds-host-nan", { { body = '{"_id":"ds-host-nan","status":"SUCCESS","p":NaN}' } })
      local job, err = client.workflow.status("ds-host-nan")
      assert.is_nil(job)
      assert.equal("invalid_response", err.kind)
      assert.is_true((pcall(cjson.decode, "[NaN]")))
    end)
  end)

  describe("uploads", function()
    fault("2 MB upload is quick and sends no Expect", function()
      local size = 2 * MIB
      local path = fixtures.write_temp(("0123456789abcdef"):rep(size / 16), ".json")
      finally(function()
        os.remove(path)
      end)
      local client = new_client()
      local elapsed, file, err = timed(client.files.upload, path)
      print(("\n2 MB upload took %.3f s"):format(elapsed))
      assert.is_nil(err)
      assert.is_string(file.fileId)
      assert.is_true(elapsed < 1, ("upload took %.3f s"):format(elapsed))
      local upload = requests_to(emu, FILES_PATH)[1]
      assert.is_nil(upload.headers.expect)
      assert.equal(size, upload.parts[1].size)
    end)

    -- Content that a careless multipart encoder or parser would cut short:
    -- NUL bytes, every byte value and lines that look like libcurl's boundaries.
    local bytes = {}
    for i = 0, 255 do
      bytes[#bytes + 1] = string.char(i)
    end
    local tricky = table.concat {
      "\0\0{\"a\":\0}\r\n",
      "\r\n--------------------------0123456789abcdef\r\n",
      'Content-Disposition: form-data; name="file"; filename="evil.json"\r\n\r\n',
      "\r\n------------------------0123456789abcdef0123--\r\n",
      table.concat(bytes),
      "\r\n--",
    }

    for _, case in ipairs {
      { label = "a double quote", name = 'a"b.json', accepted = { 'a"b.json', "a%22b.json" } },
      { label = "CR LF and a fake header", name = "a\r\nX-Injected: 1.json",
        accepted = { "a%0D%0AX-Injected: 1.json", "a\\r\\nX-Injected: 1.json" } },
      { label = "non-ASCII letters", name = "données-ü.json", accepted = { "données-ü.json" } },
    } do
      fault("file name with " .. case.label, function()
        local dir = fixtures.temp_dir()
        local path = dir .. "/" .. case.name
        local handle = assert(io.open(path, "wb"))
        handle:write(tricky)
        handle:close()
        local fetched_path = os.tmpname()
        finally(function()
          os.remove(path)
          os.remove(dir)
          os.remove(fetched_path)
        end)

        local file, err = new_client().files.upload(path)
        assert.is_nil(err)
        local upload = requests_to(emu, FILES_PATH)[1]
        assert.is_nil(upload.headers["x-injected"])
        local file_parts = {}
        for _, part in ipairs(upload.parts) do
          assert.is_nil(part.headers["x-injected"])
          if part.name == "file" then
            file_parts[#file_parts + 1] = part
          end
        end
        assert.equal(1, #file_parts)
        local seen = file_parts[1].filename
        print(("\nfile name %q: the emulator decoded %q from %q"):format(case.name, tostring(seen),
          tostring(file_parts[1].headers["content-disposition"])))
        assert.is_nil(tostring(seen):find("[\r\n]"))
        local matched = false
        for _, accepted in ipairs(case.accepted) do
          matched = matched or seen == accepted
        end
        assert.is_true(matched, ("the emulator decoded the name %q"):format(tostring(seen)))

        local status, content = emulator.http_request("GET", file.url)
        assert.equal(200, status)
        local out = assert(io.open(fetched_path, "wb"))
        out:write(content)
        out:close()
        assert.equal(sha256_of_file(path), sha256_of_file(fetched_path))
      end)
    end
  end)
  it("shows the key in no result, error or log line", function()
    local errors, lines = 0, 0
    for _, value in ipairs(outputs) do
      if kw.is_error(value) then
        errors = errors + 1
      elseif type(value) == "string" then
        lines = lines + 1
      end
      assert.is_false(fixtures.contains(value, KEY), "key found in " .. tostring(value))
    end
    print(("fault suite: %d errors and %d strings searched, key leaks found: 0"):format(errors, lines))
    assert.is_true(errors >= 20)
  end)
end)
