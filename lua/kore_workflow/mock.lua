-- Local HTTP emulator of the Kore.ai "AI for Process" workflow management API.
--
-- Pure Lua on LuaSocket and lua-cjson. One thread serves every connection,
-- and each connection runs in its own coroutine. A scheduler built on
-- socket.select resumes a coroutine when its socket is ready or its timer
-- expires, so a delayed reply on one connection never blocks the others.
--
-- Runs on Lua 5.1, LuaJIT and Lua 5.2 to 5.4. Request handlers never yield,
-- because Lua 5.1 cannot yield across pcall; only the connection loop around
-- them waits for sockets and timers.
--
-- API routes, which need the key in the x-api-key header (401 otherwise).
-- Errors are JSON {"message", "code"}, and the message names the value at
-- fault. A job record is {<id_field>: "ds-<uuid>", "jobType", "action",
-- "status"} plus "workflowId" (jobType WORKFLOWS) or "modelId" and
-- "percentageComplete" (jobType MODELS):
--   POST /api/public/files: multipart `file` (with a filename) and
--     `fileContext` -> {url, fileId}. A file of max_single_upload bytes
--     (25 MB) or more gets 413 and must go through an upload session;
--   POST /api/public/files/session/start: JSON {fileContext, totalChunks
--     (integer >= 1), fileExtension (without a leading dot), fileName,
--     fileSize (bytes, >= 1)} -> {sessionId: "<uuid>", expirationDate:
--     ISO 8601 UTC}, plus modelId "cm-<uuid>" when fileContext is "model".
--     A session expires session_ttl seconds after it starts;
--   POST /api/public/files/session/ID: multipart `file` and `chunkNumber`
--     (0 to totalChunks - 1) -> {chunkNumber: "<n>" (a string), sessionId}.
--     A repeated chunk replaces the earlier one. An unknown, expired or
--     completed session gets 404, a chunkNumber that is not a whole number in
--     range gets 400;
--   POST /api/public/files/session/ID/complete, no body -> {url, fileId},
--     the file then usable in imports; for fileContext "model" a job record
--     (MODELS, IMPORT) instead, whose percentageComplete rises from 0 to 100
--     over the polls. 400 names the missing chunk numbers, or the joined size
--     when it differs from fileSize;
--   POST /api/public/workflows/import: JSON {workflowName (unique, 409
--     otherwise), workflowDataFileId, flowDataFileId, envVariablesFileId
--     (optional)} -> job record (IMPORT) of a new workflow;
--   POST /api/public/workflows/ID/import: JSON of the three file ids -> job
--     record (IMPORT). The job FAILS when a file is not valid JSON;
--   POST /api/public/workflows/ID/export, also /api/public/workflow/ID/export,
--     with an optional ?flowId= -> job record (EXPORT) with "exportJobId":
--     "workflow-ej-<uuid>". 400 when the workflow has no definitions yet or
--     flowId is empty. On SUCCESS the dock status carries the signed download
--     link of a zip named after the workflow that contains
--     flow_definition.json, app_definition.json and env_variables.json ("[]"
--     when the workflow has none). The link is {"response": {"downloadUrl":
--     URL}} by default, or a top-level "downloadURL" when export_url_field
--     is "downloadURL". The zip contains the version that was current when
--     the export was requested;
--   POST /api/public/workflows/ID/deploy: JSON {isAsync: boolean, required}
--     -> job record (DEPLOY), already SUCCESS when isAsync is false;
--   POST /api/public/workflows/ID/undeploy, also /api/public/workflow/ID/
--     undeploy, no body -> job record (UNDEPLOY);
--   POST /api/public/models/ID/export -> job record (MODELS, EXPORT) with
--     "exportJobId": "model-ej-<uuid>". On SUCCESS the dock status carries
--     the download link of a zip that contains the model file, placed as for
--     workflow exports;
--   POST /api/public/models/ID/deploy?modelType=openSource|fineTune: JSON
--     {name (required string), deviceType (string), hyperParameters,
--     scalingParameters, optimizationInfo (objects)} -> job record (DEPLOY);
--   POST /api/public/models/ID/undeploy -> job record (UNDEPLOY).
--     Model routes answer 404 for an unknown model and 409 while the model's
--     import job has not ended;
--   GET /api/public/dock-status/ID -> the job record with the id as "_id"
--     and "message" when it FAILED. A job stays IN_PROGRESS for `polls`
--     polls, and the next poll ends it, except a deploy with isAsync false.
--
-- Control routes, which need no API key:
--   GET /_mock/requests        the request log, oldest first. Each record has
--     method, path, headers (secret values replaced by "***"), key_ok,
--     body_size, body (decoded JSON, for bodies up to 64 KiB) or parts
--     (multipart summaries with each part's size, and the value of short
--     fields without a filename), chunkNumber (the value of that multipart
--     field, for chunk uploads), response_status, connection (the number of
--     the TCP connection, counted from 1 in accept order), received_at (Unix
--     time in seconds, with a fraction, when the request head was read) and
--     closed ("drop" or "reset") for a scripted close. Bodies themselves are
--     never kept;
--     Downloads from the signed links below (GET /_mock/files/ and
--     GET /_mock/exports/) are logged too, with the signature value replaced
--     by "***", and scripts apply to them as to API routes;
--   POST /_mock/reset          clears the request log and pending scripts;
--   POST /_mock/script         queues scripted responses for a route;
--   POST /_mock/workflows      seeds a workflow {id, name, definitions}, where
--     the optional definitions {workflowData, flowData, envVariables
--     (optional)} are strings stored as its current version;
--   GET /_mock/workflows/ID    a workflow's name, deploy state ("deployed")
--     and stored definitions;
--   POST /_mock/models         seeds a model {id, fileName, content}, where
--     fileName and content of the model file are optional;
--   GET /_mock/models/ID       a model's file name and size, whether its
--     import ended ("imported"), "deployed" and the last "deployment" body;
--   GET /_mock/files/ID?...    an uploaded file's bytes, from its signed url;
--   GET /_mock/exports/EXPORT_JOB_ID.zip?...  an export's zip, from the
--     signed link in its dock status (403 for a wrong or expired signature),
--     as application/zip with Content-Disposition naming the file;
--   POST /_mock/shutdown       stops the emulator.
--
-- A script is {method, path or path_pattern, responses = {...}, repeat}.
-- Requests that match it take its responses in turn; `repeat` (default 1)
-- runs the list that many times, and -1 repeats it until POST /_mock/reset.
-- A script entry is taken when the request head has been read, before the
-- body, so a connection that fails while sending its body still uses it up.
-- Every field of an entry is optional:
--   status (200), headers, body (a string, or a JSON value to encode): the
--     response. A non-empty body or a stream gets Content-Type
--     application/json unless headers name one;
--   delay: seconds to wait after reading the request before responding;
--   drop, reset: close the connection without a response, with a FIN, or
--     with a TCP RST for reset;
--   passthrough: respond as the emulator would without a script (after delay);
--   raw: a string written to the socket verbatim in place of a built
--     response, so a test can send a false Content-Length, a truncated
--     chunked body or a malformed status line. Excludes status, headers,
--     body, stream and passthrough. The text up to and including the first
--     empty line counts as the head for stall and trickle. Without close, the
--     connection then waits for the next request;
--   close: true closes the connection after the response is written, and a
--     built response carries the header "Connection: close";
--   stall: seconds to wait between writing the head and the body;
--   trickle: send the body one byte at a time, this many seconds apart;
--   stream: {bytes = N, chunk = "x", chunked = false}: a body of N bytes made
--     of chunk repeated, generated while it is sent so that it never sits in
--     memory whole. It has a Content-Length unless chunked is true, when it
--     goes out with Transfer-Encoding chunked. Excludes body and passthrough;
--   read_rate: bytes per second at which the request body is read, so that an
--     upload can be slow but moving. The first read may take up to 64 KiB
--     that arrived with the request head.

local socket = require("socket")
local cjson = require("cjson")
local mock_zip = require("kore_workflow.mock_zip")
local mock_workflows = require("kore_workflow.mock_workflows")
local mock_sessions = require("kore_workflow.mock_sessions")
local mock_models = require("kore_workflow.mock_models")

local unpack = table.unpack or unpack

local mock = {}

local DEFAULT_WORKFLOW_ID = "a-00000000-0000-4000-8000-000000000001"
local ID_FIELDS = { dockStatusId = true, ["dock-statusId"] = true, _id = true }
local IMPORT_FIELDS = { "workflowDataFileId", "flowDataFileId", "envVariablesFileId" }
local DEFINITION_NAMES = {
  workflowDataFileId = "workflowData",
  flowDataFileId = "flowData",
  envVariablesFileId = "envVariables",
}
-- Request headers whose values the request log replaces with "***".
local REDACTED_HEADERS = { ["x-api-key"] = true, authorization = true, ["proxy-authorization"] = true }
-- Places of the download link in a SUCCESS dock status of an export, by
-- the value of the export_url_field option.
local EXPORT_URL_FIELDS = { downloadUrl = "response.downloadUrl", downloadURL = "downloadURL" }

local REASON_PHRASES = {
  [100] = "Continue", [200] = "OK", [201] = "Created", [202] = "Accepted",
  [204] = "No Content", [301] = "Moved Permanently", [302] = "Found",
  [304] = "Not Modified", [400] = "Bad Request", [401] = "Unauthorized",
  [403] = "Forbidden", [404] = "Not Found", [405] = "Method Not Allowed",
  [408] = "Request Timeout", [409] = "Conflict", [411] = "Length Required",
  [413] = "Content Too Large", [417] = "Expectation Failed",
  [422] = "Unprocessable Content", [429] = "Too Many Requests",
  [431] = "Request Header Fields Too Large", [500] = "Internal Server Error",
  [501] = "Not Implemented", [502] = "Bad Gateway", [503] = "Service Unavailable",
  [504] = "Gateway Timeout", [505] = "HTTP Version Not Supported",
}

-- Error codes for requests rejected before routing, by HTTP status; other
-- statuses get BAD_REQUEST.
local PROTOCOL_ERROR_CODES = {
  [413] = "PAYLOAD_TOO_LARGE",
  [417] = "EXPECTATION_FAILED",
  [501] = "NOT_IMPLEMENTED",
  [505] = "HTTP_VERSION_NOT_SUPPORTED",
}

local MAX_HEAD_BYTES = 65536
local MAX_LOGGED_FIELD_BYTES = 1024
-- JSON bodies larger than this are not decoded into the request log.
local MAX_LOGGED_JSON_BYTES = 65536
-- The API documentation states that POST /api/public/files takes files under
-- 25 MB. The emulator reads MB as 10^6 bytes, the stricter of the two readings.
local DEFAULT_MAX_SINGLE_UPLOAD = 25 * 1000 * 1000
local MAX_CHUNK_LINE_BYTES = 4096
local RECEIVE_SIZE = 65536

---------------------------------------------------------------------------
-- JSON
---------------------------------------------------------------------------

-- A private cjson instance, so that its settings never change those of the
-- process-wide cjson module that other code may use.
local json_decoder = cjson.new()
json_decoder.decode_invalid_numbers(false)

-- Metatable that marks a Lua table to be encoded as a JSON array, even when empty.
local ARRAY_MT = {}

local function json_array(t)
  return setmetatable(t or {}, ARRAY_MT)
end

local function json_decode(text)
  local ok, value = pcall(json_decoder.decode, text)
  if not ok then
    return nil, tostring(value)
  end
  return value
end

local JSON_ESCAPES = {
  ['"'] = '\\"', ["\\"] = "\\\\", ["\b"] = "\\b", ["\f"] = "\\f",
  ["\n"] = "\\n", ["\r"] = "\\r", ["\t"] = "\\t",
}

local function json_encode_string(s)
  local escaped = s:gsub('[%c"\\]', function(c)
    return JSON_ESCAPES[c] or string.format("\\u%04x", c:byte())
  end)
  return '"' .. escaped .. '"'
end

-- Formats integral numbers without a fraction, because lua-cjson decodes
-- every number as a float on Lua 5.3 and 5.4.
local function json_encode_number(n)
  if n ~= n or n == math.huge or n == -math.huge then
    return "null"
  end
  if n == math.floor(n) and math.abs(n) < 2 ^ 53 then
    return string.format("%d", n)
  end
  return string.format("%.17g", n)
end

local function is_sequence(t)
  local count = 0
  for key in pairs(t) do
    if type(key) ~= "number" or key < 1 or key ~= math.floor(key) then
      return false
    end
    count = count + 1
  end
  return count > 0 and count == #t
end

-- Encodes a Lua value as JSON text. Object keys are sorted so that output
-- is stable. Strings pass through byte for byte apart from the escapes that
-- JSON requires, so binary content is not altered.
local function json_encode(value)
  local kind = type(value)
  if value == nil or value == cjson.null then
    return "null"
  elseif kind == "boolean" then
    return value and "true" or "false"
  elseif kind == "number" then
    return json_encode_number(value)
  elseif kind == "string" then
    return json_encode_string(value)
  elseif kind == "table" then
    local out = {}
    if getmetatable(value) == ARRAY_MT or is_sequence(value) then
      for i = 1, #value do
        out[i] = json_encode(value[i])
      end
      return "[" .. table.concat(out, ",") .. "]"
    end
    local keys = {}
    for key in pairs(value) do
      keys[#keys + 1] = tostring(key)
    end
    table.sort(keys)
    for i, key in ipairs(keys) do
      local item = value[key]
      if item == nil then
        item = value[tonumber(key)]
      end
      out[i] = json_encode_string(key) .. ":" .. json_encode(item)
    end
    return "{" .. table.concat(out, ",") .. "}"
  end
  error("cannot encode a " .. kind .. " value as JSON")
end

mock.json_encode = json_encode
mock.json_array = json_array

---------------------------------------------------------------------------
-- Random identifiers
---------------------------------------------------------------------------

local urandom = io.open("/dev/urandom", "rb")
local math_random_seeded = false

local function random_bytes(count)
  if urandom then
    local bytes = urandom:read(count)
    if bytes and #bytes == count then
      return bytes
    end
  end
  if not math_random_seeded then
    math.randomseed(os.time() + math.floor((socket.gettime() % 1) * 1e6))
    math_random_seeded = true
  end
  local chars = {}
  for i = 1, count do
    chars[i] = string.char(math.random(0, 255))
  end
  return table.concat(chars)
end

local function to_hex(bytes)
  return (bytes:gsub(".", function(c)
    return string.format("%02x", c:byte())
  end))
end

-- Returns a random version 4 UUID in lowercase hex.
local function new_uuid()
  local b = { random_bytes(16):byte(1, 16) }
  b[7] = b[7] % 16 + 64
  b[9] = b[9] % 64 + 128
  local hex = to_hex(string.char(unpack(b)))
  return hex:sub(1, 8) .. "-" .. hex:sub(9, 12) .. "-" .. hex:sub(13, 16)
    .. "-" .. hex:sub(17, 20) .. "-" .. hex:sub(21, 32)
end

---------------------------------------------------------------------------
-- HTTP text helpers
---------------------------------------------------------------------------

local function trim(s)
  return (s:gsub("^[ \t]+", ""):gsub("[ \t]+$", ""))
end

-- Decodes %XX escapes. Returns nil for a malformed escape.
local function percent_decode(s)
  if s:find("%%[^%x]") or s:find("%%%x[^%x]") or s:find("%%%x?$") then
    return nil
  end
  return (s:gsub("%%(%x%x)", function(hex)
    return string.char(tonumber(hex, 16))
  end))
end

-- Splits a raw path on "/" and then percent-decodes each segment, so that an
-- encoded slash stays inside its segment. The leading "/" yields no segment.
local function split_path(raw_path)
  local segments = {}
  for raw in (raw_path .. "/"):gmatch("([^/]*)/") do
    local decoded = percent_decode(raw)
    if not decoded then
      return nil, string.format("invalid percent-encoding in path segment %s", json_encode_string(raw))
    end
    segments[#segments + 1] = decoded
  end
  table.remove(segments, 1)
  return segments
end

local function parse_query(query)
  local params = {}
  for pair in query:gmatch("[^&]+") do
    local name, value = pair:match("^([^=]*)=?(.*)$")
    name = percent_decode((name:gsub("%+", " "))) or name
    value = percent_decode((value:gsub("%+", " "))) or value
    if params[name] == nil then
      params[name] = value
    end
  end
  return params
end

-- Parses a header value of the form `main; name=value; name="quoted"`.
-- Returns the lowercased main value and a table of parameters with lowercased names.
local function parse_header_parameters(value)
  local main, rest = value:match("^%s*([^;]*)(.*)$")
  local params = {}
  local pos = 1
  while true do
    local _, stop, name = rest:find("^%s*;%s*([^=;%s]+)%s*=%s*", pos)
    if not stop then
      break
    end
    pos = stop + 1
    local param_value
    if rest:sub(pos, pos) == '"' then
      local chars = {}
      local i = pos + 1
      while i <= #rest do
        local c = rest:sub(i, i)
        if c == "\\" then
          chars[#chars + 1] = rest:sub(i + 1, i + 1)
          i = i + 2
        elseif c == '"' then
          break
        else
          chars[#chars + 1] = c
          i = i + 1
        end
      end
      param_value = table.concat(chars)
      pos = i + 1
    else
      local token = rest:match("^[^;]*", pos)
      param_value = trim(token)
      pos = pos + #token
    end
    params[name:lower()] = param_value
  end
  return trim(main):lower(), params
end

-- Decodes an RFC 5987 extended parameter value such as UTF-8''na%C3%AFve.json.
local function decode_extended_parameter(value)
  local encoded = value:match("^[^']*'[^']*'(.*)$")
  if not encoded then
    return nil
  end
  return percent_decode(encoded)
end

---------------------------------------------------------------------------
-- multipart/form-data
---------------------------------------------------------------------------

-- Returns the boundary of a multipart/form-data content type, or nil and a message.
local function multipart_boundary(content_type)
  if not content_type then
    return nil, "missing Content-Type header: send the upload as multipart/form-data"
  end
  local main, params = parse_header_parameters(content_type)
  if main ~= "multipart/form-data" then
    return nil, string.format("expected a multipart/form-data body, got Content-Type %s",
      json_encode_string(content_type))
  end
  local boundary = params.boundary
  if not boundary or boundary == "" then
    return nil, "the multipart/form-data Content-Type has no boundary parameter"
  end
  if #boundary > 70 then
    return nil, "the multipart boundary is longer than 70 characters"
  end
  return boundary
end

-- Finds the next delimiter line at or after `init` in data. A delimiter is
-- CRLF, "--" and the boundary, then optional spaces and tabs and a CRLF.
-- The close delimiter has "--" after the boundary, then optional spaces
-- and tabs and a CRLF or the end of the body. The same bytes followed by
-- anything else are content, not a delimiter.
-- Returns the index where the delimiter's CRLF starts, the index just after
-- the delimiter line, and whether it is the close delimiter.
local function find_delimiter(data, boundary, init)
  local marker = "\r\n--" .. boundary
  local pos = init
  while true do
    local start, stop = data:find(marker, pos, true)
    if not start then
      return nil
    end
    local after = stop + 1
    if data:sub(after, after + 1) == "--"
      and (data:find("^[ \t]*\r\n", after + 2) or data:find("^[ \t]*$", after + 2)) then
      return start, after + 2, true
    end
    local _, line_end = data:find("^[ \t]*\r\n", after)
    if line_end then
      return start, line_end + 1, false
    end
    pos = start + 1
  end
end

local function parse_part_headers(text, part_number)
  local headers = {}
  if text == "" then
    return headers
  end
  for line in (text .. "\r\n"):gmatch("(.-)\r\n") do
    local name, value = line:match("^([^:%s]+):(.*)$")
    if not name then
      return nil, string.format("multipart part %d has an invalid header line %s",
        part_number, json_encode_string(line))
    end
    name = name:lower()
    value = trim(value)
    if headers[name] then
      headers[name] = headers[name] .. ", " .. value
    else
      headers[name] = value
    end
  end
  return headers
end

-- Parses a multipart/form-data body. Binary safe: part content may hold any
-- bytes, including NUL, CR LF and text that resembles the boundary.
-- Returns an array of parts {name, filename, content_type, headers, content},
-- or nil and a message.
local function parse_multipart(body, boundary)
  -- A leading CRLF lets a delimiter at the very start match like every other one.
  local data = "\r\n" .. body
  local _, pos, final = find_delimiter(data, boundary, 1)
  if not pos then
    return nil, string.format("the multipart body contains no delimiter line --%s", boundary)
  end
  local parts = {}
  while not final do
    local part_number = #parts + 1
    local headers_text, content_start
    if data:sub(pos, pos + 1) == "\r\n" then
      headers_text = ""
      content_start = pos + 2
    else
      local head_end, head_stop = data:find("\r\n\r\n", pos, true)
      if not head_end then
        return nil, string.format("multipart part %d has no blank line after its headers", part_number)
      end
      headers_text = data:sub(pos, head_end - 1)
      content_start = head_stop + 1
    end
    local headers, header_error = parse_part_headers(headers_text, part_number)
    if not headers then
      return nil, header_error
    end
    local content_end, next_pos, is_final = find_delimiter(data, boundary, content_start)
    if not content_end then
      return nil, string.format("the multipart body ends without the close delimiter --%s--", boundary)
    end
    local part = { headers = headers, content = data:sub(content_start, content_end - 1) }
    if headers["content-disposition"] then
      local _, params = parse_header_parameters(headers["content-disposition"])
      part.name = params.name
      part.filename = params.filename
      if params["filename*"] then
        part.filename = decode_extended_parameter(params["filename*"]) or part.filename
      end
    end
    part.content_type = headers["content-type"]
    parts[part_number] = part
    pos, final = next_pos, is_final
  end
  return parts
end

mock.parse_multipart = parse_multipart

---------------------------------------------------------------------------
-- Responses
---------------------------------------------------------------------------

local function json_response(status, value, headers)
  return {
    status = status,
    body = json_encode(value),
    content_type = "application/json; charset=utf-8",
    headers = headers,
  }
end

local function error_response(status, code, message, headers)
  return json_response(status, { message = message, code = code }, headers)
end

local function bad_request(message)
  return error_response(400, "BAD_REQUEST", message)
end

local function not_found(message)
  return error_response(404, "NOT_FOUND", message)
end

local function quote(s)
  return json_encode_string(tostring(s))
end

---------------------------------------------------------------------------
-- Connections
---------------------------------------------------------------------------

local Connection = {}
Connection.__index = Connection

-- Connections are numbered from 1 in accept order. The number comes from its
-- own counter, because connection_count goes down again as connections close.
local function new_connection(server, sock)
  server.connections_accepted = (server.connections_accepted or 0) + 1
  return setmetatable({ server = server, sock = sock, buffer = "",
                        number = server.connections_accepted }, Connection)
end

-- Limits reads from the socket to bytes_per_second on average from now on,
-- or lifts the limit when it is nil.
function Connection:limit_read_rate(bytes_per_second)
  self.read_rate = bytes_per_second
  self.rate_started = socket.gettime()
  self.rate_bytes = 0
end

-- Sleeps until the read rate allows more bytes, and returns how many may be
-- read now, at most max_bytes.
function Connection:read_allowance(max_bytes)
  local rate = self.read_rate
  -- Waiting for a slice of about 1/20 s of data keeps the rate even without
  -- a wake-up per byte.
  local slice = math.min(max_bytes, math.max(1, math.floor(rate / 20)))
  while true do
    local now = socket.gettime()
    local allowed = math.floor((now - self.rate_started) * rate) - self.rate_bytes
    if allowed >= slice then
      return math.min(allowed, max_bytes)
    end
    self:sleep(self.rate_started + (self.rate_bytes + slice) / rate - now)
  end
end

-- Returns a non-empty string of at most max_bytes, waiting up to timeout
-- seconds for data. Returns nil and "closed", "timeout" or a socket error.
function Connection:receive_some(max_bytes, timeout)
  if self.read_rate then
    max_bytes = self:read_allowance(max_bytes)
  end
  local deadline = socket.gettime() + timeout
  while true do
    local data, err, partial = self.sock:receive(max_bytes)
    local chunk = data or partial
    if chunk and chunk ~= "" then
      if self.read_rate then
        self.rate_bytes = self.rate_bytes + #chunk
      end
      return chunk
    end
    if err ~= "timeout" then
      return nil, err
    end
    if coroutine.yield("read", deadline) == "timeout" then
      return nil, "timeout"
    end
  end
end

-- Reads until the Lua pattern matches in the buffer. Returns the buffer text
-- before the match and removes it and the match from the buffer.
function Connection:read_until(pattern, max_bytes, timeout)
  while true do
    local start, stop = self.buffer:find(pattern)
    if start then
      local text = self.buffer:sub(1, start - 1)
      self.buffer = self.buffer:sub(stop + 1)
      return text
    end
    if #self.buffer > max_bytes then
      return nil, "too_large"
    end
    local chunk, err = self:receive_some(RECEIVE_SIZE, timeout)
    if not chunk then
      return nil, err
    end
    self.buffer = self.buffer .. chunk
  end
end

-- Reads exactly count bytes, collecting pieces in a table so that large
-- bodies are not copied once per received chunk.
function Connection:read_exact(count, timeout)
  local pieces = {}
  local have = 0
  if self.buffer ~= "" then
    local take = math.min(count, #self.buffer)
    pieces[1] = self.buffer:sub(1, take)
    self.buffer = self.buffer:sub(take + 1)
    have = take
  end
  while have < count do
    local chunk, err = self:receive_some(math.min(RECEIVE_SIZE, count - have), timeout)
    if not chunk then
      return nil, err
    end
    pieces[#pieces + 1] = chunk
    have = have + #chunk
  end
  return table.concat(pieces)
end

function Connection:send_all(data, timeout)
  local deadline = socket.gettime() + timeout
  local index = 1
  while index <= #data do
    local last, err, partial_last = self.sock:send(data, index)
    if last then
      index = last + 1
    else
      if err ~= "timeout" then
        return nil, err
      end
      index = partial_last + 1
      if index <= #data and coroutine.yield("write", deadline) == "timeout" then
        return nil, "timeout"
      end
    end
  end
  return true
end

function Connection.sleep(_, seconds)
  if seconds and seconds > 0 then
    coroutine.yield("sleep", socket.gettime() + seconds)
  end
end

-- Closes the connection. With reset, SO_LINGER 0 makes the kernel send a
-- TCP RST in place of the normal FIN. Returns whether the linger option took effect.
function Connection:close(reset)
  if self.closed then
    return true
  end
  self.closed = true
  local reset_set = false
  if reset then
    reset_set = self.sock:setoption("linger", { on = true, timeout = 0 }) and true or false
  end
  self.sock:close()
  return reset_set
end

---------------------------------------------------------------------------
-- Reading requests
---------------------------------------------------------------------------

-- Parses the request line and header fields. Returns a request table, or
-- nil, an HTTP status and a message.
local function parse_request_head(head)
  local lines = {}
  for line in (head .. "\n"):gmatch("(.-)\r?\n") do
    lines[#lines + 1] = line
  end
  local method, target, major, minor = lines[1]:match("^(%S+) (%S+) HTTP/(%d)%.(%d)$")
  if not method then
    return nil, 400, string.format("invalid request line %s", quote(lines[1]))
  end
  if major ~= "1" then
    return nil, 505, string.format("HTTP version %s.%s is not supported: use HTTP/1.1", major, minor)
  end
  if target:sub(1, 1) ~= "/" then
    return nil, 400, string.format("request target %s must start with /", quote(target))
  end
  local headers = {}
  for i = 2, #lines do
    local line = lines[i]
    if line:find("^[ \t]") then
      return nil, 400, "obsolete header line folding is not accepted"
    end
    local name, value = line:match("^([^:%s]+):(.*)$")
    if not name then
      -- The line is not echoed, because it may contain a secret header value.
      return nil, 400, string.format("invalid header line %d: expected a field name, a colon and a value", i)
    end
    name = name:lower()
    value = trim(value)
    if headers[name] then
      headers[name] = headers[name] .. ", " .. value
    else
      headers[name] = value
    end
  end
  local path, query = target:match("^([^?]*)%??(.*)$")
  local connection = (headers.connection or ""):lower()
  local keep_alive
  if minor == "0" then
    keep_alive = connection:find("keep%-alive") ~= nil
  else
    keep_alive = connection:find("close") == nil
  end
  return {
    method = method,
    target = target,
    path = path,
    query = query,
    version = "1." .. minor,
    headers = headers,
    keep_alive = keep_alive,
  }
end

-- Works out how the request body is framed. Returns "none", "length" with a
-- byte count, or "chunked"; or nil, an HTTP status and a message.
local function body_framing(request, max_body)
  local transfer_encoding = request.headers["transfer-encoding"]
  if transfer_encoding then
    local codings = {}
    for coding in transfer_encoding:lower():gmatch("[^,%s]+") do
      codings[#codings + 1] = coding
    end
    if codings[#codings] ~= "chunked" then
      return nil, 501, string.format("Transfer-Encoding %s is not supported: use chunked or Content-Length",
        quote(transfer_encoding))
    end
    if request.headers["content-length"] then
      -- Both headers together can smuggle requests, so the connection closes after this one.
      request.keep_alive = false
    end
    return "chunked"
  end
  local content_length = request.headers["content-length"]
  if not content_length then
    return "none"
  end
  local length
  for value in content_length:gmatch("[^,]+") do
    value = trim(value)
    if not value:find("^%d+$") or (length and tonumber(value) ~= length) then
      return nil, 400, string.format("invalid Content-Length %s", quote(content_length))
    end
    length = tonumber(value)
  end
  if not length then
    return nil, 400, string.format("invalid Content-Length %s", quote(content_length))
  end
  if length > max_body then
    return nil, 413, string.format("request body of %d bytes is larger than the limit of %d bytes",
      length, max_body)
  end
  return "length", length
end

-- Reads a chunked body. Returns the body, or nil, an HTTP status (nil when
-- the connection failed) and a message.
local function read_chunked_body(conn, max_body, timeout)
  local pieces = {}
  local total = 0
  while true do
    local line, err = conn:read_until("\r\n", MAX_CHUNK_LINE_BYTES, timeout)
    if not line then
      if err == "too_large" then
        return nil, 400, "chunk size line is too long"
      end
      return nil, nil, err
    end
    local size_hex = line:match("^[ \t]*(%x+)[ \t]*;?.*$")
    if not size_hex or #size_hex > 12 then
      return nil, 400, string.format("invalid chunk size line %s", quote(line))
    end
    local size = tonumber(size_hex, 16)
    if size == 0 then
      -- Trailer fields end with an empty line; their content is ignored.
      while true do
        local trailer, trailer_err = conn:read_until("\r\n", MAX_HEAD_BYTES, timeout)
        if not trailer then
          return nil, nil, trailer_err
        end
        if trailer == "" then
          return table.concat(pieces)
        end
      end
    end
    total = total + size
    if total > max_body then
      return nil, 413, string.format("chunked request body is larger than the limit of %d bytes", max_body)
    end
    local data, data_err = conn:read_exact(size, timeout)
    if not data then
      return nil, nil, data_err
    end
    pieces[#pieces + 1] = data
    local crlf, crlf_err = conn:read_exact(2, timeout)
    if not crlf then
      return nil, nil, crlf_err
    end
    if crlf ~= "\r\n" then
      return nil, 400, "chunk data is not followed by CRLF"
    end
  end
end

---------------------------------------------------------------------------
-- Server
---------------------------------------------------------------------------

local Server = {}
Server.__index = Server

local function check_option(condition, message)
  if not condition then
    error("kore_workflow.mock.new: " .. message, 3)
  end
end

local function is_integer(value)
  return type(value) == "number" and value == math.floor(value)
end

-- Creates an emulator; it listens only after listen(), run() or step().
-- Every option is optional:
--   host ("127.0.0.1"), port (0 picks a free port);
--   api_key: the key that requests must send in x-api-key. Without it, any
--     non-empty x-api-key value is accepted;
--   polls (2): dock-status polls that return IN_PROGRESS before a job ends;
--   delay (0): seconds added before every API reply;
--   id_field ("dockStatusId"): job id field name in import replies, one of
--     dockStatusId, dock-statusId and _id, because real servers vary;
--   workflows: list of workflow ids to seed. DEFAULT_WORKFLOW_ID is seeded
--     when neither workflows nor workflow_dirs names one;
--   workflow_dirs: map of workflow id to an export directory, read here, whose
--     app_definition.json, flow_definition.json and optional
--     env_variables.json become the seeded workflow's current version;
--   models: list of model ids to seed, each with a small generated model file;
--   export_url_field ("downloadUrl"): where a SUCCESS dock status of an
--     export carries its link, "downloadUrl" inside "response" or
--     "downloadURL" at the top level, because real servers vary;
--   session_ttl (3600): seconds an upload session accepts chunks after it
--     starts;
--   max_single_upload (25000000): size in bytes from which
--     POST /api/public/files rejects a file with 413;
--   log: function(line, kind) called with one line per request (kind
--     "request") and with lifecycle and error lines ("info", "error").
--     The configured API key and file URL signatures are replaced by "***";
--   idle_exit: seconds without any request after which run() returns "idle";
--   max_body (64 MiB), max_connections (200), keepalive_timeout (120 s),
--   request_timeout (30 s, the longest wait for one read or write of a
--     request in progress), file_url_ttl (3600 s, also for export links).
-- Raises an error naming an invalid option or an unreadable directory.
function mock.new(opts)
  opts = opts or {}
  check_option(type(opts) == "table", "options must be a table")
  local host = opts.host or "127.0.0.1"
  check_option(type(host) == "string" and host ~= "", "host must be a non-empty string")
  local port = opts.port or 0
  check_option(is_integer(port) and port >= 0 and port <= 65535, "port must be an integer from 0 to 65535")
  check_option(opts.api_key == nil or (type(opts.api_key) == "string" and opts.api_key ~= ""),
    "api_key must be a non-empty string")
  local polls = opts.polls or 2
  check_option(is_integer(polls) and polls >= 0, "polls must be an integer of at least 0")
  local delay = opts.delay or 0
  check_option(type(delay) == "number" and delay >= 0 and delay < math.huge,
    "delay must be a number of seconds of at least 0")
  local id_field = opts.id_field or "dockStatusId"
  check_option(ID_FIELDS[id_field], "id_field must be dockStatusId, dock-statusId or _id")
  check_option(opts.log == nil or type(opts.log) == "function", "log must be a function")
  check_option(opts.idle_exit == nil or (type(opts.idle_exit) == "number" and opts.idle_exit > 0),
    "idle_exit must be a number of seconds greater than 0")
  local export_url_field = opts.export_url_field or "downloadUrl"
  check_option(EXPORT_URL_FIELDS[export_url_field], "export_url_field must be downloadUrl or downloadURL")
  local session_ttl = opts.session_ttl or 3600
  check_option(type(session_ttl) == "number" and session_ttl > 0 and session_ttl < math.huge,
    "session_ttl must be a number of seconds greater than 0")
  local max_single_upload = opts.max_single_upload or DEFAULT_MAX_SINGLE_UPLOAD
  check_option(is_integer(max_single_upload) and max_single_upload >= 1 and max_single_upload < math.huge,
    "max_single_upload must be a whole number of bytes of at least 1")
  local workflows = opts.workflows
  check_option(workflows == nil or type(workflows) == "table",
    "workflows must be a list of workflow id strings")
  local workflow_dirs = opts.workflow_dirs or {}
  check_option(type(workflow_dirs) == "table", "workflow_dirs must be a map of workflow id to directory")
  local models = opts.models or {}
  check_option(type(models) == "table", "models must be a list of model id strings")
  if (workflows == nil or #workflows == 0) and next(workflow_dirs) == nil then
    workflows = { DEFAULT_WORKFLOW_ID }
  end

  local server = setmetatable({
    host = host,
    port = port,
    api_key = opts.api_key,
    polls = polls,
    delay = delay,
    id_field = id_field,
    export_url_field = export_url_field,
    session_ttl = session_ttl,
    max_single_upload = max_single_upload,
    log_function = opts.log,
    idle_exit = opts.idle_exit,
    max_body = opts.max_body or 64 * 1024 * 1024,
    max_connections = opts.max_connections or 200,
    keepalive_timeout = opts.keepalive_timeout or 120,
    request_timeout = opts.request_timeout or 30,
    file_url_ttl = opts.file_url_ttl or 3600,
    connections = {},
    connection_count = 0,
    request_log = {},
    scripts = {},
    next_script_id = 1,
    workflows = {},
    files = {},
    jobs = {},
    exports = {},
    sessions = {},
    models = {},
    last_activity = socket.gettime(),
  }, Server)
  for _, id in ipairs(workflows or {}) do
    check_option(type(id) == "string" and id ~= "", "workflows must be a list of non-empty strings")
    server:seed_workflow(id)
  end
  for id, dir in pairs(workflow_dirs) do
    check_option(type(id) == "string" and id ~= "" and type(dir) == "string" and dir ~= "",
      "workflow_dirs must map non-empty workflow id strings to directory strings")
    local definitions, err = mock_workflows.read_definitions(dir)
    check_option(definitions, string.format("workflow_dirs[%s]: %s", quote(id), tostring(err)))
    server:seed_workflow(id, nil, definitions)
  end
  for _, id in ipairs(models) do
    check_option(type(id) == "string" and id ~= "", "models must be a list of non-empty strings")
    server:seed_model(id)
  end
  return server
end

function Server:log(line, kind)
  if not self.log_function then
    return
  end
  if self.api_key then
    local start, stop = line:find(self.api_key, 1, true)
    while start do
      line = line:sub(1, start - 1) .. "***" .. line:sub(stop + 1)
      start, stop = line:find(self.api_key, start + 3, true)
    end
  end
  self.log_function(line, kind or "info")
end

-- Binds and listens. Returns true, or nil and a message.
function Server:listen()
  if self.master then
    return true
  end
  local master, err = socket.bind(self.host, self.port, 128)
  if not master then
    return nil, string.format("cannot listen on %s port %d: %s", self.host, self.port, tostring(err))
  end
  master:settimeout(0)
  local _, bound_port = master:getsockname()
  self.master = master
  self.bound_port = tonumber(bound_port)
  self:log("listening on " .. self:url(), "info")
  return true
end

-- Returns the base URL, such as http://127.0.0.1:8080. Known after listen().
function Server:url()
  if not self.bound_port then
    error("kore_workflow.mock: url() is known only after listen()", 2)
  end
  local host = self.host
  if host == "*" or host == "0.0.0.0" then
    host = "127.0.0.1"
  elseif host == "::" then
    host = "::1"
  end
  if host:find(":", 1, true) then
    host = "[" .. host .. "]"
  end
  return string.format("http://%s:%d", host, self.bound_port)
end

function Server:add_connection(sock)
  sock:settimeout(0)
  sock:setoption("tcp-nodelay", true)
  local conn = new_connection(self, sock)
  conn.co = coroutine.create(function()
    self:serve_connection(conn)
  end)
  self.connections[conn] = true
  self.connection_count = self.connection_count + 1
  self:resume(conn, "start")
end

function Server:remove_connection(conn)
  if self.connections[conn] then
    self.connections[conn] = nil
    self.connection_count = self.connection_count - 1
  end
  conn:close()
end

function Server:resume(conn, reason)
  local ok, wait, deadline = coroutine.resume(conn.co, reason)
  if not ok then
    self:log("connection closed after an internal error: " .. tostring(wait), "error")
    self:remove_connection(conn)
    return
  end
  if coroutine.status(conn.co) == "dead" then
    self:remove_connection(conn)
    return
  end
  conn.wait, conn.deadline = wait, deadline
end

-- Serves one scheduler round: waits up to timeout seconds (default 0) for
-- socket events or timers, accepts new connections and resumes every
-- connection whose socket is ready or whose timer expired.
function Server:step(timeout)
  if not self.master then
    error("kore_workflow.mock: call listen() before step()", 2)
  end
  local now = socket.gettime()
  local wake_at = now + (timeout or 0)
  local readers, writers = {}, {}
  if self.connection_count < self.max_connections then
    readers[1] = self.master
  end
  for conn in pairs(self.connections) do
    if conn.wait == "read" then
      readers[#readers + 1] = conn.sock
    elseif conn.wait == "write" then
      writers[#writers + 1] = conn.sock
    end
    if conn.deadline and conn.deadline < wake_at then
      wake_at = conn.deadline
    end
  end
  local readable, writable = socket.select(readers, writers, math.max(0, wake_at - now))
  readable = readable or {}
  writable = writable or {}

  local ready = {}
  for conn in pairs(self.connections) do
    ready[#ready + 1] = conn
  end
  if readable[self.master] then
    while self.connection_count < self.max_connections do
      local sock = self.master:accept()
      if not sock then
        break
      end
      self:add_connection(sock)
    end
  end
  now = socket.gettime()
  for _, conn in ipairs(ready) do
    if self.connections[conn] then
      if (conn.wait == "read" and readable[conn.sock]) or (conn.wait == "write" and writable[conn.sock]) then
        self:resume(conn, "ready")
      elseif conn.deadline and now >= conn.deadline then
        self:resume(conn, conn.wait == "sleep" and "done" or "timeout")
      end
    end
  end
end

-- Serves until POST /_mock/shutdown, or until no request arrived for
-- idle_exit seconds when that option is set. Returns "shutdown" or
-- "idle"; or nil and a message when listening fails.
function Server:run()
  local ok, err = self:listen()
  if not ok then
    return nil, err
  end
  while not self.stop_reason do
    self:step(1)
    if self.idle_exit and self.connection_count == 0
      and socket.gettime() - self.last_activity >= self.idle_exit then
      self.stop_reason = "idle"
      self:log(string.format("stopping: no request for %g seconds", self.idle_exit), "info")
    end
  end
  local reason = self.stop_reason
  self:close()
  return reason
end

-- Closes the listening socket and every connection.
function Server:close()
  for conn in pairs(self.connections) do
    self:remove_connection(conn)
  end
  if self.master then
    self.master:close()
    self.master = nil
  end
end

---------------------------------------------------------------------------
-- Serving a connection
---------------------------------------------------------------------------

function Server:serve_connection(conn)
  while not self.stop_reason do
    if not self:serve_request(conn) then
      break
    end
  end
end

-- Builds the status line and header fields of a response, up to and
-- including the empty line. `length` is the body's size in bytes, or
-- "chunked" for a body sent with Transfer-Encoding chunked.
function Server.build_response_head(_, response, keep_alive, length)
  local status = response.status
  local lines = {
    string.format("HTTP/1.1 %d %s", status, REASON_PHRASES[status] or "Unknown"),
    "Server: kore-workflow-mock",
  }
  local has = {}
  local extra = response.headers or {}
  local names = {}
  for name in pairs(extra) do
    names[#names + 1] = name
  end
  table.sort(names)
  for _, name in ipairs(names) do
    local lower = name:lower()
    if lower ~= "content-length" and lower ~= "connection" and lower ~= "transfer-encoding" then
      lines[#lines + 1] = name .. ": " .. tostring(extra[name])
      has[lower] = true
    end
  end
  if status ~= 204 and status ~= 304 then
    if not has["content-type"] and response.content_type then
      lines[#lines + 1] = "Content-Type: " .. response.content_type
    end
    if length == "chunked" then
      lines[#lines + 1] = "Transfer-Encoding: chunked"
    else
      lines[#lines + 1] = "Content-Length: " .. string.format("%d", length)
    end
  end
  lines[#lines + 1] = "Connection: " .. (keep_alive and "keep-alive" or "close")
  return table.concat(lines, "\r\n") .. "\r\n\r\n"
end

-- Returns whether a response to the request carries a body.
local function has_body(request, response)
  local status = response.status
  return status ~= 204 and status ~= 304 and not (request and request.method == "HEAD")
end

function Server:build_response_text(request, response, keep_alive)
  local body = response.body or ""
  local head = self:build_response_head(response, keep_alive, #body)
  if not has_body(request, response) then
    return head
  end
  return head .. body
end

-- Returns whether the connection stays open after the response.
function Server:keeps_alive(request, response)
  if request == nil or not request.keep_alive or response.close or self.stop_reason then
    return false
  end
  for name, value in pairs(response.headers or {}) do
    if name:lower() == "connection" and tostring(value):lower():find("close") then
      return false
    end
  end
  return true
end

-- Sends a response. A response may give its body as body_pieces, an array
-- of strings sent one after another, so that a large body such as a zip
-- archive is never joined into one string. Returns whether the connection
-- stays open.
function Server:send_response(conn, request, response)
  local keep_alive = self:keeps_alive(request, response)
  if not response.body_pieces then
    local ok = conn:send_all(self:build_response_text(request, response, keep_alive), self.request_timeout)
    return ok and keep_alive or false
  end
  local length = 0
  for _, piece in ipairs(response.body_pieces) do
    length = length + #piece
  end
  if not conn:send_all(self:build_response_head(response, keep_alive, length), self.request_timeout) then
    return false
  end
  if has_body(request, response) then
    for _, piece in ipairs(response.body_pieces) do
      if not conn:send_all(piece, self.request_timeout) then
        return false
      end
    end
  end
  return keep_alive
end

-- Sends data, one byte every `trickle` seconds when trickle is set.
-- Returns true, or nil and the socket error.
function Server:send_body(conn, data, trickle)
  if not trickle then
    return conn:send_all(data, self.request_timeout)
  end
  for i = 1, #data do
    if i > 1 then
      conn:sleep(trickle)
    end
    local ok, err = conn:send_all(data:sub(i, i), self.request_timeout)
    if not ok then
      return nil, err
    end
  end
  return true
end

-- Sends the body of a `stream` script entry: stream.bytes bytes of
-- stream.chunk repeated, built 64 KiB at a time, as chunked transfer coding
-- when stream.chunked is set. Returns true, or nil and the socket error.
function Server:send_stream(conn, stream, trickle)
  local chunk = stream.chunk
  -- A block holds whole copies of chunk, so consecutive blocks continue the pattern.
  local block = chunk:rep(math.max(1, math.ceil(RECEIVE_SIZE / #chunk)))
  local left = stream.bytes
  while left > 0 do
    local piece = left < #block and block:sub(1, left) or block
    left = left - #piece
    if stream.chunked then
      piece = string.format("%x\r\n%s\r\n", #piece, piece)
    end
    local ok, err = self:send_body(conn, piece, trickle)
    if not ok then
      return nil, err
    end
  end
  if stream.chunked then
    return conn:send_all("0\r\n\r\n", self.request_timeout)
  end
  return true
end

-- Sends the response of a script entry with its faults: raw text in place of
-- a built response, a stall between head and body, a trickled or streamed
-- body, and a close afterwards. `response` is nil for a raw entry.
-- Returns whether the connection stays open.
function Server:send_scripted(conn, request, response, entry)
  local head, body, keep_alive
  if entry.raw then
    keep_alive = request.keep_alive and not entry.close and not self.stop_reason
    local _, head_end = entry.raw:find("\r\n\r\n", 1, true)
    head_end = head_end or #entry.raw
    head, body = entry.raw:sub(1, head_end), entry.raw:sub(head_end + 1)
  else
    response.close = response.close or entry.close
    keep_alive = self:keeps_alive(request, response)
    if entry.stream then
      head = self:build_response_head(response, keep_alive, entry.stream.chunked and "chunked" or entry.stream.bytes)
    else
      body = response.body or (response.body_pieces and table.concat(response.body_pieces)) or ""
      head = self:build_response_head(response, keep_alive, #body)
    end
    if not has_body(request, response) then
      body = ""
    end
  end
  if not conn:send_all(head, self.request_timeout) then
    return false
  end
  conn:sleep(entry.stall)
  local ok
  if body then
    ok = self:send_body(conn, body, entry.trickle)
  else
    ok = self:send_stream(conn, entry.stream, entry.trickle)
  end
  return ok and keep_alive or false
end

-- Returns the request path for a log line, without the query because it
-- may contain a file URL signature. Server:log redacts the API key.
function Server.loggable_path(_, request)
  local path = request.path
  if request.query ~= "" then
    path = path .. "?..."
  end
  return path
end

function Server:log_request(request, status, started, note)
  if not self.log_function then
    return
  end
  local line = string.format("%s %s %s %.1fms", request.method, self:loggable_path(request),
    status and string.format("%d", status) or "-", (socket.gettime() - started) * 1000)
  if note then
    line = line .. " (" .. note .. ")"
  end
  self:log(line, "request")
end

-- Reads one request and sends its response. Returns whether the connection stays open.
function Server:serve_request(conn)
  -- Empty lines before a request line are allowed by RFC 9112.
  local head, err = conn:read_until("\r?\n\r?\n", MAX_HEAD_BYTES, self.keepalive_timeout)
  while head == "" do
    head, err = conn:read_until("\r?\n\r?\n", MAX_HEAD_BYTES, self.keepalive_timeout)
  end
  if not head then
    if err == "too_large" then
      self:send_response(conn, nil, error_response(431, "HEADERS_TOO_LARGE",
        string.format("request head is larger than %d bytes", MAX_HEAD_BYTES)))
    end
    return false
  end
  head = head:gsub("^[\r\n]+", "")
  local started = socket.gettime()
  self.last_activity = started

  local request, status, message = parse_request_head(head)
  if not request then
    self:log(string.format("rejected a request: %s", message), "error")
    self:send_response(conn, nil, error_response(status, PROTOCOL_ERROR_CODES[status] or "BAD_REQUEST", message))
    return false
  end
  local is_control = request.path == "/_mock" or request.path:sub(1, 7) == "/_mock/"
  -- The signed links of uploads and exports stand for the real server's
  -- storage URLs, so requests to them are logged and scriptable like API
  -- requests, though they need no key.
  request.is_download = is_control and (request.path:find("^/_mock/files/") ~= nil
    or request.path:find("^/_mock/exports/") ~= nil)
  local logged = not is_control or request.is_download
  local entry
  if logged then
    entry = self:take_script_entry(request)
  end

  local body, framing_error
  if entry and entry.read_rate then
    conn:limit_read_rate(entry.read_rate)
  end
  body, status, framing_error = self:read_body(conn, request)
  conn:limit_read_rate(nil)
  if not body and not status then
    return false
  end
  request.body = body or ""
  local record
  if logged then
    record = self:record_request(request)
    record.connection = conn.number
    record.received_at = started
    if framing_error then
      record.error = framing_error
    end
  end
  if not body then
    if status == 413 and request.path == "/api/public/files" then
      framing_error = framing_error .. string.format(": upload files of %d bytes and more in chunks through an "
        .. "upload session, POST /api/public/files/session/start", self.max_single_upload)
    end
    local response = error_response(status, PROTOCOL_ERROR_CODES[status] or "BAD_REQUEST", framing_error)
    response.close = true
    if record then
      record.response_status = status
    end
    self:log_request(request, status, started, framing_error)
    self:send_response(conn, request, response)
    return false
  end

  if is_control and not request.is_download then
    return self:answer_control(conn, request, started)
  end
  return self:answer_api(conn, request, record, started, entry)
end

-- Reads the request body, first sending 100 Continue when the client asks
-- for it. Returns the body; or nil, an HTTP status and a message; or nil
-- alone when the connection failed.
function Server:read_body(conn, request)
  local framing, length_or_status, message = body_framing(request, self.max_body)
  if not framing then
    return nil, length_or_status, message
  end
  local expect = request.headers.expect
  if expect then
    if expect:lower() ~= "100-continue" then
      return nil, 417, string.format("Expect %s is not supported: only 100-continue is", quote(expect))
    end
    local expects_body = framing == "chunked" or (framing == "length" and length_or_status > 0)
    if request.version == "1.1" and expects_body and conn.buffer == "" then
      if not conn:send_all("HTTP/1.1 100 Continue\r\n\r\n", self.request_timeout) then
        return nil
      end
    end
  end
  if framing == "none" then
    return ""
  elseif framing == "length" then
    local body = conn:read_exact(length_or_status, self.request_timeout)
    if not body then
      return nil
    end
    return body
  end
  return read_chunked_body(conn, self.max_body, self.request_timeout)
end

function Server:answer_control(conn, request, started)
  local ok, response = pcall(self.handle_control, self, request)
  if not ok then
    self:log("internal error in a control route: " .. tostring(response), "error")
    response = error_response(500, "INTERNAL_ERROR", "internal emulator error: " .. tostring(response))
  end
  self:log_request(request, response.status, started)
  local keep_open = self:send_response(conn, request, response)
  if response.stop_after_send then
    self.stop_reason = response.stop_after_send
    self:log("stopping: shutdown requested", "info")
    return false
  end
  return keep_open
end

function Server:call_api_handler(request, record)
  local handle = request.is_download and self.handle_control or self.handle_api
  local ok, response = pcall(handle, self, request, record)
  if ok then
    return response
  end
  self:log("internal error in an API route: " .. tostring(response), "error")
  return error_response(500, "INTERNAL_ERROR", "internal emulator error: " .. tostring(response))
end

-- Answers an API request or a download from a signed link, with the
-- request's script entry if one matched. Only API replies wait for `delay`.
function Server:answer_api(conn, request, record, started, entry)
  if not request.is_download then
    conn:sleep(self.delay)
  end
  local response
  if entry then
    conn:sleep(entry.delay)
    if entry.drop or entry.reset then
      record.closed = entry.reset and "reset" or "drop"
      local reset_set = conn:close(entry.reset)
      local note = "scripted " .. record.closed
      if entry.reset and not reset_set then
        note = note .. ", but SO_LINGER could not be set, so the close was a normal FIN"
      end
      self:log_request(request, nil, started, note)
      return false
    end
    if entry.raw then
      local raw_status = tonumber(entry.raw:match("^HTTP/%d%.%d (%d%d%d)"))
      record.response_status = raw_status
      self.last_activity = socket.gettime()
      self:log_request(request, raw_status, started, "scripted raw response")
      return self:send_scripted(conn, request, nil, entry)
    end
    if entry.passthrough then
      response = self:call_api_handler(request, record)
    else
      response = { status = entry.status, headers = entry.headers, body = entry.body }
    end
  else
    response = self:call_api_handler(request, record)
  end
  record.response_status = response.status
  self.last_activity = socket.gettime()
  self:log_request(request, response.status, started, entry and "scripted" or nil)
  if entry then
    return self:send_scripted(conn, request, response, entry)
  end
  return self:send_response(conn, request, response)
end

---------------------------------------------------------------------------
-- Request log and scripts
---------------------------------------------------------------------------

function Server:key_matches(key)
  if not key or key == "" then
    return false
  end
  if self.api_key then
    return key == self.api_key
  end
  return true
end

-- Appends a request to the request log. The record contains the decoded JSON
-- body or multipart part summaries, with secret header values replaced by "***".
-- The caller adds `connection`, the number of the TCP connection it came on.
function Server:record_request(request)
  local headers = {}
  for name, value in pairs(request.headers) do
    headers[name] = REDACTED_HEADERS[name] and "***" or value
  end
  local path = request.target
  if request.is_download then
    -- A link's signature is a secret, like the API key.
    path = path:gsub("([?&]signature=)[^&]*", "%1***")
  end
  local record = {
    method = request.method,
    path = path,
    headers = headers,
    key_ok = self:key_matches(request.headers["x-api-key"]),
    body_size = #(request.body or ""),
  }
  local content_type = request.headers["content-type"] or ""
  if content_type:lower():find("^%s*multipart/") then
    local boundary, boundary_error = multipart_boundary(content_type)
    local parts, parse_error
    if boundary then
      parts, parse_error = parse_multipart(request.body, boundary)
    end
    request.parts = parts
    request.multipart_error = boundary_error or parse_error
    if parts then
      record.parts = json_array()
      for i, part in ipairs(parts) do
        record.parts[i] = {
          name = part.name,
          filename = part.filename,
          content_type = part.content_type,
          size = #part.content,
          headers = part.headers,
        }
        -- Short form fields such as fileContext are kept so that tests can check them.
        if not part.filename and #part.content <= MAX_LOGGED_FIELD_BYTES then
          record.parts[i].value = part.content
          if part.name == "chunkNumber" and record.chunkNumber == nil then
            record.chunkNumber = part.content
          end
        end
      end
    else
      record.multipart_error = request.multipart_error
    end
  elseif request.body and request.body ~= "" and #request.body <= MAX_LOGGED_JSON_BYTES then
    local value = json_decode(request.body)
    if value ~= nil then
      record.body = value
    end
  end
  self.request_log[#self.request_log + 1] = record
  return record
end

local function script_matches(script, request)
  if script.method and script.method ~= request.method then
    return false
  end
  if script.path then
    return script.path == request.path
  end
  local ok, found = pcall(string.find, request.path, script.path_pattern)
  return ok and found ~= nil
end

-- Returns the next scripted response entry for the request, if a script
-- matches, and advances that script.
function Server:take_script_entry(request)
  for index, script in ipairs(self.scripts) do
    if script_matches(script, request) then
      local entry = script.responses[script.next_entry]
      script.next_entry = script.next_entry + 1
      if script.next_entry > #script.responses then
        script.next_entry = 1
        if script.repeat_count ~= -1 then
          script.repeat_count = script.repeat_count - 1
          if script.repeat_count <= 0 then
            table.remove(self.scripts, index)
          end
        end
      end
      return entry
    end
  end
  return nil
end

local function is_present(value)
  return value ~= nil and value ~= cjson.null
end

local function is_finite_number(value)
  return type(value) == "number" and value == value and value ~= math.huge and value ~= -math.huge
end

-- Validates the `stream` field of a script entry. Returns {bytes, chunk,
-- chunked}, or nil and a message.
local function validate_stream(stream, where)
  if type(stream) ~= "table" or stream[1] ~= nil then
    return nil, where .. ".stream must be an object {bytes = N, chunk = \"x\", chunked = false}"
  end
  local bytes = stream.bytes
  if not is_integer(bytes) or bytes < 0 or bytes >= 2 ^ 53 then
    return nil, where .. ".stream.bytes must be a whole number of bytes of at least 0"
  end
  local chunk = stream.chunk
  if not is_present(chunk) then
    chunk = "x"
  elseif type(chunk) ~= "string" or chunk == "" then
    return nil, where .. ".stream.chunk must be a non-empty string"
  end
  local chunked = stream.chunked
  if not is_present(chunked) then
    chunked = false
  elseif type(chunked) ~= "boolean" then
    return nil, where .. ".stream.chunked must be true or false"
  end
  return { bytes = bytes, chunk = chunk, chunked = chunked }
end

-- Validates the fields that shape how a script entry's response is sent:
-- the flags, the timings, raw and stream. Copies them into result.
-- Returns true, or nil and a message.
local function validate_delivery(entry, where, result)
  for _, flag in ipairs({ "drop", "reset", "passthrough", "close" }) do
    local value = entry[flag]
    if is_present(value) then
      if type(value) ~= "boolean" then
        return nil, string.format("%s.%s must be true or false", where, flag)
      end
      result[flag] = value
    end
  end
  for _, name in ipairs({ "delay", "stall", "trickle" }) do
    local value = entry[name]
    if is_present(value) then
      if not is_finite_number(value) or value < 0 then
        return nil, string.format("%s.%s must be a number of seconds of at least 0", where, name)
      end
      result[name] = value
    end
  end
  if is_present(entry.read_rate) then
    if not is_finite_number(entry.read_rate) or entry.read_rate <= 0 then
      return nil, where .. ".read_rate must be a number of bytes per second greater than 0"
    end
    result.read_rate = entry.read_rate
  end
  if is_present(entry.raw) then
    if type(entry.raw) ~= "string" then
      return nil, where .. ".raw must be a string of the bytes to send"
    end
    for _, other in ipairs({ "status", "headers", "body", "stream", "passthrough" }) do
      if is_present(entry[other]) then
        return nil, string.format("%s.raw cannot be combined with %s, because raw is the whole response",
          where, other)
      end
    end
    result.raw = entry.raw
  end
  if is_present(entry.stream) then
    for _, other in ipairs({ "body", "passthrough" }) do
      if is_present(entry[other]) then
        return nil, string.format("%s.stream cannot be combined with %s, because stream is the body",
          where, other)
      end
    end
    local stream, err = validate_stream(entry.stream, where)
    if not stream then
      return nil, err
    end
    result.stream = stream
  end
  return true
end

-- Validates the status, headers and body of a script entry and copies them
-- into result. Returns true, or nil and a message.
local function validate_content(entry, where, result)
  local status = entry.status
  if not is_present(status) then
    status = 200
  end
  if not is_integer(status) or status < 200 or status > 599 then
    return nil, string.format("%s.status must be an integer from 200 to 599", where)
  end
  result.status = math.floor(status)
  local headers = {}
  if is_present(entry.headers) then
    if type(entry.headers) ~= "table" then
      return nil, where .. ".headers must be an object of header names to values"
    end
    for name, value in pairs(entry.headers) do
      if type(name) ~= "string" or not name:find("^[!#$%%&'*+.^_`|~%w-]+$") then
        return nil, string.format("%s.headers has an invalid header name %s", where, quote(name))
      end
      if type(value) == "number" then
        value = json_encode_number(value)
      end
      if type(value) ~= "string" or value:find("[\r\n]") then
        return nil, string.format("%s.headers[%s] must be a string without line breaks", where, quote(name))
      end
      headers[name] = value
    end
  end
  local body = entry.body
  if not is_present(body) then
    body = ""
  elseif type(body) == "table" then
    body = json_encode(body)
  elseif type(body) ~= "string" then
    return nil, where .. ".body must be a string or a JSON value to encode"
  end
  local has_content_type = false
  for name in pairs(headers) do
    if name:lower() == "content-type" then
      has_content_type = true
    end
  end
  if (body ~= "" or result.stream) and not has_content_type then
    headers["Content-Type"] = "application/json"
  end
  result.headers = headers
  result.body = body
  return true
end

-- Validates one entry of a script's responses and returns it in its stored
-- form, or nil and a message naming the field.
local function validate_script_entry(entry, index)
  local where = string.format("responses[%d]", index)
  if type(entry) ~= "table" then
    return nil, where .. " must be an object"
  end
  local result = {}
  local ok, err = validate_delivery(entry, where, result)
  if not ok then
    return nil, err
  end
  ok, err = validate_content(entry, where, result)
  if not ok then
    return nil, err
  end
  return result
end

-- Validates a script object from POST /_mock/script and returns the script
-- in its stored form, or nil and a message.
local function validate_script(value)
  if type(value) ~= "table" or value[1] ~= nil then
    return nil, "the script must be a JSON object"
  end
  local script = {}
  if value.method ~= nil and value.method ~= cjson.null then
    if type(value.method) ~= "string" or value.method == "" then
      return nil, "method must be a non-empty string such as \"GET\""
    end
    script.method = value.method:upper()
  end
  local path, pattern = value.path, value.path_pattern
  if path ~= nil and path ~= cjson.null then
    if type(path) ~= "string" or path:sub(1, 1) ~= "/" then
      return nil, "path must be a raw request path starting with /, without a query"
    end
    script.path = path
  elseif pattern ~= nil and pattern ~= cjson.null then
    if type(pattern) ~= "string" or pattern == "" then
      return nil, "path_pattern must be a non-empty Lua pattern"
    end
    local ok, err = pcall(string.find, "/", pattern)
    if not ok then
      return nil, string.format("path_pattern %s is not a valid Lua pattern: %s",
        quote(pattern), tostring(err))
    end
    script.path_pattern = pattern
  else
    return nil, "give either path or path_pattern"
  end
  local responses = value.responses
  if type(responses) ~= "table" or responses[1] == nil then
    return nil, "responses must be a non-empty array of response objects"
  end
  script.responses = {}
  for i, entry in ipairs(responses) do
    local result, err = validate_script_entry(entry, i)
    if not result then
      return nil, err
    end
    script.responses[i] = result
  end
  local repeat_count = value["repeat"]
  if repeat_count == nil or repeat_count == cjson.null then
    repeat_count = 1
  end
  if not is_integer(repeat_count) or (repeat_count < 1 and repeat_count ~= -1) then
    return nil, "repeat must be a whole number of at least 1, or -1 to repeat until POST /_mock/reset"
  end
  script.repeat_count = math.floor(repeat_count)
  script.next_entry = 1
  return script
end

---------------------------------------------------------------------------
-- Routing
---------------------------------------------------------------------------

-- Marks a path segment that matches any value and becomes a route parameter.
local PARAM = {}

-- A route's handler is the Server method of that name. The handlers of
-- export, deploy and undeploy are in kore_workflow.mock_workflows, those of
-- upload sessions in kore_workflow.mock_sessions and those of models in
-- kore_workflow.mock_models. The first route that matches a path wins.
local API_ROUTES = {
  { segments = { "api", "public", "files" }, methods = { POST = "upload_file" } },
  { segments = { "api", "public", "files", "session", "start" }, methods = { POST = "start_upload_session" } },
  { segments = { "api", "public", "files", "session", PARAM }, methods = { POST = "upload_chunk" } },
  { segments = { "api", "public", "files", "session", PARAM, "complete" },
    methods = { POST = "complete_upload_session" } },
  { segments = { "api", "public", "workflows", "import" }, methods = { POST = "import_new_workflow" } },
  { segments = { "api", "public", "workflows", PARAM, "import" }, methods = { POST = "import_workflow" } },
  { segments = { "api", "public", "workflows", PARAM, "export" }, methods = { POST = "export_workflow" } },
  { segments = { "api", "public", "workflow", PARAM, "export" }, methods = { POST = "export_workflow" } },
  { segments = { "api", "public", "workflows", PARAM, "deploy" }, methods = { POST = "deploy_workflow" } },
  { segments = { "api", "public", "workflows", PARAM, "undeploy" }, methods = { POST = "undeploy_workflow" } },
  { segments = { "api", "public", "workflow", PARAM, "undeploy" }, methods = { POST = "undeploy_workflow" } },
  { segments = { "api", "public", "models", PARAM, "export" }, methods = { POST = "export_model" } },
  { segments = { "api", "public", "models", PARAM, "deploy" }, methods = { POST = "deploy_model" } },
  { segments = { "api", "public", "models", PARAM, "undeploy" }, methods = { POST = "undeploy_model" } },
  { segments = { "api", "public", "dock-status", PARAM }, methods = { GET = "get_dock_status" } },
}

local CONTROL_ROUTES = {
  { segments = { "_mock", "requests" }, methods = { GET = "control_requests" } },
  { segments = { "_mock", "reset" }, methods = { POST = "control_reset" } },
  { segments = { "_mock", "script" }, methods = { POST = "control_script" } },
  { segments = { "_mock", "workflows" }, methods = { POST = "control_seed_workflow" } },
  { segments = { "_mock", "workflows", PARAM }, methods = { GET = "control_workflow" } },
  { segments = { "_mock", "models" }, methods = { POST = "control_seed_model" } },
  { segments = { "_mock", "models", PARAM }, methods = { GET = "control_model" } },
  { segments = { "_mock", "files", PARAM }, methods = { GET = "control_file" } },
  { segments = { "_mock", "exports", PARAM }, methods = { GET = "control_export" } },
  { segments = { "_mock", "shutdown" }, methods = { POST = "control_shutdown" } },
}

local function match_route(routes, segments)
  for _, route in ipairs(routes) do
    if #route.segments == #segments then
      local params = {}
      local matched = true
      for i, expected in ipairs(route.segments) do
        if expected == PARAM then
          params[#params + 1] = segments[i]
        elseif expected ~= segments[i] then
          matched = false
          break
        end
      end
      if matched then
        return route, params
      end
    end
  end
  return nil
end

-- Finds the route and handler method name for a request, or returns an
-- error response for an invalid path, unknown route or wrong method.
local function route_request(routes, request)
  local segments, err = split_path(request.path)
  if not segments then
    return nil, nil, bad_request(err)
  end
  local route, params = match_route(routes, segments)
  if not route then
    return nil, nil, not_found(string.format("no route for %s %s", request.method, quote(request.path)))
  end
  local handler = route.methods[request.method]
  if not handler then
    local allowed = {}
    for method in pairs(route.methods) do
      allowed[#allowed + 1] = method
    end
    table.sort(allowed)
    local allow = table.concat(allowed, ", ")
    return nil, nil, error_response(405, "METHOD_NOT_ALLOWED",
      string.format("method %s is not allowed on %s: use %s", request.method, quote(request.path), allow),
      { Allow = allow })
  end
  return handler, params
end

function Server:handle_api(request, record)
  if not record.key_ok then
    if not request.headers["x-api-key"] then
      return error_response(401, "UNAUTHORIZED",
        "missing x-api-key header: send the API key in the x-api-key header")
    end
    return error_response(401, "UNAUTHORIZED", "invalid API key in the x-api-key header")
  end
  local handler, params, failure = route_request(API_ROUTES, request)
  if not handler then
    return failure
  end
  return self[handler](self, request, params, record)
end

function Server:handle_control(request)
  local handler, params, failure = route_request(CONTROL_ROUTES, request)
  if not handler then
    return failure
  end
  return self[handler](self, request, params)
end

---------------------------------------------------------------------------
-- API handlers
---------------------------------------------------------------------------

-- Decodes a request body that must be a JSON object. Returns the table, or
-- nil and an error response.
local function json_object_body(request)
  local body = request.body
  if body:find("^%s*$") then
    return nil, bad_request("the request body is empty: send a JSON object")
  end
  local value, err = json_decode(body)
  if value == nil then
    return nil, bad_request("the request body is not valid JSON: " .. err)
  end
  if type(value) ~= "table" or not body:find("^%s*{") then
    return nil, bad_request("the request body must be a JSON object")
  end
  return value
end

function Server:new_file_id()
  while true do
    local id = to_hex(random_bytes(12))
    if not self.files[id] then
      return id
    end
  end
end

-- Stores an uploaded file and returns its record, whose url is the signed
-- link that GET /_mock/files/ID serves.
function Server:store_file(content, filename, content_type, context)
  local id = self:new_file_id()
  local signature = to_hex(random_bytes(16))
  local expires = math.floor(os.time() + self.file_url_ttl)
  local file = {
    id = id,
    content = content,
    filename = filename,
    content_type = content_type,
    context = context,
    signature = signature,
    expires = expires,
  }
  file.url = string.format("%s/_mock/files/%s?expires=%d&signature=%s", self:url(), id, expires, signature)
  self.files[id] = file
  return file
end

function Server:upload_file(request, _, record)
  if not request.parts then
    local message = request.multipart_error
    if not message then
      local _, err = multipart_boundary(request.headers["content-type"])
      message = err
    end
    return bad_request(message)
  end
  local file_part, file_index, context_part
  for i, part in ipairs(request.parts) do
    if part.name == "file" and not file_part then
      file_part, file_index = part, i
    elseif part.name == "fileContext" and not context_part then
      context_part = part
    end
  end
  if not file_part then
    return bad_request(
      "missing multipart field \"file\": send the file content in a part named file, with a filename")
  end
  if #file_part.content >= self.max_single_upload then
    return error_response(413, "PAYLOAD_TOO_LARGE", string.format(
      "file %s of %d bytes is too large for POST /api/public/files, which takes files under %d bytes: "
        .. "upload it in chunks through an upload session, POST /api/public/files/session/start",
      quote(file_part.filename or ""), #file_part.content, self.max_single_upload))
  end
  if not file_part.filename then
    return bad_request("multipart field \"file\" has no filename in its Content-Disposition header")
  end
  if not context_part then
    return bad_request("missing multipart field \"fileContext\": send it with a value such as bulkImport")
  end
  if context_part.content == "" then
    return bad_request("multipart field \"fileContext\" is empty: send a value such as bulkImport")
  end
  local file = self:store_file(file_part.content, file_part.filename, file_part.content_type, context_part.content)
  record.parts[file_index].file_id = file.id
  return json_response(200, { url = file.url, fileId = file.id })
end

-- Looks up the uploaded file named by a field of an import body. Returns
-- the file (nil for an absent optional field), or nil and an error response.
function Server:file_for_field(body, field, required)
  local value = body[field]
  if value == nil or value == cjson.null then
    if required then
      return nil, bad_request(string.format(
        "missing field %s: give the fileId returned by POST /api/public/files", field))
    end
    return nil
  end
  if type(value) ~= "string" then
    return nil, bad_request(string.format("field %s must be a string file id, got %s %s", field,
      type(value) == "table" and "a JSON array or object" or ("the " .. type(value)), json_encode(value)))
  end
  local file = self.files[value]
  if not file then
    return nil, bad_request(string.format("file id %s given in %s was not found: upload the file first",
      quote(value), field))
  end
  return file
end

---------------------------------------------------------------------------
-- Jobs
---------------------------------------------------------------------------

-- Registers a job and returns it. The caller gives job_type ("WORKFLOWS"
-- or "MODELS"), action, the workflow or model, and finish(server, job),
-- which sets status to SUCCESS or FAILED (with a message) and applies the
-- job's effect. The job stays IN_PROGRESS for `polls` dock-status polls
-- unless the caller ends it at once with Server:finish_job.
function Server:start_job(job)
  job.id = "ds-" .. new_uuid()
  job.status = "IN_PROGRESS"
  job.polls_total = self.polls
  job.polls_left = self.polls
  job.polls_seen = 0
  self.jobs[job.id] = job
  return job
end

function Server:finish_job(job)
  job.finish(self, job)
end

-- Returns a model job's progress: 0 when it starts, rising with each
-- IN_PROGRESS poll, and 100 once it succeeds.
local function percentage_complete(job)
  if job.status == "SUCCESS" then
    return 100
  end
  return math.floor(100 * job.polls_seen / (job.polls_total + 1))
end

-- Returns the JSON record of a job, with its id under id_key: id_field in
-- the reply that starts a job, "_id" in dock statuses.
function Server:job_record(job, id_key)
  local record = {
    jobType = job.job_type,
    action = job.action,
    status = job.status,
    message = job.message,
  }
  record[id_key] = job.id
  if job.model then
    record.modelId = job.model.id
    record.percentageComplete = percentage_complete(job)
  else
    record.workflowId = job.workflow.id
  end
  local export = job.export
  if export then
    record.exportJobId = export.id
    if job.status == "SUCCESS" then
      if self.export_url_field == "downloadURL" then
        record.downloadURL = export.url
      else
        record.response = { downloadUrl = export.url }
      end
    end
  end
  return record
end

-- Returns the reply that starts a job.
function Server:job_response(job)
  return json_response(200, self:job_record(job, self.id_field))
end

-- Registers the zip of an export job. entries is a list of {name, data,
-- crc (optional)} for kore_workflow.mock_zip, file_name the name that the
-- download offers. The download link exists once publish_export has run.
function Server:new_export(kind, file_name, entries)
  local export = { id = kind .. "-ej-" .. new_uuid(), file_name = file_name, entries = entries }
  self.exports[export.id] = export
  return export
end

-- Signs an export's download link; called when its job succeeds. The zip's
-- entries carry this moment as their modification time.
function Server:publish_export(export)
  export.time = os.time()
  export.signature = to_hex(random_bytes(16))
  export.expires = math.floor(export.time + self.file_url_ttl)
  export.url = string.format("%s/_mock/exports/%s.zip?expires=%d&signature=%s", self:url(), export.id,
    export.expires, export.signature)
end

-- Makes a workflow's current version from a table of definitions
-- {workflowData, flowData, envVariables, file_ids}, keeping count of the
-- versions it replaces.
local function replace_current_version(workflow, current)
  if workflow.current then
    workflow.history = workflow.history + 1
  end
  workflow.current = current
end

-- Adds a workflow, or gives an existing one new definitions. Returns the
-- workflow and whether it was created. A workflow seeded without a name
-- is named after its id.
function Server:seed_workflow(id, name, definitions)
  local workflow = self.workflows[id]
  local created = workflow == nil
  if created then
    workflow = { id = id, name = name or id, history = 0, deployed = false }
    self.workflows[id] = workflow
  end
  if definitions then
    replace_current_version(workflow, {
      workflowData = definitions.workflowData,
      flowData = definitions.flowData,
      envVariables = definitions.envVariables,
      file_ids = {},
    })
  end
  return workflow, created
end

-- Returns the workflow that has the name, if any.
function Server:workflow_named(name)
  for _, workflow in pairs(self.workflows) do
    if workflow.name == name then
      return workflow
    end
  end
  return nil
end

---------------------------------------------------------------------------
-- Imports
---------------------------------------------------------------------------

-- Ends an import job: FAILED when one of its files is not valid JSON,
-- otherwise SUCCESS with the files stored as the workflow's current version.
local function finish_import(_, job)
  for _, field in ipairs(IMPORT_FIELDS) do
    local file = job.files[field]
    if file then
      local value, err = json_decode(file.content)
      if value == nil then
        job.status = "FAILED"
        job.message = string.format("file %s (%s) given as %s is not valid JSON: %s",
          file.id, quote(file.filename or ""), field, err)
        return
      end
    end
  end
  local current = { file_ids = {} }
  for _, field in ipairs(IMPORT_FIELDS) do
    local file = job.files[field]
    if file then
      current[DEFINITION_NAMES[field]] = file.content
      current.file_ids[field] = file.id
    end
  end
  replace_current_version(job.workflow, current)
  job.status = "SUCCESS"
end

function Server:start_import_job(workflow, files)
  local job = self:start_job({
    job_type = "WORKFLOWS",
    action = "IMPORT",
    workflow = workflow,
    files = files,
    finish = finish_import,
  })
  return self:job_response(job)
end

function Server:import_workflow(request, params)
  local workflow_id = params[1]
  local workflow = self.workflows[workflow_id]
  if not workflow then
    return not_found(string.format("workflow %s not found", quote(workflow_id)))
  end
  local body, failure = json_object_body(request)
  if not body then
    return failure
  end
  local files = {}
  for _, field in ipairs(IMPORT_FIELDS) do
    local file, err = self:file_for_field(body, field, true)
    if not file then
      return err
    end
    files[field] = file
  end
  return self:start_import_job(workflow, files)
end

function Server:import_new_workflow(request)
  local body, failure = json_object_body(request)
  if not body then
    return failure
  end
  local name = body.workflowName
  if name == nil or name == cjson.null then
    return bad_request("missing field workflowName: give a name that no other workflow has")
  end
  if type(name) ~= "string" or trim(name) == "" then
    return bad_request("field workflowName must be a non-empty string")
  end
  local taken = self:workflow_named(name)
  if taken then
    return error_response(409, "CONFLICT", string.format("a workflow named %s already exists (%s)",
      quote(name), taken.id))
  end
  local files = {}
  for _, field in ipairs(IMPORT_FIELDS) do
    local file, err = self:file_for_field(body, field, field ~= "envVariablesFileId")
    if err then
      return err
    end
    files[field] = file
  end
  -- The workflow exists from this request on, so that its name is taken at
  -- once; its definitions are stored only when the job succeeds.
  local workflow = { id = "a-" .. new_uuid(), name = name, history = 0, deployed = false }
  self.workflows[workflow.id] = workflow
  return self:start_import_job(workflow, files)
end

function Server:get_dock_status(_, params)
  local job = self.jobs[params[1]]
  if not job then
    return not_found(string.format("dock status %s not found", quote(params[1])))
  end
  if job.status == "IN_PROGRESS" then
    if job.polls_left > 0 then
      job.polls_left = job.polls_left - 1
      job.polls_seen = job.polls_seen + 1
    else
      self:finish_job(job)
    end
  end
  return json_response(200, self:job_record(job, "_id"))
end

---------------------------------------------------------------------------
-- Control handlers
---------------------------------------------------------------------------

function Server:control_requests()
  local records = json_array()
  for i, record in ipairs(self.request_log) do
    records[i] = record
  end
  return json_response(200, records)
end

function Server:control_reset()
  local cleared_requests = #self.request_log
  local cleared_scripts = #self.scripts
  self.request_log = {}
  self.scripts = {}
  return json_response(200, { cleared_requests = cleared_requests, cleared_scripts = cleared_scripts })
end

function Server:control_script(request)
  local value, err = json_decode(request.body)
  if value == nil then
    return bad_request("the script is not valid JSON: " .. tostring(err))
  end
  local script, message = validate_script(value)
  if not script then
    return bad_request(message)
  end
  script.id = self.next_script_id
  self.next_script_id = self.next_script_id + 1
  self.scripts[#self.scripts + 1] = script
  return json_response(200, {
    id = script.id,
    responses = #script.responses,
    ["repeat"] = script.repeat_count,
  })
end

function Server:control_seed_workflow(request)
  local body, failure = json_object_body(request)
  if not body then
    return failure
  end
  local id = body.id
  if type(id) ~= "string" or id == "" then
    return bad_request("field id must be a non-empty workflow id string")
  end
  local name = body.name
  if is_present(name) and (type(name) ~= "string" or name == "") then
    return bad_request("field name must be a non-empty string")
  end
  local definitions
  if is_present(body.definitions) then
    local err
    definitions, err = mock_workflows.validate_definitions(body.definitions)
    if not definitions then
      return bad_request(err)
    end
  end
  if not self.workflows[id] and is_present(name) then
    local taken = self:workflow_named(name)
    if taken then
      return error_response(409, "CONFLICT", string.format("a workflow named %s already exists (%s)",
        quote(name), taken.id))
    end
  end
  local _, created = self:seed_workflow(id, is_present(name) and name or nil, definitions)
  return json_response(created and 201 or 200, { id = id, created = created })
end

function Server:control_workflow(_, params)
  local workflow = self.workflows[params[1]]
  if not workflow then
    return not_found(string.format("workflow %s not found", quote(params[1])))
  end
  local current = workflow.current or {}
  return json_response(200, {
    id = workflow.id,
    name = workflow.name,
    deployed = workflow.deployed,
    imported = workflow.current ~= nil,
    workflowData = current.workflowData,
    flowData = current.flowData,
    envVariables = current.envVariables,
    fileIds = current.file_ids,
    history = workflow.history,
  })
end

-- Returns nil when a signed link's query matches the signature and expiry
-- of item, or a 403 response naming what is wrong.
local function check_signed_query(query_text, item, what)
  local query = parse_query(query_text or "")
  if query.signature ~= item.signature then
    return error_response(403, "FORBIDDEN",
      string.format("missing or invalid signature: use the url returned by %s", what))
  end
  if tonumber(query.expires) ~= item.expires or os.time() > item.expires then
    return error_response(403, "FORBIDDEN",
      "the signed URL has expired or its expires value was changed")
  end
  return nil
end

function Server:control_file(request, params)
  local file = self.files[params[1]]
  if not file then
    return not_found(string.format("file %s not found", quote(params[1])))
  end
  local forbidden = check_signed_query(request.query, file, "the upload")
  if forbidden then
    return forbidden
  end
  local disposition = nil
  if file.filename then
    disposition = "attachment; filename=" .. quote((file.filename:gsub("[\r\n]", "")))
  end
  return {
    status = 200,
    body = file.content,
    content_type = file.content_type or "application/octet-stream",
    headers = { ["Content-Disposition"] = disposition },
  }
end

-- Returns a Content-Disposition value that offers file_name: a plain
-- filename parameter with other characters than letters, digits and
-- " -._" replaced by "_", and the exact name percent-encoded as UTF-8 in
-- filename* (RFC 6266).
local function attachment_disposition(file_name)
  local plain = file_name:gsub("[^%w%-%._ ]", "_")
  local encoded = file_name:gsub("[^%w%-%._~]", function(c)
    return string.format("%%%02X", c:byte())
  end)
  return string.format("attachment; filename=\"%s\"; filename*=UTF-8''%s", plain, encoded)
end

function Server:control_export(request, params)
  local export_id = params[1]:match("^(.+)%.zip$")
  local export = export_id and self.exports[export_id]
  if not export then
    return not_found(string.format("export %s not found: the link names an export job id and ends in .zip",
      quote(params[1])))
  end
  if not export.url then
    return not_found(string.format("export %s has not finished: poll its dock status until SUCCESS",
      quote(export_id)))
  end
  local forbidden = check_signed_query(request.query, export, "the export's dock status")
  if forbidden then
    return forbidden
  end
  return {
    status = 200,
    body_pieces = (mock_zip.archive(export.entries, export.time)),
    content_type = "application/zip",
    headers = { ["Content-Disposition"] = attachment_disposition(export.file_name) },
  }
end

function Server.control_shutdown(_)
  local response = json_response(200, { stopping = true })
  response.close = true
  response.stop_after_send = "shutdown"
  return response
end

---------------------------------------------------------------------------
-- Handlers in other modules
---------------------------------------------------------------------------

-- The helpers that the handler modules share with this file.
local helpers = {
  json_response = json_response,
  error_response = error_response,
  bad_request = bad_request,
  not_found = not_found,
  quote = quote,
  json_object_body = json_object_body,
  json_encode = json_encode,
  new_uuid = new_uuid,
  is_integer = is_integer,
  is_present = is_present,
  parse_query = parse_query,
  multipart_boundary = multipart_boundary,
  crc32 = mock_zip.crc32,
  crc32_combine = mock_zip.crc32_combine,
}

mock_workflows.install(Server, helpers)
mock_sessions.install(Server, helpers)
mock_models.install(Server, helpers)

mock.DEFAULT_WORKFLOW_ID = DEFAULT_WORKFLOW_ID
mock.Server = Server

return mock
