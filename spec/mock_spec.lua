-- Specs for the API emulator itself, over real HTTP to a spawned emulator
-- process: socket.http for plain calls, raw LuaSocket connections where the
-- test controls framing, keep-alive or timing.
local socket = require("socket")
local cjson = require("cjson")
local emulator = require("support.emulator")

local KEY = "kg-5b0d4a52-8f0e-4a38-9a0e-2f6c9a3e1d77-0c1f9e4e-6a3b-4f1e-8d3e-7e2b5c4a9f10"
local DEFAULT_WORKFLOW = "a-00000000-0000-4000-8000-000000000001"
local OTHER_WORKFLOW = "a-11111111-2222-4333-8444-555555555555"
local IMPORT_FIELDS = { "workflowDataFileId", "flowDataFileId", "envVariablesFileId" }

local function decode(text)
  local ok, value = pcall(cjson.decode, text)
  if ok then
    return value
  end
  return nil
end

-- Sends an API request with the test key unless headers.x-api-key is set
-- (false sends no key). Returns the status, the decoded JSON reply and its text.
local function api(emu, method, path, body, headers)
  local request_headers = { ["x-api-key"] = KEY }
  for name, value in pairs(headers or {}) do
    request_headers[name] = value or nil
  end
  if type(body) == "table" then
    body = cjson.encode(body)
    request_headers["content-type"] = "application/json"
  end
  local status, text = emulator.http_request(method, emu.url .. path, body, request_headers)
  assert(status, text)
  return status, decode(text), text
end

local function multipart_body(boundary, parts)
  local out = {}
  for _, part in ipairs(parts) do
    out[#out + 1] = "--" .. boundary .. "\r\n"
    local disposition = 'Content-Disposition: form-data; name="' .. part.name .. '"'
    if part.filename then
      disposition = disposition .. '; filename="' .. part.filename .. '"'
    end
    out[#out + 1] = disposition .. "\r\n"
    if part.content_type then
      out[#out + 1] = "Content-Type: " .. part.content_type .. "\r\n"
    end
    out[#out + 1] = "\r\n" .. part.content .. "\r\n"
  end
  out[#out + 1] = "--" .. boundary .. "--\r\n"
  return table.concat(out)
end

-- Uploads content as the `file` field. Returns the status and decoded reply.
local function upload(emu, content, filename, boundary)
  boundary = boundary or "spec-boundary-7f3a9c"
  local body = multipart_body(boundary, {
    { name = "file", filename = filename or "definition.json", content_type = "application/json", content = content },
    { name = "fileContext", content = "bulkImport" },
  })
  local status, reply = api(emu, "POST", "/api/public/files", body,
    { ["content-type"] = "multipart/form-data; boundary=" .. boundary })
  return status, reply
end

local function upload_id(emu, content, filename)
  local status, reply = upload(emu, content, filename)
  assert.equal(200, status)
  return reply.fileId
end

local function import_body(workflow_data, flow_data, env_variables)
  return {
    workflowDataFileId = workflow_data,
    flowDataFileId = flow_data,
    envVariablesFileId = env_variables,
  }
end

-- Polls a dock status until it ends. Returns the final record and the
-- number of polls that returned IN_PROGRESS.
local function poll_until_done(emu, id)
  local in_progress = 0
  for _ = 1, 20 do
    local status, record = api(emu, "GET", "/api/public/dock-status/" .. id)
    assert.equal(200, status)
    if record.status ~= "IN_PROGRESS" then
      return record, in_progress
    end
    in_progress = in_progress + 1
  end
  error("dock status " .. id .. " was still IN_PROGRESS after 20 polls")
end

local function parse_url(url)
  local host, port = url:match("^http://([^/]+):(%d+)$")
  return host, tonumber(port)
end

local function connect(emu)
  local host, port = parse_url(emu.url)
  local sock = assert(socket.tcp())
  sock:settimeout(10)
  assert(sock:connect(host, port))
  return sock
end

local function raw_request(method, path, headers, body)
  local lines = { method .. " " .. path .. " HTTP/1.1", "Host: 127.0.0.1" }
  for _, header in ipairs(headers or {}) do
    lines[#lines + 1] = header
  end
  if body then
    lines[#lines + 1] = "Content-Length: " .. #body
  end
  return table.concat(lines, "\r\n") .. "\r\n\r\n" .. (body or "")
end

-- Reads one response with a Content-Length body from a raw connection.
-- Returns the status, lowercased headers and body, or nil and the socket error.
local function read_response(sock)
  local status_line, err = sock:receive("*l")
  if not status_line then
    return nil, err
  end
  local status = tonumber(status_line:match("^HTTP/1%.%d (%d%d%d)"))
  local headers = {}
  while true do
    local line, line_err = sock:receive("*l")
    if not line then
      return nil, line_err
    end
    if line == "" then
      break
    end
    local name, value = line:match("^([^:]+):%s*(.*)$")
    headers[name:lower()] = value
  end
  local length = tonumber(headers["content-length"] or "0")
  local body = ""
  if length > 0 then
    local data, body_err = sock:receive(length)
    if not data then
      return nil, body_err
    end
    body = data
  end
  return status, headers, body
end

local function last_request(emu)
  local log = emu:requests()
  return log[#log]
end

describe("mock emulator", function()
  local emu

  setup(function()
    emu = emulator.start({ api_key = KEY, polls = 1, workflows = { DEFAULT_WORKFLOW, OTHER_WORKFLOW } })
  end)

  teardown(function()
    emu:stop()
  end)

  before_each(function()
    emu:reset()
  end)

  describe("authentication", function()
    it("rejects a missing key", function()
      local status, reply = api(emu, "GET", "/api/public/dock-status/ds-1", nil, { ["x-api-key"] = false })
      assert.equal(401, status)
      assert.is_string(reply.message)
      assert.matches("x%-api%-key", reply.message)
    end)

    it("rejects a wrong key", function()
      local status, reply, text = api(emu, "GET", "/api/public/dock-status/ds-1", nil,
        { ["x-api-key"] = KEY .. "x" })
      assert.equal(401, status)
      assert.equal("UNAUTHORIZED", reply.code)
      assert.is_nil(text:find(KEY, 1, true))
    end)

    it("matches the header name in any case", function()
      local status = api(emu, "GET", "/api/public/dock-status/ds-1", nil,
        { ["x-api-key"] = false, ["X-API-KEY"] = KEY })
      assert.equal(404, status)
      assert.is_true(last_request(emu).key_ok)
    end)
  end)

  describe("import", function()
    it("uploads, imports and polls to SUCCESS", function()
      local contents = { '{"app": "definition"}', '{"flow": [1, 2, 3]}', '{"env": {"A": "1"}}' }
      local ids = {}
      for i, content in ipairs(contents) do
        ids[i] = upload_id(emu, content, "file" .. i .. ".json")
        assert.matches("^%x+$", ids[i])
        assert.equal(24, #ids[i])
        assert.equal(ids[i]:lower(), ids[i])
      end

      local status, job = api(emu, "POST", "/api/public/workflows/" .. OTHER_WORKFLOW .. "/import",
        import_body(ids[1], ids[2], ids[3]))
      assert.equal(200, status)
      assert.matches("^ds%-%x+%-%x+%-4%x+%-[89ab]%x+%-%x+$", job.dockStatusId)
      assert.equal(OTHER_WORKFLOW, job.workflowId)
      assert.equal("WORKFLOWS", job.jobType)
      assert.equal("IMPORT", job.action)
      assert.equal("IN_PROGRESS", job.status)

      local final, in_progress = poll_until_done(emu, job.dockStatusId)
      assert.equal(1, in_progress)
      assert.equal("SUCCESS", final.status)
      assert.equal(job.dockStatusId, final._id)
      assert.equal(OTHER_WORKFLOW, final.workflowId)
      assert.is_nil(final.message)

      local stored = emu:workflow(OTHER_WORKFLOW)
      assert.equal(contents[1], stored.workflowData)
      assert.equal(contents[2], stored.flowData)
      assert.equal(contents[3], stored.envVariables)
    end)

    it("counts replaced versions", function()
      local workflow = "a-history-" .. tostring(math.floor(socket.gettime() * 1000))
      emu:seed_workflow(workflow)
      assert.equal(0, emu:workflow(workflow).history)
      for round = 1, 3 do
        local id = upload_id(emu, '{"round": ' .. round .. "}")
        local _, job = api(emu, "POST", "/api/public/workflows/" .. workflow .. "/import",
          import_body(id, id, id))
        assert.equal("SUCCESS", (poll_until_done(emu, job.dockStatusId)).status)
      end
      local stored = emu:workflow(workflow)
      assert.equal('{"round": 3}', stored.flowData)
      assert.equal(2, stored.history)
    end)

    it("fails a job whose file is not JSON", function()
      local good = upload_id(emu, "{}")
      local bad = upload_id(emu, "{not json", "flow_definition.json")
      local _, job = api(emu, "POST", "/api/public/workflows/" .. DEFAULT_WORKFLOW .. "/import",
        import_body(good, bad, good))
      local final = poll_until_done(emu, job.dockStatusId)
      assert.equal("FAILED", final.status)
      assert.is_string(final.message)
      assert.truthy(final.message:find(bad, 1, true))
      assert.truthy(final.message:find("flowDataFileId", 1, true))
      assert.truthy(final.message:find("flow_definition.json", 1, true))
    end)

    it("keeps the old version after a failed job", function()
      local id = upload_id(emu, '{"kept": true}')
      local _, job = api(emu, "POST", "/api/public/workflows/" .. DEFAULT_WORKFLOW .. "/import",
        import_body(id, id, id))
      poll_until_done(emu, job.dockStatusId)
      local bad = upload_id(emu, "")
      _, job = api(emu, "POST", "/api/public/workflows/" .. DEFAULT_WORKFLOW .. "/import",
        import_body(id, id, bad))
      assert.equal("FAILED", (poll_until_done(emu, job.dockStatusId)).status)
      assert.equal('{"kept": true}', emu:workflow(DEFAULT_WORKFLOW).envVariables)
    end)

    it("imports a new workflow by name", function()
      local id = upload_id(emu, '{"new": true}')
      local name = "spec workflow " .. tostring(socket.gettime())
      local status, job = api(emu, "POST", "/api/public/workflows/import",
        { workflowName = name, workflowDataFileId = id, flowDataFileId = id })
      assert.equal(200, status)
      assert.matches("^a%-%x+%-", job.workflowId)
      assert.equal("SUCCESS", (poll_until_done(emu, job.dockStatusId)).status)
      local stored = emu:workflow(job.workflowId)
      assert.equal(name, stored.name)
      assert.equal('{"new": true}', stored.workflowData)
      assert.is_nil(stored.envVariables)

      local again = api(emu, "POST", "/api/public/workflows/import",
        { workflowName = name, workflowDataFileId = id, flowDataFileId = id })
      assert.equal(409, again)
    end)

    it("seeds a workflow through the control route", function()
      local id = "a-seeded-" .. tostring(math.floor(socket.gettime() * 1000))
      assert.is_nil(emu:workflow(id))
      local file = upload_id(emu, "{}")
      local before = api(emu, "POST", "/api/public/workflows/" .. id .. "/import", import_body(file, file, file))
      assert.equal(404, before)
      emu:seed_workflow(id)
      local after = api(emu, "POST", "/api/public/workflows/" .. id .. "/import", import_body(file, file, file))
      assert.equal(200, after)
      assert.equal(id, emu:workflow(id).id)
    end)
  end)

  describe("errors", function()
    it("names an unknown workflow in a 404", function()
      local file = upload_id(emu, "{}")
      local status, reply = api(emu, "POST", "/api/public/workflows/a-missing/import", import_body(file, file, file))
      assert.equal(404, status)
      assert.truthy(reply.message:find("a-missing", 1, true))
    end)

    it("decodes an encoded slash within one segment", function()
      local file = upload_id(emu, "{}")
      local status, reply = api(emu, "POST", "/api/public/workflows/a%2Fb/import", import_body(file, file, file))
      assert.equal(404, status)
      assert.truthy(reply.message:find('"a/b"', 1, true))
      assert.equal("/api/public/workflows/a%2Fb/import", last_request(emu).path)
    end)

    it("names each missing field in a 400", function()
      local file = upload_id(emu, "{}")
      for _, missing in ipairs(IMPORT_FIELDS) do
        local body = import_body(file, file, file)
        body[missing] = nil
        local status, reply = api(emu, "POST", "/api/public/workflows/" .. DEFAULT_WORKFLOW .. "/import", body)
        assert.equal(400, status)
        assert.truthy(reply.message:find(missing, 1, true))
      end
    end)

    it("rejects a non-string file id", function()
      local file = upload_id(emu, "{}")
      local body = import_body(file, 12345, file)
      local status, reply = api(emu, "POST", "/api/public/workflows/" .. DEFAULT_WORKFLOW .. "/import", body)
      assert.equal(400, status)
      assert.truthy(reply.message:find("flowDataFileId", 1, true))
    end)

    it("names an unknown file id in a 400", function()
      local file = upload_id(emu, "{}")
      local body = import_body(file, file, "0123456789abcdef01234567")
      local status, reply = api(emu, "POST", "/api/public/workflows/" .. DEFAULT_WORKFLOW .. "/import", body)
      assert.equal(400, status)
      assert.truthy(reply.message:find("0123456789abcdef01234567", 1, true))
    end)

    it("rejects a body that is not an object", function()
      for _, body in ipairs({ "", "[]", "42", "not json", '"text"' }) do
        local status, reply = api(emu, "POST", "/api/public/workflows/" .. DEFAULT_WORKFLOW .. "/import", body,
          { ["content-type"] = "application/json" })
        assert.equal(400, status)
        assert.equal("BAD_REQUEST", reply.code)
      end
    end)

    it("rejects an upload without fileContext", function()
      local boundary = "b-1"
      local body = multipart_body(boundary, { { name = "file", filename = "x.json", content = "{}" } })
      local status, reply = api(emu, "POST", "/api/public/files", body,
        { ["content-type"] = "multipart/form-data; boundary=" .. boundary })
      assert.equal(400, status)
      assert.truthy(reply.message:find("fileContext", 1, true))
    end)

    it("rejects an upload without file", function()
      local boundary = "b-2"
      local body = multipart_body(boundary, { { name = "fileContext", content = "bulkImport" } })
      local status, reply = api(emu, "POST", "/api/public/files", body,
        { ["content-type"] = "multipart/form-data; boundary=" .. boundary })
      assert.equal(400, status)
      assert.truthy(reply.message:find('"file"', 1, true))
    end)

    it("returns 404 for an unknown dock status", function()
      local status, reply = api(emu, "GET", "/api/public/dock-status/ds-unknown")
      assert.equal(404, status)
      assert.truthy(reply.message:find("ds-unknown", 1, true))
    end)

    it("returns JSON 404 for an unknown route", function()
      local status, reply = api(emu, "GET", "/api/public/nothing-here")
      assert.equal(404, status)
      assert.equal("NOT_FOUND", reply.code)
    end)

    it("returns JSON 405 for a wrong method", function()
      local status, reply = api(emu, "GET", "/api/public/files")
      assert.equal(405, status)
      assert.equal("METHOD_NOT_ALLOWED", reply.code)
    end)
  end)

  describe("scripts", function()
    it("returns 502 once, then the normal reply", function()
      emu:script({ method = "GET", path = "/api/public/dock-status/ds-scripted",
        responses = { { status = 502, body = "upstream failed" } } })
      local status, _, text = api(emu, "GET", "/api/public/dock-status/ds-scripted")
      assert.equal(502, status)
      assert.equal("upstream failed", text)
      status = api(emu, "GET", "/api/public/dock-status/ds-scripted")
      assert.equal(404, status)
      local log = emu:requests()
      assert.equal(502, log[1].response_status)
      assert.equal(404, log[2].response_status)
    end)

    it("repeats a response list", function()
      emu:script({ path = "/api/public/dock-status/ds-repeat", ["repeat"] = 2,
        responses = { { status = 503 }, { status = 429, headers = { ["Retry-After"] = "1" } } } })
      local statuses = {}
      for i = 1, 5 do
        statuses[i] = api(emu, "GET", "/api/public/dock-status/ds-repeat")
      end
      assert.same({ 503, 429, 503, 429, 404 }, statuses)
    end)

    it("matches a path pattern", function()
      emu:script({ method = "GET", path_pattern = "^/api/public/dock%-status/ds%-p", responses = { { status = 500 } } })
      assert.equal(404, (api(emu, "GET", "/api/public/dock-status/ds-other")))
      assert.equal(500, (api(emu, "GET", "/api/public/dock-status/ds-pattern")))
    end)

    it("sends scripted headers", function()
      emu:script({ path = "/api/public/dock-status/ds-h",
        responses = { { status = 429, headers = { ["Retry-After"] = "7" }, body = "{}" } } })
      local sock = connect(emu)
      sock:send(raw_request("GET", "/api/public/dock-status/ds-h", { "x-api-key: " .. KEY }))
      local status, headers = read_response(sock)
      sock:close()
      assert.equal(429, status)
      assert.equal("7", headers["retry-after"])
    end)

    it("drops the connection without a reply", function()
      emu:script({ path = "/api/public/dock-status/ds-drop", responses = { { drop = true } } })
      local sock = connect(emu)
      sock:send(raw_request("GET", "/api/public/dock-status/ds-drop", { "x-api-key: " .. KEY }))
      local status, err = read_response(sock)
      sock:close()
      assert.is_nil(status)
      assert.equal("closed", err)
      assert.equal("drop", last_request(emu).closed)
    end)

    it("resets the connection", function()
      emu:script({ path = "/api/public/dock-status/ds-reset", responses = { { reset = true } } })
      local sock = connect(emu)
      sock:send(raw_request("GET", "/api/public/dock-status/ds-reset", { "x-api-key: " .. KEY }))
      local status, err = read_response(sock)
      sock:close()
      assert.is_nil(status)
      assert.truthy(err == "closed" or err:find("reset"), "unexpected socket error " .. tostring(err))
      assert.equal("reset", last_request(emu).closed)
    end)

    it("delays a passthrough reply", function()
      emu:script({ path = "/api/public/dock-status/ds-late", responses = { { delay = 0.3, passthrough = true } } })
      local started = socket.gettime()
      local status = api(emu, "GET", "/api/public/dock-status/ds-late")
      local elapsed = socket.gettime() - started
      assert.equal(404, status)
      assert.is_true(elapsed >= 0.3, string.format("reply came after %.3f s", elapsed))
    end)

    it("rejects an invalid script", function()
      local status = emulator.http_request("POST", emu.url .. "/_mock/script",
        cjson.encode({ path = "/x", responses = {} }), { ["content-type"] = "application/json" })
      assert.equal(400, status)
    end)

    it("forgets scripts on reset", function()
      emu:script({ path = "/api/public/dock-status/ds-forever", ["repeat"] = -1, responses = { { status = 500 } } })
      assert.equal(500, (api(emu, "GET", "/api/public/dock-status/ds-forever")))
      assert.equal(500, (api(emu, "GET", "/api/public/dock-status/ds-forever")))
      emu:reset()
      assert.equal(404, (api(emu, "GET", "/api/public/dock-status/ds-forever")))
    end)
  end)

  describe("connections", function()
    it("serves other connections during a delay", function()
      local delay = 1.5
      emu:script({ path = "/api/public/dock-status/ds-slow",
        responses = { { delay = delay, status = 200, body = "{}" } } })
      local slow = connect(emu)
      local slow_started = socket.gettime()
      slow:send(raw_request("GET", "/api/public/dock-status/ds-slow", { "x-api-key: " .. KEY }))
      -- Wait until the emulator has read the slow request, so the fast one is not served first by luck.
      local waited = 0
      while #emu:requests() == 0 and waited < 50 do
        socket.sleep(0.01)
        waited = waited + 1
      end

      local fast = connect(emu)
      local fast_started = socket.gettime()
      fast:send(raw_request("GET", "/api/public/dock-status/ds-fast", { "x-api-key: " .. KEY }))
      local fast_status = read_response(fast)
      local fast_done = socket.gettime()
      fast:close()

      local slow_status = read_response(slow)
      local slow_elapsed = socket.gettime() - slow_started
      slow:close()
      -- The time since the slow request was sent also covers the request log
      -- calls above, because a blocked emulator would not respond to them either.
      local since_slow = fast_done - slow_started
      print(string.format("\nsecond connection answered in %.1f ms (%.1f ms after the delayed request was sent);"
        .. " the delayed reply came after %.0f ms", (fast_done - fast_started) * 1000, since_slow * 1000,
        slow_elapsed * 1000))
      assert.equal(404, fast_status)
      assert.equal(200, slow_status)
      assert.is_true(since_slow < delay / 3, string.format("second connection answered after %.3f s", since_slow))
      assert.is_true(slow_elapsed >= delay, string.format("delayed reply came after %.3f s", slow_elapsed))
    end)

    it("serves several requests on one connection", function()
      local sock = connect(emu)
      for i = 1, 3 do
        sock:send(raw_request("GET", "/api/public/dock-status/ds-keep-" .. i, { "x-api-key: " .. KEY }))
        local status, headers, body = read_response(sock)
        assert.equal(404, status)
        assert.equal("keep-alive", headers.connection)
        assert.truthy(body:find("ds-keep-" .. i, 1, true))
      end
      sock:close()
      assert.equal(3, #emu:requests())
    end)

    it("replies to pipelined requests in order", function()
      local sock = connect(emu)
      sock:send(raw_request("GET", "/api/public/dock-status/ds-pipe-1", { "x-api-key: " .. KEY })
        .. raw_request("GET", "/api/public/dock-status/ds-pipe-2", { "x-api-key: " .. KEY }))
      local _, _, first = read_response(sock)
      local _, _, second = read_response(sock)
      sock:close()
      assert.truthy(first:find("ds-pipe-1", 1, true))
      assert.truthy(second:find("ds-pipe-2", 1, true))
    end)

    it("reads a chunked body after 100 Continue", function()
      local sock = connect(emu)
      local json = cjson.encode({ workflowDataFileId = "w" })
      sock:send(table.concat({
        "POST /api/public/workflows/" .. DEFAULT_WORKFLOW .. "/import HTTP/1.1",
        "Host: 127.0.0.1",
        "x-api-key: " .. KEY,
        "Content-Type: application/json",
        "Transfer-Encoding: chunked",
        "Expect: 100-continue",
        "", "",
      }, "\r\n"))
      local interim = sock:receive("*l")
      assert.equal("HTTP/1.1 100 Continue", interim)
      assert.equal("", sock:receive("*l"))
      local half = math.floor(#json / 2)
      sock:send(string.format("%x\r\n%s\r\n%X;ext=1\r\n%s\r\n0\r\n\r\n",
        half, json:sub(1, half), #json - half, json:sub(half + 1)))
      local status, _, body = read_response(sock)
      sock:close()
      assert.equal(400, status)
      assert.truthy(body:find("flowDataFileId", 1, true))
      local record = last_request(emu)
      assert.equal("w", record.body.workflowDataFileId)
      assert.equal(#json, record.body_size)
    end)

    it("rejects an invalid chunk size", function()
      local sock = connect(emu)
      sock:send("POST /api/public/files HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n")
      local status, headers = read_response(sock)
      sock:close()
      assert.equal(400, status)
      assert.equal("close", headers.connection)
    end)
  end)

  describe("request log", function()
    it("redacts the key", function()
      api(emu, "GET", "/api/public/dock-status/ds-log")
      api(emu, "GET", "/api/public/dock-status/ds-log", nil, { ["x-api-key"] = "kg-wrong" })
      local status, text = emulator.http_request("GET", emu.url .. "/_mock/requests")
      assert.equal(200, status)
      assert.is_nil(text:find(KEY, 1, true))
      local log = cjson.decode(text)
      assert.equal(2, #log)
      assert.equal("***", log[1].headers["x-api-key"])
      assert.equal("***", log[2].headers["x-api-key"])
      assert.is_true(log[1].key_ok)
      assert.is_false(log[2].key_ok)
      assert.equal(401, log[2].response_status)
    end)

    it("records method, path, body and status", function()
      local file = upload_id(emu, "{}")
      emu:reset()
      api(emu, "POST", "/api/public/workflows/" .. DEFAULT_WORKFLOW .. "/import?trace=1", import_body(file, file, file))
      local log = emu:requests()
      assert.equal(1, #log)
      local record = log[1]
      assert.equal("POST", record.method)
      assert.equal("/api/public/workflows/" .. DEFAULT_WORKFLOW .. "/import?trace=1", record.path)
      assert.equal(file, record.body.flowDataFileId)
      assert.equal("application/json", record.headers["content-type"])
      assert.equal(200, record.response_status)
      assert.is_true(record.body_size > 0)
    end)

    it("leaves out control requests", function()
      emu:requests()
      emu:workflow(DEFAULT_WORKFLOW)
      local log = emu:requests()
      assert.equal(0, #log)
    end)

    it("starts empty after reset", function()
      api(emu, "GET", "/api/public/dock-status/ds-before-reset")
      assert.equal(1, #emu:requests())
      emu:reset()
      local status, text = emulator.http_request("GET", emu.url .. "/_mock/requests")
      assert.equal(200, status)
      assert.equal("[]", text)
    end)
  end)

  describe("multipart", function()
    -- Content that breaks naive parsers: NUL bytes, CR LF, every byte value,
    -- and the boundary text where it is not a real delimiter.
    local boundary = "XyZ-boundary"
    local bytes = {}
    for i = 0, 255 do
      bytes[#bytes + 1] = string.char(i)
    end
    local tricky = table.concat({
      "\0\0start\r\n",
      "--" .. boundary .. " inline, not at a line start\r\n",
      "\r\n--" .. boundary .. "X not a delimiter because of the X\r\n",
      "\r\n--" .. boundary .. "-- not at the end\n",
      "\r\n--" .. boundary .. "-",
      table.concat(bytes),
      "\r\n\r\n",
    })

    it("round-trips tricky content exactly", function()
      local status, reply = upload(emu, tricky, "tricky.bin", boundary)
      assert.equal(200, status)
      local url = reply.url
      assert.truthy(url:find(emu.url .. "/_mock/files/" .. reply.fileId .. "?", 1, true))
      assert.matches("signature=%x+", url)
      local get_status, content = emulator.http_request("GET", url)
      assert.equal(200, get_status)
      assert.equal(#tricky, #content)
      assert.is_true(content == tricky)
    end)

    it("records the parts with their headers", function()
      upload(emu, tricky, "tricky.bin", boundary)
      local parts = last_request(emu).parts
      assert.equal(2, #parts)
      assert.equal("file", parts[1].name)
      assert.equal("tricky.bin", parts[1].filename)
      assert.equal("application/json", parts[1].content_type)
      assert.equal(#tricky, parts[1].size)
      assert.truthy(parts[1].headers["content-disposition"]:find('filename="tricky.bin"', 1, true))
      assert.equal("fileContext", parts[2].name)
      assert.equal("bulkImport", parts[2].value)
    end)

    it("parses a body with a preamble and padding", function()
      local body = "preamble text\r\n--" .. boundary .. "  \r\n"
        .. 'content-disposition: form-data; name="file"; filename="p.json"\r\n\r\n'
        .. '{"p": 1}\r\n--' .. boundary .. "\r\n"
        .. 'Content-Disposition: form-data; name="fileContext"\r\n\r\n'
        .. "bulkImport\r\n--" .. boundary .. "--\r\nepilogue"
      local status, reply = api(emu, "POST", "/api/public/files", body,
        { ["content-type"] = 'multipart/form-data; boundary="' .. boundary .. '"' })
      assert.equal(200, status)
      local _, content = emulator.http_request("GET", reply.url)
      assert.equal('{"p": 1}', content)
    end)

    it("rejects a body without the close delimiter", function()
      local body = "--" .. boundary .. '\r\nContent-Disposition: form-data; name="file"; filename="a"\r\n\r\nabc'
      local status, reply = api(emu, "POST", "/api/public/files", body,
        { ["content-type"] = "multipart/form-data; boundary=" .. boundary })
      assert.equal(400, status)
      assert.truthy(reply.message:find("close delimiter", 1, true))
    end)

    it("rejects a file URL without its signature", function()
      local _, reply = upload(emu, "{}")
      local bare = reply.url:match("^[^?]+")
      assert.equal(403, (emulator.http_request("GET", bare)))
      local forged = reply.url:gsub("signature=%x+", "signature=00")
      assert.equal(403, (emulator.http_request("GET", forged)))
    end)
  end)
end)

describe("mock emulator id_field", function()
  for _, field in ipairs({ "dockStatusId", "dock-statusId", "_id" }) do
    it("names the job id " .. field, function()
      local emu = emulator.start({ api_key = KEY, polls = 0, id_field = field })
      finally(function()
        emu:stop()
      end)
      local file = upload_id(emu, "{}")
      local status, job = api(emu, "POST", "/api/public/workflows/" .. DEFAULT_WORKFLOW .. "/import",
        import_body(file, file, file))
      assert.equal(200, status)
      assert.matches("^ds%-", job[field])
      for _, other in ipairs({ "dockStatusId", "dock-statusId", "_id" }) do
        if other ~= field then
          assert.is_nil(job[other])
        end
      end
      local final, in_progress = poll_until_done(emu, job[field])
      assert.equal(0, in_progress)
      assert.equal(job[field], final._id)
    end)
  end
end)

describe("mock emulator process", function()
  local function run_cli(arguments, environment)
    local command = (environment or "") .. " lua5.4 " .. emulator.root .. "/bin/mock-server mock "
      .. arguments .. " 2>&1"
    local handle = io.popen(command, "r")
    local output = handle:read("*a")
    local _, _, code = handle:close()
    return code, output
  end

  it("exits 2 without an API key", function()
    local code, output = run_cli("", "env -u KORE_API_KEY")
    assert.equal(2, code)
    assert.truthy(output:find("--api-key-file", 1, true))
  end)

  it("exits 2 for an unknown option", function()
    local code, output = run_cli("--api-key k --bogus")
    assert.equal(2, code)
    assert.truthy(output:find("--bogus", 1, true))
  end)

  it("prints help", function()
    local code, output = run_cli("--help")
    assert.equal(0, code)
    assert.truthy(output:find("--idle-exit", 1, true))
  end)

  it("exits by itself when idle", function()
    local emu = emulator.start({ api_key = KEY, idle_exit = 0.5 })
    local host, port = parse_url(emu.url)
    local refused = false
    -- A probe connection counts as activity, so the first probe comes after
    -- the idle limit has passed.
    socket.sleep(1.5)
    for _ = 1, 50 do
      local sock = socket.tcp()
      sock:settimeout(1)
      local ok = sock:connect(host, port)
      sock:close()
      if not ok then
        refused = true
        break
      end
      socket.sleep(0.1)
    end
    emu:stop()
    emu:stop()
    assert.is_true(refused)
  end)
end)

describe("mock emulator fault scripts", function()
  local emu

  setup(function()
    emu = emulator.start({ api_key = KEY })
  end)

  teardown(function()
    emu:stop()
  end)

  before_each(function()
    emu:reset()
  end)

  local function status_request(id, extra_headers)
    local headers = { "x-api-key: " .. KEY }
    for _, header in ipairs(extra_headers or {}) do
      headers[#headers + 1] = header
    end
    return raw_request("GET", "/api/public/dock-status/" .. id, headers)
  end

  -- Reads the status line and header fields. Returns the status, the
  -- lowercased headers and the seconds the read took.
  local function read_head(sock)
    local started = socket.gettime()
    local status_line = assert(sock:receive("*l"))
    local headers = {}
    while true do
      local line = assert(sock:receive("*l"))
      if line == "" then
        break
      end
      local name, value = line:match("^([^:]+):%s*(.*)$")
      headers[name:lower()] = value
    end
    return tonumber(status_line:match("^HTTP/1%.%d (%d%d%d)")), headers, socket.gettime() - started
  end

  -- Decodes a chunked body from the socket. Returns the body.
  local function read_chunked(sock)
    local pieces = {}
    while true do
      local size = tonumber(assert(sock:receive("*l")), 16)
      if size == 0 then
        assert.equal("", sock:receive("*l"))
        return table.concat(pieces)
      end
      pieces[#pieces + 1] = assert(sock:receive(size))
      assert.equal("", sock:receive("*l"))
    end
  end

  local function script_error(script)
    local status, text = emulator.http_request("POST", emu.url .. "/_mock/script", cjson.encode(script),
      { ["content-type"] = "application/json" })
    return status, decode(text)
  end

  describe("raw", function()
    it("writes the bytes verbatim and closes", function()
      local raw = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n"
        .. '{"_id":"ds-raw","st'
      emu:script({ path = "/api/public/dock-status/ds-raw", responses = { { raw = raw, close = true } } })
      local sock = connect(emu)
      sock:send(status_request("ds-raw"))
      local received, err, partial = sock:receive("*a")
      sock:close()
      assert.is_nil(err)
      assert.equal(raw, received or partial)
      assert.equal(200, last_request(emu).response_status)
    end)

    it("keeps the connection open without close", function()
      local raw = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
      emu:script({ path = "/api/public/dock-status/ds-raw-open", responses = { { raw = raw } } })
      local sock = connect(emu)
      sock:send(status_request("ds-raw-open"))
      local status, _, body = read_response(sock)
      assert.equal(200, status)
      assert.equal("{}", body)
      sock:send(status_request("ds-after-raw"))
      status, _, body = read_response(sock)
      sock:close()
      assert.equal(404, status)
      assert.truthy(body:find("ds-after-raw", 1, true))
      local log = emu:requests()
      assert.equal(log[1].connection, log[2].connection)
    end)

    it("sends binary bytes unchanged", function()
      local bytes = {}
      for i = 0, 255 do
        bytes[#bytes + 1] = string.char(i)
      end
      local body = table.concat(bytes)
      local raw = "HTTP/1.1 200 OK\r\nContent-Length: 256\r\n\r\n" .. body
      emu:script({ path = "/api/public/dock-status/ds-bin", responses = { { raw = raw, close = true } } })
      local sock = connect(emu)
      sock:send(status_request("ds-bin"))
      local _, _, received = read_response(sock)
      sock:close()
      assert.is_true(received == body)
    end)
  end)

  describe("close", function()
    it("closes after a built response", function()
      emu:script({ path = "/api/public/dock-status/ds-close",
        responses = { { status = 200, body = "{}", close = true } } })
      local sock = connect(emu)
      sock:send(status_request("ds-close"))
      local status, headers, body = read_response(sock)
      assert.equal(200, status)
      assert.equal("close", headers.connection)
      assert.equal("{}", body)
      local more, err = sock:receive(1)
      sock:close()
      assert.is_nil(more)
      assert.equal("closed", err)
    end)
  end)

  describe("stall and trickle", function()
    it("stalls between head and body", function()
      local stall = 0.6
      emu:script({ path = "/api/public/dock-status/ds-stall", responses = { { body = '{"a":1}', stall = stall } } })
      local sock = connect(emu)
      local started = socket.gettime()
      sock:send(status_request("ds-stall"))
      local status, headers = read_head(sock)
      local head_at = socket.gettime() - started
      local body = sock:receive(tonumber(headers["content-length"]))
      local body_at = socket.gettime() - started
      sock:close()
      print(("\nhead after %.3f s, body after %.3f s"):format(head_at, body_at))
      assert.equal(200, status)
      assert.equal('{"a":1}', body)
      assert.is_true(head_at < stall / 2, ("head came after %.3f s"):format(head_at))
      assert.is_true(body_at >= stall, ("body came after %.3f s"):format(body_at))
    end)

    it("trickles the body one byte at a time", function()
      local trickle = 0.15
      local body = '{"b":2}'
      emu:script({ path = "/api/public/dock-status/ds-trickle", responses = { { body = body, trickle = trickle } } })
      local sock = connect(emu)
      sock:send(status_request("ds-trickle"))
      read_head(sock)
      local times = {}
      local received = {}
      local started = socket.gettime()
      for i = 1, #body do
        received[i] = assert(sock:receive(1))
        times[i] = socket.gettime() - started
      end
      sock:close()
      assert.equal(body, table.concat(received))
      local span = times[#body] - times[1]
      print(("\n%d bytes over %.3f s"):format(#body, span))
      assert.is_true(span >= trickle * (#body - 1) * 0.9, ("bytes came over %.3f s"):format(span))
    end)

    it("serves other connections during a stall and a trickle", function()
      emu:script({ path = "/api/public/dock-status/ds-slow-1", responses = { { body = "{}", stall = 2 } } })
      emu:script({ path = "/api/public/dock-status/ds-slow-2", responses = { { body = '{"x":1}', trickle = 1 } } })
      local stalled = connect(emu)
      stalled:send(status_request("ds-slow-1"))
      local trickled = connect(emu)
      trickled:send(status_request("ds-slow-2"))
      read_head(stalled)
      read_head(trickled)
      local fast = connect(emu)
      local started = socket.gettime()
      fast:send(status_request("ds-fast"))
      local status = read_response(fast)
      local elapsed = socket.gettime() - started
      fast:close()
      stalled:close()
      trickled:close()
      print(("\nthird connection answered in %.1f ms"):format(elapsed * 1000))
      assert.equal(404, status)
      assert.is_true(elapsed < 0.5, ("third connection answered after %.3f s"):format(elapsed))
    end)
  end)

  describe("stream", function()
    it("generates a body of the given size with Content-Length", function()
      local bytes = 1000003
      emu:script({ path = "/api/public/dock-status/ds-stream", responses = {
        { stream = { bytes = bytes, chunk = "abc" }, headers = { ["Content-Type"] = "text/plain" } } } })
      local sock = connect(emu)
      sock:send(status_request("ds-stream"))
      local status, headers = read_head(sock)
      local body = assert(sock:receive(bytes))
      sock:close()
      assert.equal(200, status)
      assert.equal(tostring(bytes), headers["content-length"])
      assert.equal("text/plain", headers["content-type"])
      assert.is_true(body == ("abc"):rep(math.ceil(bytes / 3)):sub(1, bytes))
    end)

    it("sends a chunked stream", function()
      local bytes = 200000
      emu:script({ path = "/api/public/dock-status/ds-chunked", responses = {
        { stream = { bytes = bytes, chunked = true } } } })
      local sock = connect(emu)
      sock:send(status_request("ds-chunked"))
      local status, headers = read_head(sock)
      local body = read_chunked(sock)
      sock:close()
      assert.equal(200, status)
      assert.is_nil(headers["content-length"])
      assert.equal("chunked", headers["transfer-encoding"])
      assert.equal("application/json", headers["content-type"])
      assert.is_true(body == ("x"):rep(bytes))
    end)

    it("stops streaming when the client goes away", function()
      emu:script({ path = "/api/public/dock-status/ds-huge", responses = {
        { stream = { bytes = 10 * 1000 * 1000 * 1000 } } } })
      local sock = connect(emu)
      sock:send(status_request("ds-huge"))
      read_head(sock)
      assert(sock:receive(100000))
      sock:close()
      -- A prompt reply to the next request shows that the abandoned stream does not block the emulator.
      local started = socket.gettime()
      local status = api(emu, "GET", "/api/public/dock-status/ds-after-huge")
      local elapsed = socket.gettime() - started
      assert.equal(404, status)
      assert.is_true(elapsed < 5, ("next request answered after %.3f s"):format(elapsed))
    end)
  end)

  describe("read_rate", function()
    it("reads a request body at the given rate", function()
      local size = 400000
      local rate = 200000
      emu:script({ method = "POST", path_pattern = "^/api/public/workflows/", responses = {
        { read_rate = rate, passthrough = true } } })
      local body = '{"workflowDataFileId":"' .. ("x"):rep(size - 25) .. '"}'
      local started = socket.gettime()
      local status = api(emu, "POST", "/api/public/workflows/" .. DEFAULT_WORKFLOW .. "/import", body,
        { ["content-type"] = "application/json" })
      local elapsed = socket.gettime() - started
      -- Up to 64 KiB may arrive with the request head, before the limit applies.
      local lowest = (size - 65536) / rate
      print(("\n%d bytes read in %.2f s at a limit of %d bytes/s"):format(size, elapsed, rate))
      assert.equal(400, status)
      assert.equal(#body, last_request(emu).body_size)
      assert.is_true(elapsed >= lowest * 0.9, ("body read in %.3f s"):format(elapsed))
      assert.is_true(elapsed < size / rate + 2, ("body read in %.3f s"):format(elapsed))
    end)
  end)

  describe("validation", function()
    for _, case in ipairs({
      { name = "raw with status", entry = { raw = "x", status = 200 }, pattern = "raw cannot be combined" },
      { name = "raw of a number", entry = { raw = 5 }, pattern = "raw must be a string" },
      { name = "stream with body", entry = { stream = { bytes = 1 }, body = "x" }, pattern = "stream cannot" },
      { name = "stream without bytes", entry = { stream = { chunk = "x" } }, pattern = "stream.bytes" },
      { name = "empty stream chunk", entry = { stream = { bytes = 1, chunk = "" } }, pattern = "stream.chunk" },
      { name = "negative trickle", entry = { trickle = -1 }, pattern = "trickle must be" },
      { name = "stall of a string", entry = { stall = "1" }, pattern = "stall must be" },
      { name = "zero read_rate", entry = { read_rate = 0 }, pattern = "read_rate must be" },
      { name = "close of a string", entry = { close = "yes" }, pattern = "close must be true or false" },
    }) do
      it("rejects " .. case.name, function()
        local status, reply = script_error({ path = "/x", responses = { case.entry } })
        assert.equal(400, status)
        assert.truthy(reply.message:find(case.pattern, 1, true), reply.message)
      end)
    end
  end)

  describe("request log", function()
    it("records the arrival time", function()
      local before = socket.gettime()
      api(emu, "GET", "/api/public/dock-status/ds-timed")
      local after = socket.gettime()
      local record = last_request(emu)
      assert.is_number(record.received_at)
      assert.is_true(record.received_at >= before - 0.01, "arrival time is before the request was sent")
      assert.is_true(record.received_at <= after + 0.01, "arrival time is after the reply came")
    end)

    it("numbers connections uniquely after others close", function()
      local first = connect(emu)
      local second = connect(emu)
      first:send(status_request("ds-n1"))
      read_response(first)
      second:send(status_request("ds-n2"))
      read_response(second)
      first:close()
      second:close()
      -- Lets the emulator notice both closes before the next connection.
      socket.sleep(0.2)
      local third = connect(emu)
      third:send(status_request("ds-n3"))
      read_response(third)
      third:close()
      local log = emu:requests()
      assert.equal(3, #log)
      assert.are_not.equal(log[1].connection, log[2].connection)
      assert.are_not.equal(log[1].connection, log[3].connection)
      assert.are_not.equal(log[2].connection, log[3].connection)
    end)

    it("serves more connections in turn than max_connections", function()
      -- The default max_connections is 200, so this passes only when closed connections free their places.
      for i = 1, 210 do
        local sock = connect(emu)
        sock:settimeout(2)
        sock:send(status_request("ds-many-" .. i, { "Connection: close" }))
        local status, err = read_response(sock)
        sock:close()
        assert(status == 404, ("connection %d got no reply: %s"):format(i, tostring(err)))
      end
    end)
  end)

  it("exits by itself when idle after serving requests", function()
    local idle = emulator.start({ api_key = KEY, idle_exit = 0.5 })
    local host, port = parse_url(idle.url)
    assert.equal(404, (api(idle, "GET", "/api/public/dock-status/ds-idle")))
    socket.sleep(1.5)
    local sock = socket.tcp()
    sock:settimeout(1)
    local connected = sock:connect(host, port)
    sock:close()
    idle:stop()
    assert.is_nil(connected)
  end)
end)
