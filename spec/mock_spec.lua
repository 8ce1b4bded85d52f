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

local EXAMPLE_DIR = emulator.root .. "/examples/banking-assistant"
local DEFINITION_FILES = {
  workflowData = "app_definition.json",
  flowData = "flow_definition.json",
  envVariables = "env_variables.json",
}
local UUID_PATTERN = "%x%x%x%x%x%x%x%x%-%x%x%x%x%-4%x%x%x%-[89ab]%x%x%x%-%x%x%x%x%x%x%x%x%x%x%x%x"

local function read_file(path)
  local handle = assert(io.open(path, "rb"))
  local content = handle:read("*a")
  handle:close()
  return content
end

local function write_temp(content, suffix)
  local path = os.tmpname()
  if suffix then
    os.remove(path)
    path = path .. suffix
  end
  local handle = assert(io.open(path, "wb"))
  handle:write(content)
  handle:close()
  return path
end

-- Runs a shell command. Returns whether it exited 0 and its output with
-- standard error.
local function run(command)
  -- The exit status is printed by the shell, because io.popen's close gives
  -- no status on Lua 5.1 and LuaJIT.
  local handle = assert(io.popen("(" .. command .. ") 2>&1; echo \"exit:$?\"", "r"))
  local output = handle:read("*a")
  handle:close()
  local code = tonumber(output:match("exit:(%d+)%s*$"))
  return code == 0, (output:gsub("exit:%d+%s*$", ""))
end

local function shell_quote(text)
  return "'" .. text:gsub("'", "'\\''") .. "'"
end

-- Posts a multipart chunk to an upload session. number is sent as the
-- chunkNumber field unless it is nil. Returns the status and decoded reply.
local function upload_chunk(emu, session_id, number, content)
  local boundary = "chunk-boundary-5d1e"
  local parts = { { name = "file", filename = "blob", content_type = "application/octet-stream", content = content } }
  if number ~= nil then
    parts[2] = { name = "chunkNumber", content = tostring(number) }
  end
  local status, reply = api(emu, "POST", "/api/public/files/session/" .. session_id,
    multipart_body(boundary, parts), { ["content-type"] = "multipart/form-data; boundary=" .. boundary })
  return status, reply
end

local function session_fields(overrides)
  local fields = {
    fileContext = "bulkImport",
    totalChunks = 3,
    fileExtension = "json",
    fileName = "definition.json",
    fileSize = 9,
  }
  for name, value in pairs(overrides or {}) do
    fields[name] = value
  end
  return fields
end

local function start_session(emu, overrides)
  return api(emu, "POST", "/api/public/files/session/start", session_fields(overrides))
end

local function complete_session(emu, session_id)
  return api(emu, "POST", "/api/public/files/session/" .. session_id .. "/complete")
end

-- Uploads content through a session in chunks of chunk_size bytes. Returns
-- the session start reply and the status and reply of complete.
local function upload_in_chunks(emu, content, chunk_size, overrides)
  local fields = { totalChunks = math.max(1, math.ceil(#content / chunk_size)), fileSize = #content }
  for name, value in pairs(overrides or {}) do
    fields[name] = value
  end
  local status, started = start_session(emu, fields)
  assert.equal(200, status)
  for number = 0, fields.totalChunks - 1 do
    local chunk_status = upload_chunk(emu, started.sessionId, number,
      content:sub(number * chunk_size + 1, (number + 1) * chunk_size))
    assert.equal(200, chunk_status)
  end
  local complete_status, reply = complete_session(emu, started.sessionId)
  return started, complete_status, reply
end

-- Polls a dock status until it ends. Returns every record in order.
local function poll_records(emu, id)
  local records = {}
  for i = 1, 20 do
    local status, record = api(emu, "GET", "/api/public/dock-status/" .. id)
    assert.equal(200, status)
    records[i] = record
    if record.status ~= "IN_PROGRESS" then
      return records
    end
  end
  error("dock status " .. id .. " was still IN_PROGRESS after 20 polls")
end

-- Returns the download link of a finished export's dock status, from
-- response.downloadUrl or the top-level downloadURL.
local function download_link(record)
  return (record.response and record.response.downloadUrl) or record.downloadURL
end

-- Checks a zip archive with unzip and Python's zipfile, which both verify
-- the CRC of every entry, and that it holds exactly the expected entries
-- (a map of name to content).
local function assert_zip(bytes, expected)
  local path = write_temp(bytes, ".zip")
  local ok, output = run("unzip -t " .. shell_quote(path))
  assert.is_true(ok, output)
  assert.truthy(output:find("No errors detected", 1, true), output)
  ok, output = run("python3 -m zipfile -t " .. shell_quote(path))
  assert.is_true(ok, output)
  assert.is_nil(output:find("corrupted", 1, true), output)
  assert.truthy(output:find("Done testing", 1, true), output)

  local listing
  ok, listing = run("unzip -Z1 " .. shell_quote(path))
  assert.is_true(ok, listing)
  local names, expected_names = {}, {}
  for name in listing:gmatch("[^\n]+") do
    names[#names + 1] = name
  end
  for name in pairs(expected) do
    expected_names[#expected_names + 1] = name
  end
  table.sort(names)
  table.sort(expected_names)
  assert.same(expected_names, names)

  for name, content in pairs(expected) do
    local handle = assert(io.popen("unzip -p " .. shell_quote(path) .. " " .. shell_quote(name), "r"))
    local extracted = handle:read("*a")
    handle:close()
    assert.equal(#content, #extracted)
    assert.is_true(extracted == content, "the bytes of " .. name .. " differ from the stored content")
  end
  os.remove(path)
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
      .. arguments .. " 2>&1; echo \"exit:$?\""
    local handle = io.popen(command, "r")
    local output = handle:read("*a")
    handle:close()
    local code = tonumber(output:match("exit:(%d+)%s*$"))
    return code, (output:gsub("exit:%d+%s*$", ""))
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
    for _, flag in ipairs({ "--workflow ID[=DIR]", "--model ID", "--export-url-field", "--session-ttl",
      "--max-single-upload", "/api/public/files/session/start", "/_mock/exports/" }) do
      assert.truthy(output:find(flag, 1, true), flag)
    end
  end)

  it("exits 2 for an unreadable workflow directory", function()
    local code, output = run_cli("--api-key k --workflow a-1=/nonexistent-export-dir")
    assert.equal(2, code)
    assert.truthy(output:find("/nonexistent-export-dir", 1, true), output)
    assert.truthy(output:find("cannot read %a+_definition%.json"), output)
    assert.is_nil(output:find("traceback", 1, true), output)
  end)

  for _, case in ipairs({
    { arguments = "--workflow =dir", word = "--workflow" },
    { arguments = "--workflow a-1=", word = "directory" },
    { arguments = "--model ''", word = "--model" },
    { arguments = "--export-url-field url", word = "downloadURL" },
    { arguments = "--session-ttl 0", word = "--session-ttl" },
    { arguments = "--max-single-upload 1.5", word = "--max-single-upload" },
  }) do
    it("exits 2 for " .. case.arguments, function()
      local code, output = run_cli("--api-key k " .. case.arguments)
      assert.equal(2, code)
      assert.truthy(output:find(case.word, 1, true), output)
    end)
  end

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

describe("mock emulator workflow management", function()
  local DIR_WORKFLOW = "a-22222222-3333-4444-8555-666666666666"
  local emu

  setup(function()
    emu = emulator.start({ api_key = KEY, polls = 1, workflows = { DEFAULT_WORKFLOW },
      workflow_dirs = { [DIR_WORKFLOW] = EXAMPLE_DIR } })
  end)

  teardown(function()
    emu:stop()
  end)

  before_each(function()
    emu:reset()
  end)

  local function unique(prefix)
    return prefix .. "-" .. string.format("%d", math.floor(socket.gettime() * 1e6))
  end

  local function definitions(tag)
    return {
      workflowData = '{"app": "' .. tag .. '"}',
      flowData = '{"flow": "' .. tag .. '", "bytes": "\\u0000"}\n',
      envVariables = '[{"key": "K", "value": "' .. tag .. '"}]',
    }
  end

  -- Exports a workflow and polls the job to its end. Returns the job record
  -- of the export reply and the final dock status.
  local function export(path)
    local status, job = api(emu, "POST", path)
    assert.equal(200, status)
    local records = poll_records(emu, job.dockStatusId)
    return job, records[#records], records
  end

  describe("definitions", function()
    it("reads an export directory given with --workflow ID=DIR", function()
      local stored = emu:workflow(DIR_WORKFLOW)
      for field, file in pairs(DEFINITION_FILES) do
        assert.equal(read_file(EXAMPLE_DIR .. "/" .. file), stored[field])
      end
      assert.is_true(stored.imported)
      assert.equal(DIR_WORKFLOW, stored.name)
      assert.is_false(stored.deployed)
    end)

    it("keeps --workflow ID without a directory", function()
      local stored = emu:workflow(DEFAULT_WORKFLOW)
      assert.is_false(stored.imported)
      assert.is_nil(stored.flowData)
    end)

    it("seeds definitions through the control route", function()
      local id = unique("a-defs")
      local defs = definitions("seeded")
      local reply = emu:seed_workflow(id, "Seeded " .. id, defs)
      assert.is_true(reply.created)
      local stored = emu:workflow(id)
      assert.equal("Seeded " .. id, stored.name)
      assert.equal(defs.workflowData, stored.workflowData)
      assert.equal(defs.flowData, stored.flowData)
      assert.equal(defs.envVariables, stored.envVariables)
    end)

    for _, case in ipairs({
      { name = "a definition of a number", defs = { workflowData = "{}", flowData = 5 }, field = "flowData" },
      { name = "a missing workflowData", defs = { flowData = "{}" }, field = "workflowData" },
      { name = "an unknown field", defs = { workflowData = "{}", flowData = "{}", extra = "x" }, field = "extra" },
    }) do
      it("rejects " .. case.name .. " in seeded definitions", function()
        local status, text = emulator.http_request("POST", emu.url .. "/_mock/workflows",
          cjson.encode({ id = unique("a-bad"), definitions = case.defs }), { ["content-type"] = "application/json" })
        assert.equal(400, status)
        assert.truthy(decode(text).message:find(case.field, 1, true), text)
      end)
    end

    it("rejects a seeded name that another workflow has", function()
      local name = unique("taken name")
      emu:seed_workflow(unique("a-first"), name)
      local status, text = emulator.http_request("POST", emu.url .. "/_mock/workflows",
        cjson.encode({ id = unique("a-second"), name = name }), { ["content-type"] = "application/json" })
      assert.equal(409, status)
      assert.truthy(decode(text).message:find(name, 1, true))
    end)
  end)

  describe("export", function()
    it("exports the stored definitions as a zip", function()
      local id = unique("a-export")
      local name = "Banking assistant \195\169t\195\169 " .. id
      local defs = definitions("export")
      emu:seed_workflow(id, name, defs)

      local job, final, records = export("/api/public/workflows/" .. id .. "/export")
      assert.matches("^ds%-" .. UUID_PATTERN .. "$", job.dockStatusId)
      assert.matches("^workflow%-ej%-" .. UUID_PATTERN .. "$", job.exportJobId)
      assert.equal(id, job.workflowId)
      assert.equal("WORKFLOWS", job.jobType)
      assert.equal("EXPORT", job.action)
      assert.equal("IN_PROGRESS", job.status)
      assert.is_nil(download_link(job))
      assert.equal(2, #records)
      assert.equal("IN_PROGRESS", records[1].status)
      assert.is_nil(download_link(records[1]))
      assert.equal("SUCCESS", final.status)
      assert.equal(job.dockStatusId, final._id)
      assert.equal(job.exportJobId, final.exportJobId)
      assert.equal("EXPORT", final.action)
      assert.is_nil(final.downloadURL)

      local url = final.response.downloadUrl
      assert.truthy(url:find(emu.url .. "/_mock/exports/" .. job.exportJobId .. ".zip?", 1, true), url)
      assert.matches("expires=%d+", url)
      assert.matches("signature=%x+", url)
      -- The link is signed, so it needs no API key.
      local status, body, headers = emulator.http_request("GET", url)
      assert.equal(200, status)
      assert.equal("application/zip", headers["content-type"])
      assert.equal(tostring(#body), headers["content-length"])
      assert.truthy(headers["content-disposition"]:find("attachment", 1, true))
      assert.truthy(headers["content-disposition"]:find(id .. ".zip", 1, true))
      assert.truthy(headers["content-disposition"]:find("Banking%20assistant%20%C3%A9t%C3%A9", 1, true),
        headers["content-disposition"])
      assert_zip(body, {
        ["app_definition.json"] = defs.workflowData,
        ["flow_definition.json"] = defs.flowData,
        ["env_variables.json"] = defs.envVariables,
      })
    end)

    it("exports the files of an export directory unchanged", function()
      local _, final = export("/api/public/workflows/" .. DIR_WORKFLOW .. "/export")
      local status, body = emulator.http_request("GET", download_link(final))
      assert.equal(200, status)
      local expected = {}
      for _, file in pairs(DEFINITION_FILES) do
        expected[file] = read_file(EXAMPLE_DIR .. "/" .. file)
      end
      assert_zip(body, expected)
    end)

    it("accepts the singular path and a flowId query", function()
      local job, final = export("/api/public/workflow/" .. DIR_WORKFLOW .. "/export?flowId=f-1234")
      assert.equal(DIR_WORKFLOW, job.workflowId)
      assert.equal("EXPORT", job.action)
      assert.equal("SUCCESS", final.status)
      assert.equal("/api/public/workflow/" .. DIR_WORKFLOW .. "/export?flowId=f-1234", emu:requests()[1].path)
    end)

    it("rejects an empty flowId", function()
      local status, reply = api(emu, "POST", "/api/public/workflows/" .. DIR_WORKFLOW .. "/export?flowId=")
      assert.equal(400, status)
      assert.truthy(reply.message:find("flowId", 1, true))
    end)

    it("writes an empty list for missing env variables", function()
      local id = upload_id(emu, '{"only": "app and flow"}')
      local status, job = api(emu, "POST", "/api/public/workflows/import",
        { workflowName = unique("no env"), workflowDataFileId = id, flowDataFileId = id })
      assert.equal(200, status)
      assert.equal("SUCCESS", (poll_until_done(emu, job.dockStatusId)).status)
      local _, final = export("/api/public/workflows/" .. job.workflowId .. "/export")
      local _, body = emulator.http_request("GET", download_link(final))
      assert_zip(body, {
        ["app_definition.json"] = '{"only": "app and flow"}',
        ["flow_definition.json"] = '{"only": "app and flow"}',
        ["env_variables.json"] = "[]",
      })
    end)

    it("zips the version current at the export request", function()
      local id = unique("a-versions")
      local old = definitions("old")
      emu:seed_workflow(id, nil, old)
      local status, job = api(emu, "POST", "/api/public/workflows/" .. id .. "/export")
      assert.equal(200, status)
      emu:seed_workflow(id, nil, definitions("new"))
      local records = poll_records(emu, job.dockStatusId)
      local _, body = emulator.http_request("GET", download_link(records[#records]))
      assert_zip(body, {
        ["app_definition.json"] = old.workflowData,
        ["flow_definition.json"] = old.flowData,
        ["env_variables.json"] = old.envVariables,
      })
    end)

    it("names an unknown workflow in a 404", function()
      local status, reply = api(emu, "POST", "/api/public/workflows/a-nowhere/export")
      assert.equal(404, status)
      assert.equal("NOT_FOUND", reply.code)
      assert.truthy(reply.message:find("a-nowhere", 1, true))
    end)

    it("rejects a workflow without definitions", function()
      local id = unique("a-empty")
      emu:seed_workflow(id)
      local status, reply = api(emu, "POST", "/api/public/workflows/" .. id .. "/export")
      assert.equal(400, status)
      assert.equal("BAD_REQUEST", reply.code)
      assert.truthy(reply.message:find(id, 1, true))
    end)

    it("requires the key for the export call", function()
      local status = api(emu, "POST", "/api/public/workflows/" .. DIR_WORKFLOW .. "/export", nil,
        { ["x-api-key"] = false })
      assert.equal(401, status)
    end)

    it("rejects a download without a valid signature", function()
      local _, final = export("/api/public/workflows/" .. DIR_WORKFLOW .. "/export")
      local url = download_link(final)
      assert.equal(200, (emulator.http_request("GET", url)))
      assert.equal(403, (emulator.http_request("GET", url:match("^[^?]+"))))
      assert.equal(403, (emulator.http_request("GET", (url:gsub("signature=%x+", "signature=00")))))
      assert.equal(403, (emulator.http_request("GET", (url:gsub("expires=(%d+)", function(expires)
        return "expires=" .. (tonumber(expires) + 1)
      end)))))
      local status, text = emulator.http_request("GET", emu.url .. "/_mock/exports/workflow-ej-none.zip")
      assert.equal(404, status)
      assert.truthy(decode(text).message:find("workflow-ej-none", 1, true))
    end)

    it("logs downloads with the signature hidden", function()
      local _, final = export("/api/public/workflows/" .. DIR_WORKFLOW .. "/export")
      local url = download_link(final)
      local signature = url:match("signature=(%x+)")
      emu:reset()
      assert.equal(200, (emulator.http_request("GET", url)))
      local file = upload_id(emu, "{}")
      assert.equal(403, (emulator.http_request("GET", emu.url .. "/_mock/files/" .. file)))
      local log = emu:requests()
      assert.equal(3, #log)
      local download = log[1]
      assert.equal("GET", download.method)
      assert.equal(1, select(2, download.path:gsub("signature=%*%*%*", "")), download.path)
      assert.is_nil(download.path:find(signature, 1, true))
      assert.equal(200, download.response_status)
      assert.is_nil(download.headers["x-api-key"])
      assert.is_false(download.key_ok)
      assert.equal("/_mock/files/" .. file, log[3].path)
      assert.equal(403, log[3].response_status)
    end)

    it("applies scripts to download links", function()
      local _, final = export("/api/public/workflows/" .. DIR_WORKFLOW .. "/export")
      emu:script({ method = "GET", path_pattern = "^/_mock/exports/", responses = { { status = 503 } } })
      assert.equal(503, (emulator.http_request("GET", download_link(final))))
      local status, body = emulator.http_request("GET", download_link(final))
      assert.equal(200, status)
      assert.equal("PK\3\4", body:sub(1, 4))
    end)

    it("has no link before the job ends", function()
      local _, job = api(emu, "POST", "/api/public/workflows/" .. DIR_WORKFLOW .. "/export")
      local status, text = emulator.http_request("GET", emu.url .. "/_mock/exports/" .. job.exportJobId .. ".zip")
      assert.equal(404, status)
      assert.truthy(decode(text).message:find("not finished", 1, true))
    end)
  end)

  describe("deploy", function()
    local function deploy(id, body)
      return api(emu, "POST", "/api/public/workflows/" .. id .. "/deploy", body)
    end

    it("deploys synchronously", function()
      local id = unique("a-sync")
      emu:seed_workflow(id)
      assert.is_false(emu:workflow(id).deployed)
      local status, job = deploy(id, { isAsync = false })
      assert.equal(200, status)
      assert.matches("^ds%-", job.dockStatusId)
      assert.equal(id, job.workflowId)
      assert.equal("WORKFLOWS", job.jobType)
      assert.equal("DEPLOY", job.action)
      assert.equal("SUCCESS", job.status)
      assert.is_true(emu:workflow(id).deployed)
      local records = poll_records(emu, job.dockStatusId)
      assert.equal(1, #records)
      assert.equal("SUCCESS", records[1].status)
      assert.equal("DEPLOY", records[1].action)
    end)

    it("deploys asynchronously after the polls", function()
      local id = unique("a-async")
      emu:seed_workflow(id)
      local status, job = deploy(id, { isAsync = true })
      assert.equal(200, status)
      assert.equal("IN_PROGRESS", job.status)
      assert.equal("DEPLOY", job.action)
      local _, first = api(emu, "GET", "/api/public/dock-status/" .. job.dockStatusId)
      assert.equal("IN_PROGRESS", first.status)
      assert.is_false(emu:workflow(id).deployed)
      local _, second = api(emu, "GET", "/api/public/dock-status/" .. job.dockStatusId)
      assert.equal("SUCCESS", second.status)
      assert.is_true(emu:workflow(id).deployed)
    end)

    for _, case in ipairs({
      { name = "an empty object", body = {} },
      { name = "a string isAsync", body = { isAsync = "true" } },
      { name = "a number isAsync", body = { isAsync = 1 } },
      { name = "a null isAsync", body = '{"isAsync": null}' },
    }) do
      it("rejects " .. case.name, function()
        local body, headers = case.body, nil
        if type(body) == "string" then
          headers = { ["content-type"] = "application/json" }
        end
        local status, reply = api(emu, "POST", "/api/public/workflows/" .. DEFAULT_WORKFLOW .. "/deploy", body,
          headers)
        assert.equal(400, status)
        assert.truthy(reply.message:find("isAsync", 1, true), reply.message)
      end)
    end

    it("rejects a deploy without a body", function()
      local status, reply = api(emu, "POST", "/api/public/workflows/" .. DEFAULT_WORKFLOW .. "/deploy")
      assert.equal(400, status)
      assert.equal("BAD_REQUEST", reply.code)
    end)

    it("undeploys on both paths", function()
      for _, collection in ipairs({ "workflows", "workflow" }) do
        local id = unique("a-undeploy")
        emu:seed_workflow(id)
        deploy(id, { isAsync = false })
        assert.is_true(emu:workflow(id).deployed)
        local status, job = api(emu, "POST", "/api/public/" .. collection .. "/" .. id .. "/undeploy")
        assert.equal(200, status)
        assert.equal("UNDEPLOY", job.action)
        assert.equal("IN_PROGRESS", job.status)
        assert.equal(id, job.workflowId)
        local records = poll_records(emu, job.dockStatusId)
        assert.equal("SUCCESS", records[#records].status)
        assert.equal("UNDEPLOY", records[#records].action)
        assert.is_false(emu:workflow(id).deployed)
      end
    end)

    it("names an unknown workflow in a 404", function()
      local status, reply = deploy("a-gone", { isAsync = true })
      assert.equal(404, status)
      assert.truthy(reply.message:find("a-gone", 1, true))
      status, reply = api(emu, "POST", "/api/public/workflows/a-gone/undeploy")
      assert.equal(404, status)
      assert.truthy(reply.message:find("a-gone", 1, true))
    end)
  end)
end)

describe("mock emulator upload sessions", function()
  local emu

  setup(function()
    emu = emulator.start({ api_key = KEY, polls = 1 })
  end)

  teardown(function()
    emu:stop()
  end)

  before_each(function()
    emu:reset()
  end)

  it("starts a session", function()
    local before = os.time()
    local status, reply = start_session(emu)
    assert.equal(200, status)
    assert.matches("^" .. UUID_PATTERN .. "$", reply.sessionId)
    assert.is_nil(reply.modelId)
    local year, month, day, hour, minute, second = reply.expirationDate:match(
      "^(%d%d%d%d)%-(%d%d)%-(%d%d)T(%d%d):(%d%d):(%d%d)%.%d%d%dZ$")
    assert.truthy(year, reply.expirationDate)
    -- os.time reads the table as local time, so the UTC offset is taken out.
    local as_local = os.time({ year = year, month = month, day = day, hour = hour, min = minute, sec = second })
    local offset = os.time(os.date("*t", before)) - os.time(os.date("!*t", before))
    local expires = as_local + offset
    assert.is_true(math.abs(expires - (before + 3600)) <= 2, reply.expirationDate)
  end)

  for _, case in ipairs({
    { field = "fileContext", value = cjson.null },
    { field = "fileContext", value = "" },
    { field = "totalChunks", value = 0 },
    { field = "totalChunks", value = 1.5 },
    { field = "totalChunks", value = "2" },
    { field = "fileExtension", value = ".json" },
    { field = "fileExtension", value = cjson.null },
    { field = "fileName", value = 7 },
    { field = "fileSize", value = 0 },
    { field = "fileSize", value = "9" },
    { field = "fileSize", value = cjson.null },
  }) do
    it("rejects " .. case.field .. " " .. cjson.encode(case.value), function()
      local status, reply = start_session(emu, { [case.field] = case.value })
      assert.equal(400, status)
      assert.equal("BAD_REQUEST", reply.code)
      assert.truthy(reply.message:find(case.field, 1, true), reply.message)
    end)
  end

  it("joins chunks sent out of order", function()
    local chunks = { [0] = '{"a": ', [1] = '"bc", ', [2] = '"d": 1}' }
    local content = chunks[0] .. chunks[1] .. chunks[2]
    local _, started = start_session(emu, { fileSize = #content, fileName = "joined.json" })
    for _, number in ipairs({ 2, 0, 1 }) do
      local status, reply = upload_chunk(emu, started.sessionId, number, chunks[number])
      assert.equal(200, status)
      assert.equal(tostring(number), reply.chunkNumber)
      assert.equal("string", type(reply.chunkNumber))
      assert.equal(started.sessionId, reply.sessionId)
    end
    local status, reply = complete_session(emu, started.sessionId)
    assert.equal(200, status)
    assert.matches("^%x+$", reply.fileId)
    assert.equal(24, #reply.fileId)
    local get_status, stored, headers = emulator.http_request("GET", reply.url)
    assert.equal(200, get_status)
    assert.equal(content, stored)
    assert.truthy(headers["content-disposition"]:find("joined.json", 1, true))

    -- The joined file works in an import like a single upload.
    local import_status, job = api(emu, "POST", "/api/public/workflows/" .. DEFAULT_WORKFLOW .. "/import",
      import_body(reply.fileId, reply.fileId, reply.fileId))
    assert.equal(200, import_status)
    assert.equal("SUCCESS", (poll_until_done(emu, job.dockStatusId)).status)
    assert.equal(content, emu:workflow(DEFAULT_WORKFLOW).flowData)
  end)

  it("replaces a repeated chunk", function()
    local _, started = start_session(emu, { totalChunks = 2, fileSize = 6 })
    assert.equal(200, (upload_chunk(emu, started.sessionId, 0, "bad")))
    assert.equal(200, (upload_chunk(emu, started.sessionId, 1, "end")))
    assert.equal(200, (upload_chunk(emu, started.sessionId, 0, "new")))
    local _, reply = complete_session(emu, started.sessionId)
    local _, stored = emulator.http_request("GET", reply.url)
    assert.equal("newend", stored)
  end)

  for _, number in ipairs({ "3", "-1", "1.0", "x", "", " " }) do
    it("rejects chunkNumber " .. string.format("%q", number), function()
      local _, started = start_session(emu)
      local status, reply = upload_chunk(emu, started.sessionId, number, "abc")
      assert.equal(400, status)
      assert.truthy(reply.message:find("chunkNumber", 1, true), reply.message)
      assert.truthy(reply.message:find("0 to 2", 1, true), reply.message)
    end)
  end

  it("accepts chunkNumber with spaces around it", function()
    local _, started = start_session(emu)
    local status, reply = upload_chunk(emu, started.sessionId, " 2 ", "abc")
    assert.equal(200, status)
    assert.equal("2", reply.chunkNumber)
  end)

  it("rejects a chunk without chunkNumber or file", function()
    local _, started = start_session(emu)
    local status, reply = upload_chunk(emu, started.sessionId, nil, "abc")
    assert.equal(400, status)
    assert.truthy(reply.message:find("chunkNumber", 1, true))

    local boundary = "only-number"
    status, reply = api(emu, "POST", "/api/public/files/session/" .. started.sessionId,
      multipart_body(boundary, { { name = "chunkNumber", content = "0" } }),
      { ["content-type"] = "multipart/form-data; boundary=" .. boundary })
    assert.equal(400, status)
    assert.truthy(reply.message:find('"file"', 1, true))

    status, reply = api(emu, "POST", "/api/public/files/session/" .. started.sessionId, { chunkNumber = 0 })
    assert.equal(400, status)
    assert.truthy(reply.message:find("multipart", 1, true))
  end)

  it("names the missing chunks on complete", function()
    local _, started = start_session(emu, { totalChunks = 5, fileSize = 5 })
    upload_chunk(emu, started.sessionId, 0, "a")
    upload_chunk(emu, started.sessionId, 2, "c")
    local status, reply = complete_session(emu, started.sessionId)
    assert.equal(400, status)
    assert.truthy(reply.message:find("1, 3 and 4", 1, true), reply.message)
    upload_chunk(emu, started.sessionId, 1, "b")
    upload_chunk(emu, started.sessionId, 3, "d")
    status, reply = complete_session(emu, started.sessionId)
    assert.equal(400, status)
    assert.truthy(reply.message:find("chunk 4 ", 1, true), reply.message)
  end)

  it("counts missing chunks past twenty", function()
    local _, started = start_session(emu, { totalChunks = 30, fileSize = 30 })
    local status, reply = complete_session(emu, started.sessionId)
    assert.equal(400, status)
    assert.truthy(reply.message:find("0, 1, 2", 1, true), reply.message)
    assert.truthy(reply.message:find("and 10 more", 1, true), reply.message)
  end)

  it("rejects a joined size other than fileSize", function()
    local _, started = start_session(emu, { totalChunks = 2, fileSize = 10 })
    upload_chunk(emu, started.sessionId, 0, "12345")
    upload_chunk(emu, started.sessionId, 1, "6789")
    local status, reply = complete_session(emu, started.sessionId)
    assert.equal(400, status)
    assert.truthy(reply.message:find("9 bytes", 1, true), reply.message)
    assert.truthy(reply.message:find("fileSize is 10", 1, true), reply.message)
    -- The session stays open, so the client can send the chunk again.
    upload_chunk(emu, started.sessionId, 1, "67890")
    status = complete_session(emu, started.sessionId)
    assert.equal(200, status)
  end)

  it("returns 404 for an unknown session", function()
    local unknown = "00000000-0000-4000-8000-000000000000"
    local status, reply = upload_chunk(emu, unknown, 0, "a")
    assert.equal(404, status)
    assert.truthy(reply.message:find(unknown, 1, true))
    status, reply = complete_session(emu, unknown)
    assert.equal(404, status)
    assert.truthy(reply.message:find(unknown, 1, true))
  end)

  it("returns 404 after completion", function()
    local _, started = start_session(emu, { totalChunks = 1, fileSize = 3 })
    upload_chunk(emu, started.sessionId, 0, "abc")
    assert.equal(200, (complete_session(emu, started.sessionId)))
    local status, reply = complete_session(emu, started.sessionId)
    assert.equal(404, status)
    assert.truthy(reply.message:find("completed", 1, true))
    status = upload_chunk(emu, started.sessionId, 0, "abc")
    assert.equal(404, status)
  end)

  it("logs chunk uploads without their bodies", function()
    local _, started = start_session(emu, { totalChunks = 2, fileSize = 4 })
    emu:reset()
    upload_chunk(emu, started.sessionId, 1, "wxyz")
    local record = last_request(emu)
    assert.equal("1", record.chunkNumber)
    assert.equal(2, #record.parts)
    assert.equal("file", record.parts[1].name)
    assert.equal(4, record.parts[1].size)
    assert.is_nil(record.parts[1].value)
    assert.equal("1", record.parts[2].value)
    assert.is_nil(record.body)
    assert.equal(200, record.response_status)
  end)

  it("leaves a large JSON body out of the log", function()
    local body = cjson.encode({ fileContext = ("x"):rep(70000) })
    api(emu, "POST", "/api/public/files/session/start", body, { ["content-type"] = "application/json" })
    local record = last_request(emu)
    assert.equal(#body, record.body_size)
    assert.is_nil(record.body)
    api(emu, "POST", "/api/public/files/session/start", session_fields())
    assert.equal("bulkImport", last_request(emu).body.fileContext)
  end)

  it("expires a session after session_ttl", function()
    -- One second leaves room for the first chunk when the specs run under valgrind.
    local ttl = 1
    local short = emulator.start({ api_key = KEY, session_ttl = ttl })
    finally(function()
      short:stop()
    end)
    local started_at = socket.gettime()
    local _, started = start_session(short, { totalChunks = 1, fileSize = 1 })
    local status = upload_chunk(short, started.sessionId, 0, "a")
    local elapsed = socket.gettime() - started_at
    assert.is_true(elapsed < ttl, ("the first chunk took %.3f s"):format(elapsed))
    assert.equal(200, status)
    socket.sleep(started_at + ttl + 0.1 - socket.gettime())
    local reply
    status, reply = upload_chunk(short, started.sessionId, 0, "a")
    assert.equal(404, status)
    assert.truthy(reply.message:find("expired", 1, true), reply.message)
    status, reply = complete_session(short, started.sessionId)
    assert.equal(404, status)
    assert.truthy(reply.message:find("expired", 1, true), reply.message)
  end)
end)

describe("mock emulator single upload limit", function()
  local MB = 1000 * 1000
  local MIB = 1024 * 1024

  -- Sends a multipart upload whose file holds `size` bytes over a raw
  -- socket, 1 MiB at a time, so that the body is never built in memory.
  -- Returns the status and the decoded reply.
  local function upload_size(emu, size)
    local boundary = "limit-boundary-93b1"
    local head = "--" .. boundary .. "\r\n"
      .. 'Content-Disposition: form-data; name="fileContext"\r\n\r\nbulkImport\r\n'
      .. "--" .. boundary .. "\r\n"
      .. 'Content-Disposition: form-data; name="file"; filename="big.bin"\r\n'
      .. "Content-Type: application/octet-stream\r\n\r\n"
    local tail = "\r\n--" .. boundary .. "--\r\n"
    local sock = connect(emu)
    sock:settimeout(30)
    assert(sock:send(raw_request("POST", "/api/public/files", {
      "x-api-key: " .. KEY,
      "Content-Type: multipart/form-data; boundary=" .. boundary,
      "Content-Length: " .. (#head + size + #tail),
    }) .. head))
    local block = ("k"):rep(MIB)
    local left = size
    while left > 0 do
      local piece = left >= MIB and block or block:sub(1, left)
      assert(sock:send(piece))
      left = left - #piece
    end
    assert(sock:send(tail))
    local status, _, body = read_response(sock)
    sock:close()
    return status, decode(body)
  end

  it("rejects a file of 25 MiB with 413", function()
    local emu = emulator.start({ api_key = KEY })
    finally(function()
      emu:stop()
    end)
    local started = socket.gettime()
    local status, reply = upload_size(emu, 25 * MIB)
    print(("\n25 MiB upload rejected in %.2f s"):format(socket.gettime() - started))
    assert.equal(413, status)
    assert.equal("PAYLOAD_TOO_LARGE", reply.code)
    assert.truthy(reply.message:find(tostring(25 * MIB), 1, true), reply.message)
    assert.truthy(reply.message:find("/api/public/files/session/start", 1, true), reply.message)
    assert.equal(413, last_request(emu).response_status)
  end)

  it("accepts a file just under 25 MB", function()
    local emu = emulator.start({ api_key = KEY })
    finally(function()
      emu:stop()
    end)
    local status, reply = upload_size(emu, 25 * MB - 1)
    assert.equal(200, status)
    assert.is_string(reply.fileId)
  end)

  it("rejects a body over max_body before reading it", function()
    local emu = emulator.start({ api_key = KEY })
    finally(function()
      emu:stop()
    end)
    local sock = connect(emu)
    sock:send(raw_request("POST", "/api/public/files", {
      "x-api-key: " .. KEY,
      "Content-Type: multipart/form-data; boundary=b",
      "Content-Length: " .. (65 * MIB),
    }))
    local status, headers, body = read_response(sock)
    sock:close()
    assert.equal(413, status)
    assert.equal("close", headers.connection)
    assert.truthy(decode(body).message:find("/api/public/files/session/start", 1, true), body)
  end)

  it("applies max_single_upload at its exact size", function()
    local emu = emulator.start({ api_key = KEY, max_single_upload = 1000 })
    finally(function()
      emu:stop()
    end)
    assert.equal(200, (upload(emu, ("a"):rep(999))))
    local status, reply = upload(emu, ("a"):rep(1000))
    assert.equal(413, status)
    assert.truthy(reply.message:find("under 1000 bytes", 1, true), reply.message)
  end)
end)

describe("mock emulator models", function()
  local SEEDED_MODEL = "cm-00000000-0000-4000-8000-0000000000aa"
  local emu

  setup(function()
    emu = emulator.start({ api_key = KEY, polls = 1, models = { SEEDED_MODEL } })
  end)

  teardown(function()
    emu:stop()
  end)

  before_each(function()
    emu:reset()
  end)

  local function model_call(id, action, body, query)
    return api(emu, "POST", "/api/public/models/" .. id .. "/" .. action .. (query or ""), body)
  end

  -- Imports content as a model through an upload session. Returns the
  -- start reply and the job record of complete.
  local function import_model(server, content, chunk_size, file_name)
    local started, status, job = upload_in_chunks(server, content, chunk_size,
      { fileContext = "model", fileName = file_name or "weights.bin", fileExtension = "bin" })
    assert.equal(200, status)
    return started, job
  end

  it("imports a model through a session with rising progress", function()
    local polls = 3
    local server = emulator.start({ api_key = KEY, polls = polls })
    finally(function()
      server:stop()
    end)
    local content = ("model bytes \0\1\2\255 "):rep(100)
    local started, job = import_model(server, content, 700)
    assert.matches("^cm%-" .. UUID_PATTERN .. "$", started.modelId)
    assert.matches("^ds%-", job.dockStatusId)
    assert.equal(started.modelId, job.modelId)
    assert.equal("MODELS", job.jobType)
    assert.equal("IMPORT", job.action)
    assert.equal("IN_PROGRESS", job.status)
    assert.equal(0, job.percentageComplete)
    assert.is_nil(job.workflowId)
    assert.is_false(server:model(started.modelId).imported)
    local busy = api(server, "POST", "/api/public/models/" .. started.modelId .. "/export")
    assert.equal(409, busy)

    local records = poll_records(server, job.dockStatusId)
    local percentages = { job.percentageComplete }
    for i, record in ipairs(records) do
      percentages[i + 1] = record.percentageComplete
      assert.equal(started.modelId, record.modelId)
      assert.equal(job.dockStatusId, record._id)
    end
    assert.equal(polls + 1, #records)
    assert.equal("SUCCESS", records[#records].status)
    assert.equal(0, percentages[1])
    assert.equal(100, percentages[#percentages])
    for i = 2, #percentages do
      assert.is_true(percentages[i] > percentages[i - 1], "percentages " .. table.concat(percentages, ", "))
    end
    local model = server:model(started.modelId)
    assert.is_true(model.imported)
    assert.equal(#content, model.size)
    assert.equal("weights.bin", model.fileName)
  end)

  it("exports a seeded model as a zip", function()
    local status, job = model_call(SEEDED_MODEL, "export")
    assert.equal(200, status)
    assert.equal(SEEDED_MODEL, job.modelId)
    assert.equal("MODELS", job.jobType)
    assert.equal("EXPORT", job.action)
    assert.equal(0, job.percentageComplete)
    assert.matches("^model%-ej%-" .. UUID_PATTERN .. "$", job.exportJobId)
    local records = poll_records(emu, job.dockStatusId)
    local final = records[#records]
    assert.equal("SUCCESS", final.status)
    assert.equal(100, final.percentageComplete)
    local get_status, body, headers = emulator.http_request("GET", final.response.downloadUrl)
    assert.equal(200, get_status)
    assert.equal("application/zip", headers["content-type"])
    assert.truthy(headers["content-disposition"]:find(SEEDED_MODEL .. ".zip", 1, true))
    local model = emu:model(SEEDED_MODEL)
    assert.equal(SEEDED_MODEL .. ".json", model.fileName)
    local seeded = string.format('{"modelId":"%s","seeded":true}\n', SEEDED_MODEL)
    assert.equal(#seeded, model.size)
    assert_zip(body, { [model.fileName] = seeded })
  end)

  it("exports a large imported model with a correct CRC", function()
    -- Three chunks, so the CRC of the file is combined from those of its chunks.
    local block = {}
    for i = 0, 255 do
      block[#block + 1] = string.char((i * 7) % 256)
    end
    local content = table.concat(block):rep(12 * 4096)
    local started, job = import_model(emu, content, 4 * 1024 * 1024 + 17, "dir/../large.bin")
    poll_records(emu, job.dockStatusId)
    local _, export_job = model_call(started.modelId, "export")
    local records = poll_records(emu, export_job.dockStatusId)
    local status, body = emulator.http_request("GET", download_link(records[#records]))
    assert.equal(200, status)
    assert_zip(body, { ["large.bin"] = content })
  end)

  it("exports a model seeded through the control route", function()
    local id = "cm-control-" .. string.format("%d", math.floor(socket.gettime() * 1e6))
    local reply = emu:seed_model(id, "tiny.onnx", "\0onnx\255")
    assert.is_true(reply.created)
    local _, job = model_call(id, "export")
    local records = poll_records(emu, job.dockStatusId)
    local _, body = emulator.http_request("GET", download_link(records[#records]))
    assert_zip(body, { ["tiny.onnx"] = "\0onnx\255" })
  end)

  it("deploys and undeploys a model", function()
    local body = { name = "demo", deviceType = "gpu-a10", hyperParameters = { batch = 4 },
      scalingParameters = { replicas = 1 } }
    local status, job = model_call(SEEDED_MODEL, "deploy", body, "?modelType=openSource")
    assert.equal(200, status)
    assert.equal("DEPLOY", job.action)
    assert.equal("MODELS", job.jobType)
    assert.equal(SEEDED_MODEL, job.modelId)
    assert.equal("IN_PROGRESS", job.status)
    assert.is_false(emu:model(SEEDED_MODEL).deployed)
    local records = poll_records(emu, job.dockStatusId)
    assert.equal("SUCCESS", records[#records].status)
    local model = emu:model(SEEDED_MODEL)
    assert.is_true(model.deployed)
    assert.equal("demo", model.deployment.name)
    assert.equal("openSource", model.deployment.modelType)
    assert.equal("gpu-a10", model.deployment.deviceType)
    assert.equal(4, model.deployment.hyperParameters.batch)

    status, job = model_call(SEEDED_MODEL, "undeploy")
    assert.equal(200, status)
    assert.equal("UNDEPLOY", job.action)
    records = poll_records(emu, job.dockStatusId)
    assert.equal("SUCCESS", records[#records].status)
    assert.is_false(emu:model(SEEDED_MODEL).deployed)
  end)

  it("deploys a fineTune model with only a name", function()
    local status, job = model_call(SEEDED_MODEL, "deploy", { name = "tuned" }, "?modelType=fineTune")
    assert.equal(200, status)
    assert.equal("DEPLOY", job.action)
  end)

  for _, case in ipairs({
    { name = "a missing modelType", query = "", body = { name = "x" }, word = "modelType" },
    { name = "an unknown modelType", query = "?modelType=closed", body = { name = "x" }, word = "closed" },
    { name = "a missing name", query = "?modelType=openSource", body = { deviceType = "cpu" }, word = "name" },
    { name = "a name of a number", query = "?modelType=openSource", body = { name = 5 }, word = "name" },
    { name = "hyperParameters of a string", query = "?modelType=fineTune",
      body = { name = "x", hyperParameters = "fast" }, word = "hyperParameters" },
    { name = "scalingParameters of a list", query = "?modelType=fineTune",
      body = { name = "x", scalingParameters = { 1, 2 } }, word = "scalingParameters" },
    { name = "deviceType of a number", query = "?modelType=fineTune",
      body = { name = "x", deviceType = 3 }, word = "deviceType" },
  }) do
    it("rejects a deploy with " .. case.name, function()
      local status, reply = model_call(SEEDED_MODEL, "deploy", case.body, case.query)
      assert.equal(400, status)
      assert.equal("BAD_REQUEST", reply.code)
      assert.truthy(reply.message:find(case.word, 1, true), reply.message)
    end)
  end

  it("names an unknown model in a 404", function()
    for _, action in ipairs({ "export", "deploy", "undeploy" }) do
      local status, reply = model_call("cm-missing", action, { name = "x" }, "?modelType=openSource")
      assert.equal(404, status)
      assert.truthy(reply.message:find("cm-missing", 1, true), action)
    end
  end)
end)

describe("mock emulator drift variants", function()
  it("puts the export link in a top-level downloadURL", function()
    local emu = emulator.start({ api_key = KEY, polls = 0, export_url_field = "downloadURL", id_field = "_id",
      workflow_dirs = { [DEFAULT_WORKFLOW] = EXAMPLE_DIR }, models = { "cm-drift" } })
    finally(function()
      emu:stop()
    end)
    for _, path in ipairs({ "/api/public/workflows/" .. DEFAULT_WORKFLOW .. "/export",
      "/api/public/models/cm-drift/export" }) do
      local status, job = api(emu, "POST", path)
      assert.equal(200, status)
      assert.matches("^ds%-", job._id)
      assert.is_nil(job.dockStatusId)
      local records = poll_records(emu, job._id)
      assert.equal(1, #records)
      local final = records[1]
      assert.equal("SUCCESS", final.status)
      assert.is_nil(final.response)
      assert.is_string(final.downloadURL)
      local get_status, body = emulator.http_request("GET", final.downloadURL)
      assert.equal(200, get_status)
      assert.equal("PK\3\4", body:sub(1, 4))
    end
  end)

  it("names the job id dock-statusId in deploy replies", function()
    local emu = emulator.start({ api_key = KEY, id_field = "dock-statusId" })
    finally(function()
      emu:stop()
    end)
    local status, job = api(emu, "POST", "/api/public/workflows/" .. DEFAULT_WORKFLOW .. "/deploy", { isAsync = false })
    assert.equal(200, status)
    assert.matches("^ds%-", job["dock-statusId"])
    assert.is_nil(job.dockStatusId)
  end)
end)

describe("mock emulator zip writer", function()
  -- Runs the CRC-32 and zip code on every interpreter the emulator
  -- supports that is installed, because each takes its own bitwise path.
  local probe = [[
    package.path = arg[1] .. "/lua/?.lua;" .. package.path
    local zip = require("kore_workflow.mock_zip")
    local a, b = ("abc"):rep(1000) .. "x", ("\255\0q"):rep(777)
    local pieces = zip.archive({ { name = "a.txt", data = a }, { name = "dir/b.bin", data = b } }, 1700000000)
    io.write(string.format("%08x %08x %08x %08x %08x ", zip.crc32("123456789"), zip.crc32(""),
      zip.crc32("456789", zip.crc32("123")), zip.crc32(a .. b), zip.crc32_combine(zip.crc32(a), zip.crc32(b), #b)))
    io.write(table.concat(pieces))
  ]]

  for _, lua in ipairs({ "lua5.1", "lua5.2", "lua5.3", "lua5.4", "luajit" }) do
    it("computes CRC-32 and zips on " .. lua, function()
      local found = run("command -v " .. lua)
      if not found and lua ~= "lua5.4" then
        pending(lua .. " is not installed")
        return
      end
      local script = write_temp(probe, ".lua")
      local handle = assert(io.popen(lua .. " " .. shell_quote(script) .. " " .. shell_quote(emulator.root), "r"))
      local output = handle:read("*a")
      handle:close()
      os.remove(script)
      local crcs, archive = output:match("^(%x+ %x+ %x+ %x+ %x+ )(.*)$")
      assert.truthy(crcs, (output:sub(1, 200):gsub("[%c\128-\255]", "?")))
      -- Reference values from zlib's crc32, computed with Python's zlib module.
      local expected = {}
      local _, python = run("python3 -c \"import zlib; a = b'abc' * 1000 + b'x'; b = b'\\xff\\x00q' * 777; "
        .. "print('%08x' % zlib.crc32(a + b))\"")
      expected[1], expected[2], expected[3] = "cbf43926", "00000000", "cbf43926"
      expected[4] = python:match("%x+")
      expected[5] = expected[4]
      local index = 1
      for crc in crcs:gmatch("%x+") do
        assert.equal(expected[index], crc, "value " .. index)
        index = index + 1
      end
      local a, b = ("abc"):rep(1000) .. "x", ("\255\0q"):rep(777)
      assert_zip(archive, { ["a.txt"] = a, ["dir/b.bin"] = b })
    end)
  end
end)
