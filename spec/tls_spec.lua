-- TLS specs against a real nginx on a loopback port. The run makes its own
-- test CA with openssl: a server certificate for DNS:localhost only, and a
-- second, unrelated CA. nginx terminates TLS with that certificate and
-- proxies /api/ to an emulator over plain HTTP, so real API calls run over
-- TLS. Nothing reaches an address other than 127.0.0.1 and ::1.
local kw = require "kore_workflow"
local emulator = require "support.emulator"
local fixtures = require "support.fixtures"
local nginx = require "support.nginx"
local test_ca = require "support.test_ca"

local KEY = fixtures.TEST_KEY
local WORKFLOW_ID = fixtures.WORKFLOW_ID
local FAST_WAIT = { timeout = 30, interval = 0.05, max_interval = 0.2 }
local DOCK_STATUS_PREFIX = "/api/public/dock-status/"
local RUN_LIMIT = 60 -- seconds before `timeout` stops a hung subprocess

local function shell_quote(text)
  return "'" .. tostring(text):gsub("'", "'\\''") .. "'"
end

local function contains(text, needle)
  return tostring(text):find(needle, 1, true) ~= nil
end

-- Returns the exit status from the results of os.execute on Lua 5.1 and on
-- Lua 5.2 and later.
local function exit_status(first, termination, code)
  if type(first) == "number" then
    return first >= 256 and math.floor(first / 256) or first
  end
  if termination == "signal" then
    return 128 + code
  end
  return code
end

local function absolute_root()
  local handle = assert(io.popen("cd " .. shell_quote(emulator.root) .. " && pwd -P"))
  local path = handle:read("*l")
  handle:close()
  return path
end

local ROOT = absolute_root()

-- Runs a program from the repository root with KORE_API_KEY set from a
-- sourced file, so the key is on no command line, and with stdout and stderr
-- captured in files. args is the list of the program and its arguments.
-- Returns { code, stdout, stderr }.
local function run_with_key(args)
  local env_file = fixtures.write_temp(("KORE_API_KEY=%s; export KORE_API_KEY\n"):format(shell_quote(KEY)))
  local stdout_file, stderr_file = os.tmpname(), os.tmpname()
  local quoted = {}
  for i, arg in ipairs(args) do
    quoted[i] = shell_quote(arg)
  end
  local command = ("cd %s && unset KORE_HOST && . %s && exec timeout %d %s >%s 2>%s"):format(
    shell_quote(ROOT), shell_quote(env_file), RUN_LIMIT, table.concat(quoted, " "),
    shell_quote(stdout_file), shell_quote(stderr_file))
  assert(not contains(command, KEY), "the spec put the test key on a command line")
  local code = exit_status(os.execute(command))
  local result = {
    code = code,
    stdout = fixtures.read_file(stdout_file),
    stderr = fixtures.read_file(stderr_file),
  }
  os.remove(env_file)
  os.remove(stdout_file)
  os.remove(stderr_file)
  return result
end

local function run_cli(args)
  local full = { ROOT .. "/bin/kore-workflow" }
  for _, arg in ipairs(args) do
    full[#full + 1] = arg
  end
  return run_with_key(full)
end

-- Returns the emulator's requests to the API (not to its control routes).
local function api_requests(emu)
  local found = {}
  for _, record in ipairs(emu:requests()) do
    if record.path:sub(1, 5) == "/api/" then
      found[#found + 1] = record
    end
  end
  return found
end

-- Returns the entries of nginx's access log after the first `skip`, once
-- there are at least `count` of them.
local function log_since(server, skip, count)
  local entries = server:wait_for_log(skip + count)
  local added = {}
  for i = skip + 1, #entries do
    added[#added + 1] = entries[i]
  end
  return added
end

---------------------------------------------------------------------------
-- The check that no code path turns TLS verification off
---------------------------------------------------------------------------

-- Replaces C comments and string literals with spaces, keeping newlines, so
-- positions and line numbers stay the same.
local function strip_comments(text)
  local blank = function(s)
    return (s:gsub("[^\n]", " "))
  end
  text = text:gsub("/%*.-%*/", blank)
  text = text:gsub("//[^\n]*", blank)
  text = text:gsub('"[^"\n]*"', blank)
  return text
end

local function line_of(text, position)
  return select(2, text:sub(1, position):gsub("\n", "\n")) + 1
end

-- Returns the start of the parenthesised group that ends at close (a ")").
local function matching_open(text, close)
  local depth = 0
  for i = close, 1, -1 do
    local c = text:sub(i, i)
    if c == ")" then
      depth = depth + 1
    elseif c == "(" then
      depth = depth - 1
      if depth == 0 then
        return i
      end
    end
  end
  return nil
end

-- Returns true when the condition names `insecure` and does not negate it.
local function tests_insecure(condition)
  if not condition:find("%f[%w_]insecure%f[^%w_]") then
    return false
  end
  return not condition:find("!%s*[%w_%.%->]*%f[%w_]insecure%f[^%w_]")
end

-- Returns the condition of the `if` that directly controls the statement
-- starting at position, or nil when there is none (an else branch counts as
-- none, so that an `if (insecure) ... else <off>` is flagged).
local function controlling_condition(text, position)
  local before = text:sub(1, position - 1):gsub("%s+$", "")
  local last = before:sub(-1)
  local close
  if last == ")" then
    close = #before
  else
    -- Inside a block: find the "{" that opens it.
    local depth = 0
    local open
    for i = #before, 1, -1 do
      local c = before:sub(i, i)
      if c == "}" then
        depth = depth + 1
      elseif c == "{" then
        if depth == 0 then
          open = i
          break
        end
        depth = depth - 1
      end
    end
    if not open then
      return nil
    end
    local head = before:sub(1, open - 1):gsub("%s+$", "")
    if head:sub(-1) ~= ")" then
      return nil
    end
    before = head
    close = #head
  end
  local open_paren = matching_open(before, close)
  if not open_paren or not before:sub(1, open_paren - 1):find("%f[%w_]if%s*$") then
    return nil
  end
  return before:sub(open_paren + 1, close - 1)
end

local VERIFY_ON = { VERIFYPEER = "1L", VERIFYHOST = "2L" }

-- Finds every CURLOPT_*SSL_VERIFYPEER and CURLOPT_*SSL_VERIFYHOST in C
-- source. Returns the settings that may turn verification off, as
-- "name:line: statement" strings, and the count of settings to on per
-- option.
local function verification_settings(name, source)
  local text = strip_comments(source)
  local violations = {}
  local on_count = { VERIFYPEER = 0, VERIFYHOST = 0 }
  local position = 1
  while true do
    local first, last, option, setting = text:find("(CURLOPT_[%u_]*SSL_(VERIFY%u+))", position)
    if not first then
      break
    end
    position = last + 1
    local line = line_of(text, first)
    local call_start = text:sub(1, first):match(".*()curl_easy_setopt%s*%(")
    local statement_end = text:find(";", last, true)
    local on = VERIFY_ON[setting]
    if not on or not call_start or not statement_end
      or text:sub(call_start, first):find(";", 1, true) then
      violations[#violations + 1] = ("%s:%d: %s outside a curl_easy_setopt call"):format(name, line, option)
    else
      local statement = text:sub(call_start, statement_end)
      local value = text:sub(last + 1, statement_end - 1)
        :gsub("^%s*,%s*", ""):gsub("%s*%)%s*$", ""):gsub("^%((.*)%)$", "%1")
      local condition, _, otherwise = value:match("^(.-)%?(.-):(.-)$")
      local allowed = value == on
        or (condition and tests_insecure(condition) and otherwise:match("^%s*(.-)%s*$") == on)
        or tests_insecure(controlling_condition(text, call_start) or "")
      if value == on then
        on_count[setting] = on_count[setting] + 1
      end
      if not allowed then
        violations[#violations + 1] = ("%s:%d: %s"):format(name, line, statement:gsub("%s+", " "))
      end
    end
  end
  return violations, on_count
end

-- Returns a logger function for the client's logger option, and the list
-- of { message, level } records it receives.
local function recording_logger()
  local records = {}
  local function logger(message, level)
    records[#records + 1] = { message = tostring(message), level = level }
  end
  return logger, records
end

local function insecure_warnings(records)
  local found = {}
  for _, record in ipairs(records) do
    if contains(record.message:lower(), "insecure") then
      found[#found + 1] = record
    end
  end
  return found
end

describe("TLS", function()
  local certs, emu, server

  setup(function()
    certs = test_ca.create()
    emu = emulator.start { api_key = KEY, polls = 1, workflows = { WORKFLOW_ID } }
    server = nginx.start { cert = certs.server_cert, key = certs.server_key, upstream = emu.url }
  end)

  teardown(function()
    if server then
      server:stop()
    end
    if emu then
      emu:stop()
    end
    if certs then
      certs:remove()
    end
  end)

  before_each(function()
    emu:reset()
  end)

  local function trusted_client(options)
    options = options or {}
    options.host = options.host or server.url
    options.api_key = KEY
    options.ca_file = options.ca_file or certs.ca_file
    return kw.client(options)
  end

  describe("with the test CA", function()
    it("imports the example over https", function()
      local skip = #server:access_log()
      local client = trusted_client()
      local final, err = client:import_files(WORKFLOW_ID, fixtures.EXAMPLE_DIR, FAST_WAIT)
      assert.is_nil(err)
      assert.equal("SUCCESS", final.status)

      local stored = emu:workflow(WORKFLOW_ID)
      assert.is_table(stored)
      -- Three uploads and the import, then at least one status call.
      local entries = log_since(server, skip, 5)
      local posts, polls = 0, 0
      for _, entry in ipairs(entries) do
        assert.matches("^TLSv1%.[23]$", entry.protocol)
        if entry.method == "POST" then
          posts = posts + 1
        elseif entry.uri:sub(1, #DOCK_STATUS_PREFIX) == DOCK_STATUS_PREFIX then
          polls = polls + 1
        end
      end
      assert.equal(4, posts) -- three uploads and the import
      assert.is_true(polls >= 1)
    end)

    it("keeps status calls on one TLS connection", function()
      local client = trusted_client()
      local before = #server:access_log()
      local job = assert(client:import_files(WORKFLOW_ID, fixtures.EXAMPLE_DIR,
        { wait = false }))
      -- nginx writes a log line after the response, so the import's line may
      -- still be on its way: wait for the three uploads and the import.
      local skip = before + 4
      server:wait_for_log(skip)
      for _ = 1, 5 do
        assert(client.workflow.status(job.dockStatusId))
      end

      local entries = log_since(server, skip, 5)
      assert.equal(5, #entries)
      for i, entry in ipairs(entries) do
        assert.equal(DOCK_STATUS_PREFIX .. job.dockStatusId, entry.uri)
        assert.equal(200, entry.status)
        assert.equal(entries[1].connection, entry.connection)
        assert.equal(entries[1].requests + i - 1, entry.requests)
      end
    end)

    it("opens a new TLS connection for the import", function()
      local skip = #server:access_log()
      local client = trusted_client()
      assert(client:import_files(WORKFLOW_ID, fixtures.EXAMPLE_DIR, FAST_WAIT))

      local imports = 0
      local uploads = 0
      for _, entry in ipairs(log_since(server, skip, 5)) do
        if entry.method == "POST" and entry.uri:find("/import$") then
          imports = imports + 1
          assert.equal(1, entry.requests)
        elseif entry.method == "POST" then
          uploads = uploads + 1
        end
      end
      assert.equal(1, imports)
      assert.equal(3, uploads)
    end)
  end)

  describe("verification failure", function()
    it("without ca_file is a tls error", function()
      local client = kw.client { host = server.url, api_key = KEY }
      local job, err = client.workflow.status("ds-no-ca")
      assert.is_nil(job)
      assert.equal("tls", err.kind)
      assert.is_false(err.retryable)
      assert.matches("ca_file", err.hint, 1, true)
      assert.matches(server.url, err.message, 1, true)
      assert.is_false(contains(tostring(err), KEY))
      assert.is_false(fixtures.contains(err, KEY))
      assert.equal(0, #api_requests(emu))
    end)

    it("with an unrelated CA is a tls error", function()
      local client = trusted_client { ca_file = certs.other_ca_file }
      local job, err = client.workflow.status("ds-other-ca")
      assert.is_nil(job)
      assert.equal("tls", err.kind)
      assert.is_false(err.retryable)
      assert.is_false(contains(tostring(err), KEY))
      assert.equal(0, #api_requests(emu))
    end)

    it("for a host name not in the certificate", function()
      local client = trusted_client { host = server.ip_url }
      local job, err = client.workflow.status("ds-by-address")
      assert.is_nil(job)
      assert.equal("tls", err.kind)
      assert.is_false(err.retryable)
      assert.matches("127.0.0.1", err.message, 1, true)
      assert.matches("host name", err.hint, 1, true)
      assert.equal(0, #api_requests(emu))
    end)

    it("for a ca_file holding no certificate", function()
      local path = fixtures.write_temp("this is not a PEM certificate\n")
      local client = trusted_client { ca_file = path }
      local job, err = client.workflow.status("ds-bad-ca-file")
      os.remove(path)
      assert.is_nil(job)
      assert.equal("tls", err.kind)
      assert.is_false(err.retryable)
      assert.matches("ca_file", err.hint, 1, true)
      assert.matches("PEM", err.hint, 1, true)
      assert.equal(0, #api_requests(emu))
    end)
  end)

  describe("insecure option", function()
    it("connects without ca_file", function()
      local logger = recording_logger()
      local client = kw.client { host = server.url, api_key = KEY, insecure = true, logger = logger }
      local job, err = client.workflow.status("ds-insecure")
      assert.is_nil(job)
      -- A 404 from the emulator proves the call got through nginx.
      assert.equal("http", err.kind)
      assert.equal(404, err.status)
      assert.equal(1, #api_requests(emu))
    end)

    it("warns once per client it is set on", function()
      local logger, records = recording_logger()
      local first = kw.client { host = server.url, api_key = KEY, insecure = true, logger = logger }
      for i = 1, 3 do
        first.workflow.status("ds-insecure-" .. i)
      end
      assert.equal(1, #insecure_warnings(records))

      local second = kw.client { host = server.url, api_key = KEY, insecure = true, logger = logger }
      second.workflow.status("ds-insecure-4")
      assert.equal(2, #insecure_warnings(records))

      local verified = trusted_client { logger = logger }
      verified.workflow.status("ds-verified")
      assert.equal(2, #insecure_warnings(records))

      for _, warning in ipairs(insecure_warnings(records)) do
        assert.equal("warning", warning.level)
        assert.matches("verification", warning.message:lower(), 1, true)
      end
      for _, record in ipairs(records) do
        assert.is_false(contains(record.message, KEY))
      end
    end)

    it("warns on stderr without a logger", function()
      local script = fixtures.write_temp(([[
local kw = require "kore_workflow"
local client = kw.client { host = %q, api_key = os.getenv("KORE_API_KEY"), insecure = true }
local job, err = client.workflow.status("ds-insecure-stderr")
io.stdout:write(err and err.kind or "ok", "\n")
]]):format(server.url))
      local lua = os.getenv("KORE_TEST_LUA") or "lua5.4"
      local build = os.getenv("KORE_WORKFLOW_BUILD") or "build"
      local result = run_with_key { "env", "LUA_PATH=lua/?.lua;lua/?/init.lua;;",
                                    "LUA_CPATH=" .. build .. "/?.so;;", lua, script }
      os.remove(script)
      assert.equal(0, result.code, result.stderr)
      assert.equal("http\n", result.stdout)
      local warnings = 0
      for line in result.stderr:gmatch("[^\n]+") do
        if contains(line:lower(), "insecure") then
          warnings = warnings + 1
          assert.matches("verification", line:lower(), 1, true)
        end
      end
      assert.equal(1, warnings)
      assert.is_false(contains(result.stderr, KEY))
      assert.is_false(contains(result.stdout, KEY))
    end)
  end)

  describe("kore-workflow --ca-file", function()
    it("reaches the server over TLS", function()
      local result = run_cli { "status", "ds-x", "--host", server.url, "--ca-file", certs.ca_file }
      assert.equal(3, result.code, result.stderr)
      assert.matches("HTTP 404", result.stderr, 1, true)
      assert.equal(1, #api_requests(emu))
      assert.is_false(contains(result.stdout .. result.stderr, KEY))
    end)

    it("fails TLS verification without it", function()
      local result = run_cli { "status", "ds-x", "--host", server.url }
      assert.equal(3, result.code, result.stderr)
      assert.matches("TLS verification", result.stderr, 1, true)
      assert.equal(0, #api_requests(emu))
      assert.is_false(contains(result.stdout .. result.stderr, KEY))
    end)

    it("names --ca-file in its TLS hint", function()
      -- A user of the command line passes the CA with --ca-file; the Lua
      -- option name ca_file alone does not tell them what to type.
      local result = run_cli { "status", "ds-x", "--host", server.url }
      assert.equal(3, result.code, result.stderr)
      assert.matches("--ca-file", result.stderr, 1, true)
    end)
  end)
end)

describe("TLS verification settings in csrc", function()
  local function read_sources()
    local sources = {}
    local handle = assert(io.popen("ls " .. shell_quote(ROOT .. "/csrc") .. "/*.c "
      .. shell_quote(ROOT .. "/csrc") .. "/*.h"))
    for path in handle:lines() do
      sources[#sources + 1] = { name = path:match("[^/]+$"), text = fixtures.read_file(path) }
    end
    handle:close()
    return sources
  end

  it("are on unless insecure is set", function()
    local sources = read_sources()
    assert.is_true(#sources > 0)
    local all_violations = {}
    local total = { VERIFYPEER = 0, VERIFYHOST = 0 }
    for _, source in ipairs(sources) do
      local violations, on_count = verification_settings(source.name, source.text)
      for _, violation in ipairs(violations) do
        all_violations[#all_violations + 1] = violation
      end
      total.VERIFYPEER = total.VERIFYPEER + on_count.VERIFYPEER
      total.VERIFYHOST = total.VERIFYHOST + on_count.VERIFYHOST
    end
    assert.are.same({}, all_violations)
    assert.is_true(total.VERIFYPEER >= 1, "no CURLOPT_SSL_VERIFYPEER set to 1L")
    assert.is_true(total.VERIFYHOST >= 1, "no CURLOPT_SSL_VERIFYHOST set to 2L")
  end)

  it("checker flags verification turned off", function()
    local cases = {
      { "curl_easy_setopt(easy, CURLOPT_SSL_VERIFYPEER, 0L);", 1 },
      { "curl_easy_setopt(easy, CURLOPT_SSL_VERIFYHOST, 1L);", 1 },
      { "curl_easy_setopt(easy, CURLOPT_PROXY_SSL_VERIFYPEER, 0L);", 1 },
      { "curl_easy_setopt(easy, CURLOPT_SSL_VERIFYPEER, verify);", 1 },
      { "if (!client->insecure)\n  curl_easy_setopt(easy, CURLOPT_SSL_VERIFYPEER, 0L);", 1 },
      { "if (client->insecure) {\n  x = 1;\n} else {\n"
        .. "  curl_easy_setopt(easy, CURLOPT_SSL_VERIFYHOST, 0L);\n}", 1 },
      { "if (client->quiet) {\n  curl_easy_setopt(easy, CURLOPT_SSL_VERIFYPEER, 0L);\n}", 1 },
      { "curl_easy_setopt(easy, CURLOPT_SSL_VERIFYPEER, client->insecure ? 1L : 0L);", 1 },
      { "curl_easy_setopt(easy, CURLOPT_SSL_VERIFYPEER, 1L);", 0 },
      { "curl_easy_setopt(easy, CURLOPT_SSL_VERIFYHOST, 2L); /* not 0L */", 0 },
      { "if (client->insecure)\n  curl_easy_setopt(easy, CURLOPT_SSL_VERIFYPEER, 0L);", 0 },
      { "if (client->insecure) {\n  curl_easy_setopt(easy, CURLOPT_SSL_VERIFYPEER, 0L);\n"
        .. "  curl_easy_setopt(easy, CURLOPT_SSL_VERIFYHOST, 0L);\n}", 0 },
      { "curl_easy_setopt(easy, CURLOPT_SSL_VERIFYHOST, client->insecure ? 0L : 2L);", 0 },
    }
    for _, case in ipairs(cases) do
      local violations = verification_settings("case.c", case[1])
      assert.equal(case[2], #violations, case[1])
    end
  end)
end)

describe("nginx test helper", function()
  it("leaves no process or directory after stop", function()
    local socket = require "socket"
    local certs = test_ca.create()
    local emu = emulator.start { api_key = KEY }
    local server = nginx.start { cert = certs.server_cert, key = certs.server_key, upstream = emu.url }
    local pid = server:nginx_pid()
    local prefix = server.prefix
    local stopped_on_term = server:stop()
    emu:stop()
    certs:remove()

    assert.is_string(pid)
    assert.is_true(stopped_on_term)
    assert.is_nil(io.open("/proc/" .. pid .. "/stat"))
    assert.is_nil(socket.connect("127.0.0.1", server.port))
    assert.is_nil(io.open(prefix .. "/nginx.conf"))
    assert.is_nil(io.open(certs.ca_file))
  end)
end)
