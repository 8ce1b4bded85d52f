-- The verbose log and warnings: what reaches the user's logger, redacted.
local kw = require "kore_workflow"
local emulator = require "support.emulator"
local fixtures = require "support.fixtures"

local KEY = fixtures.TEST_KEY

describe("logger", function()
  local emu

  setup(function()
    emu = emulator.start { api_key = KEY }
  end)

  teardown(function()
    emu:stop()
  end)

  local function logging_client(extra)
    local lines = {}
    local options = {
      host = emu.url, api_key = KEY, verbose = true,
      logger = function(line, level)
        lines[#lines + 1] = { line = line, level = level }
      end,
    }
    for k, v in pairs(extra or {}) do
      options[k] = v
    end
    return kw.client(options), lines
  end

  local function find_line(lines, pattern)
    for _, entry in ipairs(lines) do
      if entry.line:find(pattern, 1, true) then
        return entry
      end
    end
  end

  it("logs request and response lines", function()
    local client, lines = logging_client()
    client.workflow.status("ds-logged")
    assert.is_table(find_line(lines, "> GET /api/public/dock-status/ds-logged HTTP/1.1"))
    assert.is_table(find_line(lines, "< HTTP/1.1 404"))
    assert.equal("debug", lines[1].level)
  end)

  it("replaces the key header value with ***", function()
    local client, lines = logging_client()
    client.workflow.status("ds-logged")
    local header = find_line(lines, "> x-api-key:")
    assert.is_table(header)
    assert.equal("> x-api-key: ***", header.line)
    for _, entry in ipairs(lines) do
      assert.is_nil(entry.line:find(KEY, 1, true))
    end
  end)

  it("drops the query of a signed file url", function()
    local client, lines = logging_client()
    local file = assert(client.files.upload(fixtures.EXAMPLE_DIR .. "/env_variables.json"))
    local query = file.url:match("%?(.*)$")
    assert.is_string(query)
    local body = find_line(lines, file.fileId)
    assert.is_table(body)
    assert.matches(file.url:match("^[^?]*"), body.line, 1, true)
    for _, entry in ipairs(lines) do
      assert.is_nil(entry.line:find(query, 1, true))
      assert.is_nil(entry.line:find("signature=", 1, true))
    end
  end)

  it("logs nothing without verbose", function()
    local client, lines = logging_client { verbose = false }
    client.workflow.status("ds-quiet")
    assert.equal(0, #lines)
  end)

  it("ignores a logger that raises", function()
    local client = kw.client { host = emu.url, api_key = KEY, verbose = true,
                               logger = function() error("logger broke") end }
    local status, err = client.workflow.status("ds-broken-logger")
    assert.is_nil(status)
    assert.equal(404, err.status)
  end)

  it("warns on every insecure client", function()
    local warnings = {}
    local function logger(line, level)
      if level == "warning" then
        warnings[#warnings + 1] = line
      end
    end
    kw.client { host = emu.url, api_key = KEY, insecure = true, logger = logger }
    kw.client { host = emu.url, api_key = KEY, insecure = true, logger = logger }
    kw.client { host = emu.url, api_key = KEY, logger = logger }
    assert.equal(2, #warnings)
    assert.matches("verification is off", warnings[1], 1, true)
    assert.matches("insecure", warnings[1], 1, true)
    assert.is_nil(warnings[1]:find(KEY, 1, true))
  end)

  it("rejects an unknown client option", function()
    local ok, message = pcall(function()
      local client = kw.client { host = emu.url, api_key = KEY, insecure_tls = true }
      return client
    end)
    assert.is_false(ok)
    assert.matches("unknown option 'insecure_tls'", message, 1, true)
    assert.matches("logger_spec.lua", message, 1, true)
  end)

  it("rejects a logger that is not a function", function()
    local ok, message = pcall(kw.client, { host = emu.url, api_key = KEY, logger = "stderr" })
    assert.is_false(ok)
    assert.matches("logger", message, 1, true)
  end)
end)
