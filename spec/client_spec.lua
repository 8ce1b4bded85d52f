-- Client calls over real HTTP to the bundled emulator.
local kw = require "kore_workflow"
local emulator = require "support.emulator"
local fixtures = require "support.fixtures"

local KEY = fixtures.TEST_KEY
local WORKFLOW_ID = fixtures.WORKFLOW_ID

local function api_requests(emu)
  return emu:requests()
end

local function request_count(emu)
  return #api_requests(emu)
end

local function upload_example(client, dir)
  local ids = {}
  for _, def in ipairs(kw.definition_files) do
    local file, err = client.files.upload(dir .. "/" .. def.file)
    assert(file, tostring(err))
    ids[def.field] = file.fileId
  end
  return ids
end

local function fast_wait_options(extra)
  local options = { timeout = 30, interval = 0.05, max_interval = 0.2 }
  for k, v in pairs(extra or {}) do
    options[k] = v
  end
  return options
end

describe("client", function()
  local emu, client

  setup(function()
    emu = emulator.start { api_key = KEY, polls = 2 }
    client = kw.client { host = emu.url, api_key = KEY }
  end)

  teardown(function()
    emu:stop()
  end)

  before_each(function()
    emu:reset()
  end)

  describe("files.upload", function()
    it("returns fileId and url", function()
      local file, err = client.files.upload(fixtures.EXAMPLE_DIR .. "/flow_definition.json")
      assert.is_nil(err)
      assert.matches("^%x+$", file.fileId)
      assert.equal(24, #file.fileId)
      assert.is_string(file.url)
    end)

    it("sends one file part with its name and context", function()
      local path = fixtures.EXAMPLE_DIR .. "/env_variables.json"
      local size = #fixtures.read_file(path)
      assert(client.files.upload(path, { context = "bulkImport" }))
      local requests = api_requests(emu)
      assert.equal(1, #requests)
      local request = requests[1]
      assert.equal("POST", request.method)
      assert.equal("/api/public/files", request.path)
      local file_parts, context
      file_parts = 0
      for _, part in ipairs(request.parts) do
        if part.name == "file" then
          file_parts = file_parts + 1
          assert.equal("env_variables.json", part.filename)
          assert.equal(size, part.size)
        elseif part.name == "fileContext" then
          context = part
        end
      end
      assert.equal(1, file_parts)
      assert.is_table(context)
      assert.is_nil(request.headers["expect"])
    end)

    it("returns a file error for a missing file without a request", function()
      local file, err = client.files.upload("/nonexistent/flow_definition.json")
      assert.is_nil(file)
      assert.equal("file", err.kind)
      assert.matches("/nonexistent/flow_definition.json", tostring(err), 1, true)
      assert.equal(0, request_count(emu))
    end)
  end)

  describe("workflow.import", function()
    it("returns a job carrying dockStatusId", function()
      local ids = upload_example(client, fixtures.EXAMPLE_DIR)
      emu:reset()
      local job, err = client.workflow.import(WORKFLOW_ID, ids)
      assert.is_nil(err)
      assert.is_string(job.dockStatusId)
      assert.equal(WORKFLOW_ID, job.workflowId)
      local request = api_requests(emu)[1]
      assert.equal("/api/public/workflows/" .. WORKFLOW_ID .. "/import", request.path)
      assert.same(ids, request.body)
      assert.matches("^application/json", request.headers["content-type"])
      assert.is_true(request.key_ok)
      assert.equal("***", request.headers["x-api-key"])
    end)

    it("sends a User-Agent naming kore_workflow, libcurl and Lua", function()
      client.workflow.status("ds-unknown")
      local agent = api_requests(emu)[1].headers["user-agent"]
      assert.matches("kore_workflow/", agent, 1, true)
      assert.matches("libcurl/", agent, 1, true)
      assert.matches("Lua", agent, 1, true)
    end)

    for _, case in ipairs {
      { id = "../admin", encoded = "..%2Fadmin" },
      { id = "a/b", encoded = "a%2Fb" },
      { id = "a?x=1", encoded = "a%3Fx%3D1" },
    } do
      it("sends id " .. case.id .. " as one path segment", function()
        local job, err = client.workflow.import(case.id, {
          workflowDataFileId = "0", flowDataFileId = "0", envVariablesFileId = "0" })
        assert.is_nil(job)
        assert.equal("http", err.kind)
        assert.equal(404, err.status)
        assert.matches(case.id, err.message, 1, true)
        assert.equal("/api/public/workflows/" .. case.encoded .. "/import",
          api_requests(emu)[1].path)
      end)
    end

    for _, case in ipairs {
      { id = "..", pattern = "relative path segment" },
      { id = ".", pattern = "relative path segment" },
      { id = "", pattern = "must not be empty" },
      { id = "a-1\0/../x", pattern = "NUL byte" },
      { id = 42, pattern = "string expected, got number" },
      { id = nil, pattern = "string expected, got nil" },
    } do
      it("rejects workflow id " .. tostring(case.id) .. " without a request", function()
        local ok, message = pcall(client.workflow.import, case.id, {
          workflowDataFileId = "0", flowDataFileId = "0", envVariablesFileId = "0" })
        assert.is_false(ok)
        assert.matches("workflow id", message, 1, true)
        assert.matches(case.pattern, message, 1, true)
        assert.equal(0, request_count(emu))
      end)
    end

    it("rejects a body missing flowDataFileId without a request", function()
      local ok, message = pcall(client.workflow.import, WORKFLOW_ID, {
        workflowDataFileId = "a", envVariablesFileId = "c" })
      assert.is_false(ok)
      assert.matches("flowDataFileId", message, 1, true)
      assert.matches("missing", message, 1, true)
      assert.equal(0, request_count(emu))
    end)

    it("rejects a number for flowDataFileId without a request", function()
      local ok, message = pcall(client.workflow.import, WORKFLOW_ID, {
        workflowDataFileId = "a", flowDataFileId = 7, envVariablesFileId = "c" })
      assert.is_false(ok)
      assert.matches("flowDataFileId", message, 1, true)
      assert.matches("number", message, 1, true)
      assert.equal(0, request_count(emu))
    end)

    it("rejects an unknown field without a request", function()
      local ok, message = pcall(client.workflow.import, WORKFLOW_ID, {
        workflowDataFileId = "a", flowDataFileId = "b", envVariablesFileId = "c",
        flowDataFileID = "d" })
      assert.is_false(ok)
      assert.matches("unknown field 'flowDataFileID'", message, 1, true)
      assert.equal(0, request_count(emu))
    end)

    it("reports the server message of a 400", function()
      local job, err = client.workflow.import(WORKFLOW_ID, {
        workflowDataFileId = "ffffffffffffffffffffffff", flowDataFileId = "0",
        envVariablesFileId = "0" })
      assert.is_nil(job)
      assert.equal(400, err.status)
      assert.is_false(err.retryable)
      assert.matches("ffffffffffffffffffffffff", err.message, 1, true)
    end)
  end)

  describe("workflow.status", function()
    it("reads a job and normalises _id to dockStatusId", function()
      local ids = upload_example(client, fixtures.EXAMPLE_DIR)
      local job = assert(client.workflow.import(WORKFLOW_ID, ids))
      local status, err = client.workflow.status(job.dockStatusId)
      assert.is_nil(err)
      assert.equal(job.dockStatusId, status.dockStatusId)
      assert.equal("IN_PROGRESS", status.status)
    end)

    it("turns JSON null into nil at every depth", function()
      emu:script { method = "GET", path = "/api/public/dock-status/ds-null", responses = {
        { status = 200, headers = { ["Content-Type"] = "application/json" },
          body = '{"_id":"ds-null","status":"SUCCESS","message":null,'
            .. '"response":{"downloadUrl":null,"list":[1,null,3]}}' } } }
      local status = assert(client.workflow.status("ds-null"))
      assert.is_nil(status.message)
      assert.is_nil(status.response.downloadUrl)
      assert.is_nil(status.response.list[2])
      assert.equal(3, status.response.list[3])
      assert.is_false(fixtures.has_userdata(status))
    end)

    it("keeps integral numbers integral", function()
      emu:script { method = "GET", path = "/api/public/dock-status/ds-numbers", responses = {
        { status = 200, headers = { ["Content-Type"] = "application/json" },
          body = '{"_id":"ds-numbers","status":"IN_PROGRESS","percentageComplete":50,'
            .. '"counts":[1,2.5,9007199254740992],"ratio":0.25}' } } }
      local status = assert(client.workflow.status("ds-numbers"))
      assert.equal("50", tostring(status.percentageComplete))
      assert.equal("1", tostring(status.counts[1]))
      assert.equal("2.5", tostring(status.counts[2]))
      assert.equal("9007199254740992", ("%.0f"):format(status.counts[3]))
      assert.equal("0.25", tostring(status.ratio))
      assert.equal("/api/public/dock-status/50", (function()
        client.workflow.status(status.percentageComplete)
        local requests = api_requests(emu)
        return requests[#requests].path
      end)())
    end)

    it("formats a numeric id without a fraction", function()
      client.workflow.status(42)
      assert.equal("/api/public/dock-status/42", api_requests(emu)[1].path)
    end)

    it("rejects a numeric id above 2^53 without a request", function()
      local ok, message = pcall(client.workflow.status, 2 ^ 53 + 2)
      assert.is_false(ok)
      assert.matches("2^53", message, 1, true)
      assert.equal(0, request_count(emu))
    end)

    it("returns invalid_response for a 200 HTML page", function()
      emu:script { method = "GET", path = "/api/public/dock-status/ds-html", responses = {
        { status = 200, headers = { ["Content-Type"] = "text/html" },
          body = "<html><body>Please log in\r\n<script>x()</script></body></html>" } } }
      local status, err = client.workflow.status("ds-html")
      assert.is_nil(status)
      assert.equal("invalid_response", err.kind)
      assert.matches("text/html", err.message, 1, true)
      assert.matches("200", err.message, 1, true)
      assert.is_true(#err.body <= 200)
      assert.is_nil(err.body:find("[\r\n]"))
    end)

    it("returns a retryable http error for a 502 HTML page", function()
      emu:script { method = "GET", path = "/api/public/dock-status/ds-502", responses = {
        { status = 502, headers = { ["Content-Type"] = "text/html" },
          body = "<html><h1>502 Bad Gateway</h1></html>" } } }
      local status, err = client.workflow.status("ds-502")
      assert.is_nil(status)
      assert.equal("http", err.kind)
      assert.equal(502, err.status)
      assert.is_true(err.retryable)
    end)

    it("times out within the limit", function()
      emu:script { method = "GET", path = "/api/public/dock-status/ds-slow", responses = {
        { delay = 3, passthrough = true } } }
      local started = kw.monotonic()
      local status, err = client.workflow.status("ds-slow", { timeout = 0.5 })
      local elapsed = kw.monotonic() - started
      print(("status call timed out after %.3f s with a 0.5 s limit"):format(elapsed))
      assert.is_nil(status)
      assert.equal("timeout", err.kind)
      assert.is_true(elapsed < 2)
    end)

    it("returns 404 naming the id", function()
      local status, err = client.workflow.status("ds-missing")
      assert.is_nil(status)
      assert.equal(404, err.status)
      assert.matches("ds-missing", tostring(err), 1, true)
      assert.is_false(err.retryable)
    end)
  end)

  describe("wait", function()
    it("returns the job at SUCCESS", function()
      local ids = upload_example(client, fixtures.EXAMPLE_DIR)
      local job = assert(client.workflow.import(WORKFLOW_ID, ids))
      local seen = {}
      local final, err = client:wait(job.dockStatusId, fast_wait_options {
        on_progress = function(status) seen[#seen + 1] = status.status end })
      assert.is_nil(err)
      assert.equal("SUCCESS", final.status)
      assert.equal(job.dockStatusId, final.dockStatusId)
      assert.equal("SUCCESS", seen[#seen])
      assert.is_true(#seen >= 2)
    end)

    it("returns job_failed for an invalid definition", function()
      local ids = upload_example(client, fixtures.EXAMPLE_DIR)
      local broken = fixtures.write_temp("{ not json", ".json")
      ids.flowDataFileId = assert(client.files.upload(broken)).fileId
      os.remove(broken)
      local job = assert(client.workflow.import(WORKFLOW_ID, ids))
      local final, err = client:wait(job.dockStatusId, fast_wait_options())
      assert.is_nil(final)
      assert.equal("job_failed", err.kind)
      assert.equal("FAILED", err.job.status)
      assert.matches(job.dockStatusId, tostring(err), 1, true)
    end)

    it("retries a 502 HTML page twice, then succeeds", function()
      local ids = upload_example(client, fixtures.EXAMPLE_DIR)
      local job = assert(client.workflow.import(WORKFLOW_ID, ids))
      local html = { status = 502, headers = { ["Content-Type"] = "text/html" },
                     body = "<html>Bad Gateway</html>" }
      emu:script { method = "GET", path = "/api/public/dock-status/" .. job.dockStatusId,
                   responses = { html, html } }
      local final, err = client:wait(job.dockStatusId, fast_wait_options())
      assert.is_nil(err)
      assert.equal("SUCCESS", final.status)
    end)

    for _, body in ipairs { '{"status": null}', "{}", '{"status": 3}' } do
      it("returns invalid_response for " .. body, function()
        emu:script { method = "GET", path = "/api/public/dock-status/ds-odd", responses = {
          { status = 200, headers = { ["Content-Type"] = "application/json" }, body = body } } }
        local final, err = client:wait("ds-odd", fast_wait_options())
        assert.is_nil(final)
        assert.equal("invalid_response", err.kind)
        assert.matches("ds-odd", tostring(err), 1, true)
      end)
    end

    it("ends at once on 404", function()
      local started = kw.monotonic()
      local final, err = client:wait("ds-gone", fast_wait_options())
      assert.is_nil(final)
      assert.equal(404, err.status)
      assert.equal(1, request_count(emu))
      assert.is_true(kw.monotonic() - started < 5)
    end)
  end)

  describe("import_files", function()
    it("imports an export directory", function()
      local steps = {}
      local final, err = client:import_files(WORKFLOW_ID, fixtures.EXAMPLE_DIR,
        fast_wait_options { on_step = function(step) steps[#steps + 1] = step end })
      assert.is_nil(err)
      assert.equal("SUCCESS", final.status)
      assert.same({ "check", "upload", "upload", "upload", "import", "wait" }, steps)
      local stored = emu:workflow(WORKFLOW_ID)
      local stored_name = {
        workflowDataFileId = "workflowData",
        flowDataFileId = "flowData",
        envVariablesFileId = "envVariables",
      }
      for _, def in ipairs(kw.definition_files) do
        assert.equal(fixtures.read_file(fixtures.EXAMPLE_DIR .. "/" .. def.file),
          stored[stored_name[def.field]])
      end
    end)

    it("imports a table of paths", function()
      local dir = fixtures.EXAMPLE_DIR
      local final, err = client:import_files(WORKFLOW_ID, {
        workflow_data = dir .. "/app_definition.json",
        flow_data = dir .. "/flow_definition.json",
        env_variables = dir .. "/env_variables.json",
      }, fast_wait_options())
      assert.is_nil(err)
      assert.equal("SUCCESS", final.status)
    end)

    it("returns the job at once with wait = false", function()
      local job, err = client:import_files(WORKFLOW_ID, fixtures.EXAMPLE_DIR, { wait = false })
      assert.is_nil(err)
      assert.equal("IN_PROGRESS", job.status)
    end)

    it("rejects a directory missing env_variables.json without a request", function()
      local dir = fixtures.copy_example()
      os.remove(dir .. "/env_variables.json")
      local final, err = client:import_files(WORKFLOW_ID, dir)
      assert.is_nil(final)
      assert.equal("file", err.kind)
      assert.matches("env_variables.json", tostring(err), 1, true)
      assert.equal(0, request_count(emu))
    end)

    it("rejects a definition that is not valid JSON without a request", function()
      local dir = fixtures.copy_example()
      local handle = assert(io.open(dir .. "/flow_definition.json", "wb"))
      handle:write('{"nodes": [')
      handle:close()
      local final, err = client:import_files(WORKFLOW_ID, dir)
      assert.is_nil(final)
      assert.equal("file", err.kind)
      assert.matches("flow_definition.json", tostring(err), 1, true)
      assert.matches("not valid JSON", tostring(err), 1, true)
      assert.equal(0, request_count(emu))
    end)

    for _, id in ipairs { "", ".", "..", ("a"):rep(1025) } do
      it("rejects workflow id of " .. #id .. " bytes before uploading", function()
        local ok, message = pcall(client.import_files, client, id, fixtures.EXAMPLE_DIR)
        assert.is_false(ok)
        assert.matches("workflow id", message, 1, true)
        assert.equal(0, request_count(emu))
      end)
    end

    it("raises on a table missing a path", function()
      local ok, message = pcall(client.import_files, client, WORKFLOW_ID, {
        workflow_data = "a.json", flow_data = "b.json" })
      assert.is_false(ok)
      assert.matches("env_variables", message, 1, true)
    end)
  end)
end)

describe("client keys", function()
  local emu

  setup(function()
    emu = emulator.start { api_key = "kg-1" }
  end)

  teardown(function()
    emu:stop()
  end)

  it("trims surrounding white space from a key", function()
    local client = kw.client { host = emu.url, api_key = "kg-1\n" }
    local status, err = client.workflow.status("ds-none")
    assert.is_nil(status)
    assert.equal(404, err.status)
    local last = emu:requests()
    assert.is_true(last[#last].key_ok)
  end)

  for _, case in ipairs {
    { key = "kg-1\r\nX-Injected: 1", pattern = "control character" },
    { key = "", pattern = "empty" },
    { key = "  \n", pattern = "empty" },
  } do
    it("rejects key " .. ("%q"):format(case.key), function()
      emu:reset()
      local ok, message = pcall(kw.client, { host = emu.url, api_key = case.key })
      assert.is_false(ok)
      assert.matches(case.pattern, message, 1, true)
      assert.is_nil(message:find("X-Injected", 1, true))
      assert.equal(0, #emu:requests())
    end)
  end

  it("reports a wrong key as HTTP 401", function()
    local client = kw.client { host = emu.url, api_key = "kg-wrong" }
    local status, err = client.workflow.status("ds-1")
    assert.is_nil(status)
    assert.equal(401, err.status)
    assert.matches("API key", tostring(err), 1, true)
    assert.is_nil(tostring(err):find("kg-wrong", 1, true))
  end)
end)

describe("job id drift", function()
  for _, field in ipairs { "dockStatusId", "dock-statusId", "_id" } do
    it("normalises an import record using " .. field, function()
      local emu = emulator.start { api_key = KEY, id_field = field, polls = 1 }
      local client = kw.client { host = emu.url, api_key = KEY }
      local ok, final, err = pcall(function()
        return client:import_files(WORKFLOW_ID, fixtures.EXAMPLE_DIR, fast_wait_options())
      end)
      emu:stop()
      assert.is_true(ok, final)
      assert.is_nil(err)
      assert.equal("SUCCESS", final.status)
      assert.is_string(final.dockStatusId)
    end)
  end
end)

describe("default client", function()
  it("raises when no host is configured", function()
    kw.configure { host = nil }
    if os.getenv("KORE_HOST") then
      pending("KORE_HOST is set in this environment, so the default client has a host")
      return
    end
    local ok, message = pcall(kw.workflow.status, "ds-1")
    assert.is_false(ok)
    assert.matches("KORE_HOST", message, 1, true)
  end)

  it("uses kore_workflow.configure", function()
    local emu = emulator.start { api_key = KEY }
    kw.configure { host = emu.url, api_key = KEY }
    local status, err = kw.workflow.status("ds-unknown")
    emu:stop()
    assert.is_nil(status)
    assert.equal(404, err.status)
  end)
end)
