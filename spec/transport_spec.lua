-- Transport behaviour of the C core: redirects, response caps, the JSON
-- codec's isolation from the host, and connection reuse.
local kw = require "kore_workflow"
local emulator = require "support.emulator"
local fixtures = require "support.fixtures"

local KEY = fixtures.TEST_KEY

describe("transport", function()
  local emu, client

  setup(function()
    emu = emulator.start { api_key = KEY }
    client = kw.client { host = emu.url, api_key = KEY }
  end)

  teardown(function()
    emu:stop()
  end)

  before_each(function()
    emu:reset()
  end)

  it("reports a redirect without following it", function()
    local other = emulator.start { api_key = KEY }
    emu:script { method = "GET", path = "/api/public/dock-status/ds-moved", responses = {
      { status = 302, headers = { Location = other.url .. "/api/public/dock-status/ds-moved?sig=s3cret" },
        body = "" } } }
    local status, err = client.workflow.status("ds-moved")
    local other_requests = other:requests()
    other:stop()
    assert.is_nil(status)
    assert.equal("redirect", err.kind)
    assert.equal(302, err.status)
    assert.matches(other.url .. "/api/public/dock-status/ds-moved", err.message, 1, true)
    assert.is_nil(err.message:find("s3cret", 1, true))
    assert.equal(0, #other_requests)
  end)

  it("sends a redirected import exactly once", function()
    emu:script { method = "POST", path = "/api/public/workflows/a-x/import", responses = {
      { status = 307, headers = { Location = "http://127.0.0.1:9/elsewhere" }, body = "" } } }
    local job, err = client.workflow.import("a-x", {
      workflowDataFileId = "a", flowDataFileId = "b", envVariablesFileId = "c" })
    assert.is_nil(job)
    assert.equal("redirect", err.kind)
    local requests = emu:requests()
    assert.equal(1, #requests)
    assert.equal("POST", requests[1].method)
  end)

  it("reuses one connection for successive calls", function()
    for i = 1, 5 do
      client.workflow.status("ds-" .. i)
    end
    local requests = emu:requests()
    assert.equal(5, #requests)
    for i = 2, 5 do
      assert.equal(requests[1].connection, requests[i].connection)
    end
  end)

  it("applies each call's own limits on a reused handle", function()
    emu:script { method = "GET", path = "/api/public/dock-status/ds-slow", responses = {
      { delay = 1, body = { _id = "ds-slow", status = "SUCCESS" } } }, ["repeat"] = -1 }
    local job, err = client.workflow.status("ds-slow", { timeout = 0.2 })
    assert.is_nil(job)
    assert.equal("timeout", err.kind)
    -- The same call without options has the client's 30 s limit again.
    job = assert(client.workflow.status("ds-slow"))
    assert.equal("SUCCESS", job.status)
    job, err = client.workflow.status("ds-slow", { timeout = 0.2 })
    assert.is_nil(job)
    assert.equal("timeout", err.kind)
  end)

  it("sends each call's own path and query on a reused handle", function()
    emu:seed_workflow("a-transport", "transport", {
      workflowData = "{}", flowData = "{}", envVariables = "[]" })
    -- Unknown dock status ids return 404, which is enough here.
    client.workflow.status("ds-first")
    assert(client.workflow.export("a-transport", { flow_id = "flow1" }))
    client.workflow.status("ds-second")
    assert(client.workflow.export("a-transport", { flow_id = "flow 1" }))
    client.workflow.status("ds/third")
    assert(client.workflow.export("a-transport"))
    client.workflow.status(12345)
    local paths = {}
    for _, record in ipairs(emu:requests()) do
      paths[#paths + 1] = record.method .. " " .. record.path
    end
    assert.same({
      "GET /api/public/dock-status/ds-first",
      "POST /api/public/workflows/a-transport/export?flowId=flow1",
      "GET /api/public/dock-status/ds-second",
      "POST /api/public/workflows/a-transport/export?flowId=flow%201",
      "GET /api/public/dock-status/ds%2Fthird",
      "POST /api/public/workflows/a-transport/export",
      "GET /api/public/dock-status/12345",
    }, paths)
  end)

  it("serves a call made by the logger during another call", function()
    local inner_job, inner_err
    local calling = false
    local nested
    nested = kw.client { host = emu.url, api_key = KEY, verbose = true, logger = function(line)
      if not calling and line:find("ds-outer", 1, true) then
        calling = true
        inner_job, inner_err = nested.workflow.status("ds-inner")
      end
    end }
    emu:script { method = "GET", path = "/api/public/dock-status/ds-outer", responses = {
      { body = { _id = "ds-outer", status = "SUCCESS" } } } }
    emu:script { method = "GET", path = "/api/public/dock-status/ds-inner", responses = {
      { body = { _id = "ds-inner", status = "FAILED" } } } }
    local job = assert(nested.workflow.status("ds-outer"))
    assert.is_nil(inner_err)
    assert.equal("ds-outer", job.dockStatusId)
    assert.equal("SUCCESS", job.status)
    assert.equal("ds-inner", inner_job.dockStatusId)
    assert.equal("FAILED", inner_job.status)
    local _, err = nested.workflow.status("ds-after")
    assert.equal(404, err.status)
  end)

  it("serves calls after an argument error", function()
    assert.has_error(function() client.workflow.status({}) end)
    assert.has_error(function() client.workflow.status("ds-1", { timeout = "soon" }) end)
    emu:script { method = "GET", path = "/api/public/dock-status/ds-ok", responses = {
      { body = { _id = "ds-ok", status = "SUCCESS" } } } }
    local job = assert(client.workflow.status("ds-ok"))
    assert.equal("ds-ok", job.dockStatusId)
  end)

  describe("proxy from the environment", function()
    -- Runs a fresh Lua process whose environment contains the proxy variables,
    -- with a client for a host that nothing listens on, and returns what its
    -- status call printed.
    local function status_through(env)
      local settings = {
        ("LUA_PATH=%q"):format(package.path), ("LUA_CPATH=%q"):format(package.cpath),
        ("KEY=%q"):format(KEY),
      }
      for name, value in pairs(env) do
        settings[#settings + 1] = ("%s=%q"):format(name, value)
      end
      local code = "local kw = require 'kore_workflow'; "
        .. "local client = kw.client { host = 'http://127.0.0.1:9', api_key = os.getenv('KEY') }; "
        .. "local job, err = client.workflow.status('ds-proxied'); "
        .. "io.write(job and 'ok' or err.kind, ' ', tostring(err))"
      local handle = assert(io.popen(("env -u http_proxy -u all_proxy -u ALL_PROXY -u no_proxy "
        .. "-u NO_PROXY %s %s -e %q 2>&1"):format(table.concat(settings, " "),
        os.getenv("KORE_TEST_LUA") or "lua5.4", code)))
      local output = handle:read("*a")
      handle:close()
      return output
    end

    it("sends calls through http_proxy", function()
      local output = status_through { http_proxy = emu.url }
      -- The emulator is not a proxy, so it rejects the absolute request
      -- target, which only a client sending through a proxy writes.
      assert.matches('^http .*HTTP 400: request target '
        .. '"http://127%.0%.0%.1:9/api/public/dock%-status/ds%-proxied"', output)
    end)

    it("connects directly to a host in no_proxy", function()
      local output = status_through { http_proxy = emu.url, no_proxy = "127.0.0.1" }
      assert.matches("^network .*cannot connect to http://127%.0%.0%.1:9", output)
      assert.equal(0, #emu:requests())
    end)
  end)

  it("opens a new connection for every import", function()
    local fields = { workflowDataFileId = "a", flowDataFileId = "b", envVariablesFileId = "c" }
    client.workflow.status("ds-1")
    client.workflow.import("a-x", fields)
    client.workflow.import("a-x", fields)
    local requests = emu:requests()
    assert.are_not.equal(requests[1].connection, requests[2].connection)
    assert.are_not.equal(requests[2].connection, requests[3].connection)
  end)

  it("cuts a response off at max_response", function()
    emu:script { method = "GET", path = "/api/public/dock-status/ds-big", responses = {
      { status = 200, headers = { ["Content-Type"] = "application/json" },
        body = '{"_id":"ds-big","status":"SUCCESS","pad":"' .. ("x"):rep(5000) .. '"}' } } }
    local status, err = client.workflow.status("ds-big", { max_response = 1000 })
    assert.is_nil(status)
    assert.equal("invalid_response", err.kind)
    assert.matches("larger than the limit of 1000 bytes", err.message, 1, true)
  end)

  it("accepts a response within max_response", function()
    emu:script { method = "GET", path = "/api/public/dock-status/ds-small", responses = {
      { status = 200, headers = { ["Content-Type"] = "application/json" },
        body = '{"_id":"ds-small","status":"SUCCESS"}' } } }
    local status = assert(client.workflow.status("ds-small", { max_response = 1000 }))
    assert.equal("SUCCESS", status.status)
  end)

  it("rejects a response that is not valid JSON", function()
    emu:script { method = "GET", path = "/api/public/dock-status/ds-nan", responses = {
      { status = 200, headers = { ["Content-Type"] = "application/json" },
        body = '{"_id":"ds-nan","status":"SUCCESS","percentageComplete":NaN}' } } }
    local status, err = client.workflow.status("ds-nan")
    assert.is_nil(status)
    assert.equal("invalid_response", err.kind)
    assert.matches("not valid JSON", err.message, 1, true)
  end)

  it("leaves the host's cjson settings unchanged", function()
    local cjson = require "cjson"
    local before_encode = cjson.encode({})
    local before_nan = pcall(cjson.decode, "[NaN]")
    assert(client:import_files(fixtures.WORKFLOW_ID, fixtures.EXAMPLE_DIR,
      { timeout = 30, interval = 0.05, max_interval = 0.2 }))
    assert.equal(before_encode, cjson.encode({}))
    assert.equal(before_nan, (pcall(cjson.decode, "[NaN]")))
  end)

  it("rejects options of the wrong type naming them", function()
    local ok, message = pcall(client.workflow.status, "ds-1", { timeout = "10" })
    assert.is_false(ok)
    assert.matches("timeout", message, 1, true)
    ok, message = pcall(client.workflow.status, "ds-1", { timeout = -1 })
    assert.is_false(ok)
    assert.matches("timeout", message, 1, true)
    ok, message = pcall(client.workflow.status, "ds-1", { timeout = 0 / 0 })
    assert.is_false(ok)
    assert.matches("timeout", message, 1, true)
    assert.equal(0, #emu:requests())
  end)

  it("refuses a connection it cannot make with a network error", function()
    local socket = require "socket"
    local listener = assert(socket.bind("127.0.0.1", 0))
    local _, port = listener:getsockname()
    listener:close()
    local closed = kw.client { host = "http://127.0.0.1:" .. port, api_key = KEY }
    local status, err = closed.workflow.status("ds-1")
    assert.is_nil(status)
    assert.equal("network", err.kind)
    assert.is_true(err.retryable)
    assert.matches("cannot connect", err.message, 1, true)
  end)

  it("rejects host URLs that are not a bare http or https origin", function()
    for _, host in ipairs { "ftp://example.ai", "https://user:pw@example.ai",
                            "https://example.ai/api", "https://example.ai/?a=1", "not a url" } do
      local ok, message = pcall(kw.client, { host = host, api_key = KEY })
      assert.is_false(ok, host)
      assert.matches("host", message, 1, true)
      assert.is_nil(message:find("pw", 1, true))
    end
  end)

  it("raises for a ca_file that does not exist", function()
    local ok, message = pcall(kw.client, { host = "https://localhost:1", api_key = KEY,
                                           ca_file = "/nonexistent/ca.pem" })
    assert.is_false(ok)
    assert.matches("/nonexistent/ca.pem", message, 1, true)
    assert.matches("PEM file", message, 1, true)
  end)
end)
