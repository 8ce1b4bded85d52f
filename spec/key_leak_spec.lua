-- Runs every client call, in success and in each kind of failure, with the
-- known test key, and checks that the key appears in no result, error
-- message, error field or tostring.
local kw = require "kore_workflow"
local emulator = require "support.emulator"
local fixtures = require "support.fixtures"

local KEY = fixtures.TEST_KEY

describe("API key", function()
  local emu, client
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

  setup(function()
    emu = emulator.start { api_key = KEY, polls = 1 }
    client = kw.client { host = emu.url, api_key = KEY }
  end)

  teardown(function()
    emu:stop()
  end)

  it("appears in no result or error of any call", function()
    local fast = { timeout = 20, interval = 0.05, max_interval = 0.2 }
    keep(tostring(client))
    keep(client:import_files(fixtures.WORKFLOW_ID, fixtures.EXAMPLE_DIR, fast))
    keep(client.files.upload(fixtures.EXAMPLE_DIR .. "/flow_definition.json"))
    keep(client.files.upload("/nonexistent/file.json"))
    keep(client.workflow.import("a-unknown", {
      workflowDataFileId = "0", flowDataFileId = "0", envVariablesFileId = "0" }))
    keep(client.workflow.import(fixtures.WORKFLOW_ID, {
      workflowDataFileId = "0", flowDataFileId = "0", envVariablesFileId = "0" }))
    keep(client.workflow.status("ds-unknown"))
    keep(client:wait("ds-unknown", fast))

    local wrong = kw.client { host = emu.url, api_key = KEY .. "x" }
    keep(wrong.workflow.status("ds-1"))

    emu:script { method = "GET", path = "/api/public/dock-status/ds-echo", responses = {
      { status = 400, headers = { ["Content-Type"] = "application/json" },
        body = '{"message":"bad key ' .. KEY .. ' for this account"}' },
      { status = 200, headers = { ["Content-Type"] = "text/html" },
        body = "<p>Signed in with " .. KEY .. "</p>" },
    } }
    keep(client.workflow.status("ds-echo"))
    keep(client.workflow.status("ds-echo"))

    emu:script { method = "GET", path = "/api/public/dock-status/ds-slow", responses = {
      { delay = 2, passthrough = true } } }
    keep(client.workflow.status("ds-slow", { timeout = 0.3 }))

    emu:script { method = "GET", path = "/api/public/dock-status/ds-fail", responses = {
      { status = 200, headers = { ["Content-Type"] = "application/json" },
        body = '{"_id":"ds-fail","status":"FAILED","message":"rejected"}' } } }
    keep(client:wait("ds-fail", fast))
    keep(client:wait("ds-fail", { timeout = 0.2, interval = 0.05 }))

    local refused = kw.client { host = "http://127.0.0.1:9", api_key = KEY }
    keep(refused.workflow.status("ds-1"))

    for _, bad in ipairs { "kg-1\r\nX: " .. KEY, "\0" .. KEY } do
      keep(pcall(kw.client, { host = emu.url, api_key = bad }))
    end

    local errors = 0
    for _, value in ipairs(outputs) do
      if kw.is_error(value) then
        errors = errors + 1
      end
      assert.is_false(fixtures.contains(value, KEY), "key found in " .. tostring(value))
    end
    print(("checked %d values, %d of them errors, for the key"):format(#outputs, errors))
    assert.is_true(errors >= 10)
  end)

  it("is redacted from a server message that echoes it", function()
    emu:script { method = "GET", path = "/api/public/dock-status/ds-echo2", responses = {
      { status = 400, headers = { ["Content-Type"] = "application/json" },
        body = '{"message":"bad key ' .. KEY .. '"}' } } }
    local _, err = client.workflow.status("ds-echo2")
    assert.matches("bad key ***", err.message, 1, true)
  end)

  it("never reaches the emulator's request log", function()
    assert(client.workflow.status(42) == nil)
    local requests = emu:requests()
    assert.is_true(#requests > 0)
    assert.is_false(fixtures.contains(requests, KEY))
    assert.equal("***", requests[#requests].headers["x-api-key"])
  end)
end)
