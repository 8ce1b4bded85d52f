-- Chunked upload sessions in the API emulator kore_workflow.mock: start a
-- session, upload its chunks in any order, and complete it into a stored
-- file or, for fileContext "model", a model import job.
-- install() adds the route handlers to the emulator's Server class.

local socket = require("socket")

local mock_sessions = {}

-- The largest fileSize a session takes: an exported model file must fit a
-- zip without ZIP64, and the emulator keeps every file in memory anyway.
local MAX_FILE_SIZE = 0xFFFFFFFE

-- How many missing chunk numbers an error message lists before it counts the rest.
local MAX_LISTED_CHUNKS = 20

local MODEL_CONTEXT = "model"

-- Formats a Unix time with a fraction as ISO 8601 in UTC with milliseconds.
local function iso8601(time)
  local seconds = math.floor(time)
  local millis = math.floor((time - seconds) * 1000)
  return os.date("!%Y-%m-%dT%H:%M:%S", seconds) .. string.format(".%03dZ", millis)
end

-- Returns "0, 2 and 5", listing at most MAX_LISTED_CHUNKS numbers.
local function list_numbers(numbers)
  local shown = {}
  for i = 1, math.min(#numbers, MAX_LISTED_CHUNKS) do
    shown[i] = string.format("%d", numbers[i])
  end
  local text = table.concat(shown, ", ")
  if #numbers > MAX_LISTED_CHUNKS then
    return string.format("%s and %d more", text, #numbers - MAX_LISTED_CHUNKS)
  end
  if #shown > 1 then
    return table.concat(shown, ", ", 1, #shown - 1) .. " and " .. shown[#shown]
  end
  return text
end

-- Frees a session's chunks but keeps its record, so that later requests
-- learn why it is gone.
local function close_session(session, reason)
  session.chunks = nil
  session.chunk_crcs = nil
  session.closed = reason
end

-- Adds the handlers of upload sessions to the Server class. helpers contains
-- the response and JSON functions of kore_workflow.mock.
function mock_sessions.install(Server, helpers)
  local bad_request = helpers.bad_request
  local not_found = helpers.not_found
  local quote = helpers.quote
  local json_encode = helpers.json_encode
  local is_integer = helpers.is_integer
  local is_present = helpers.is_present

  -- Returns a 400 response for a missing or invalid field of the start body.
  local function field_error(body, field, expected)
    if not is_present(body[field]) then
      return bad_request(string.format("missing field %s: give %s", field, expected))
    end
    return bad_request(string.format("field %s must be %s, got %s", field, expected, json_encode(body[field])))
  end

  local function is_text(value)
    return type(value) == "string" and value:find("%S") ~= nil
  end

  -- Validates the body of POST /api/public/files/session/start. Returns
  -- the body, or nil and a 400 response naming the field.
  local function validate_start(body)
    if not is_text(body.fileContext) then
      return nil, field_error(body, "fileContext", "a non-empty string such as bulkImport or model")
    end
    local total = body.totalChunks
    if not is_integer(total) or total < 1 or total >= 2 ^ 31 then
      return nil, field_error(body, "totalChunks", "a whole number of chunks of at least 1")
    end
    local extension = body.fileExtension
    if not is_text(extension) or extension:sub(1, 1) == "." then
      return nil, field_error(body, "fileExtension", "the file name extension without the dot, such as zip")
    end
    if not is_text(body.fileName) then
      return nil, field_error(body, "fileName", "the name of the file as a non-empty string")
    end
    local size = body.fileSize
    if not is_integer(size) or size < 1 or size > MAX_FILE_SIZE then
      return nil, field_error(body, "fileSize",
        string.format("the file's size as a whole number of bytes from 1 to %d", MAX_FILE_SIZE))
    end
    return body
  end

  function Server:start_upload_session(request)
    local body, failure = helpers.json_object_body(request)
    if not body then
      return failure
    end
    body, failure = validate_start(body)
    if not body then
      return failure
    end
    local now = socket.gettime()
    self:close_expired_sessions(now)
    local session = {
      id = helpers.new_uuid(),
      context = body.fileContext,
      total_chunks = math.floor(body.totalChunks),
      extension = body.fileExtension,
      file_name = body.fileName,
      file_size = math.floor(body.fileSize),
      expires_at = now + self.session_ttl,
      chunks = {},
    }
    local reply = { sessionId = session.id, expirationDate = iso8601(session.expires_at) }
    if session.context == MODEL_CONTEXT then
      session.model_id = "cm-" .. helpers.new_uuid()
      session.chunk_crcs = {}
      reply.modelId = session.model_id
    end
    self.sessions[session.id] = session
    return helpers.json_response(200, reply)
  end

  -- Frees the chunks of every session that has expired by now.
  function Server:close_expired_sessions(now)
    for _, session in pairs(self.sessions) do
      if not session.closed and now >= session.expires_at then
        close_session(session, "expired")
      end
    end
  end

  -- Returns the open session named by the first path parameter, or nil
  -- and a 404 response whose message gives the reason: unknown, expired or
  -- completed.
  function Server:open_session(params)
    local id = params[1]
    local session = self.sessions[id]
    if not session then
      return nil, not_found(string.format(
        "upload session %s not found: start one with POST /api/public/files/session/start", quote(id)))
    end
    if not session.closed and socket.gettime() >= session.expires_at then
      close_session(session, "expired")
    end
    if session.closed == "expired" then
      return nil, not_found(string.format("upload session %s expired at %s: start a new session",
        quote(id), iso8601(session.expires_at)))
    elseif session.closed then
      return nil, not_found(string.format("upload session %s was already completed: start a new session",
        quote(id)))
    end
    return session
  end

  -- Finds the file part and the chunk number of a chunk upload. Returns the
  -- part and the number, or nil and a 400 response.
  local function chunk_fields(request, session)
    if not request.parts then
      local message = request.multipart_error
      if not message then
        local _, err = helpers.multipart_boundary(request.headers["content-type"])
        message = err
      end
      return nil, bad_request(message)
    end
    local file_part, number_part
    for _, part in ipairs(request.parts) do
      if part.name == "file" and not file_part then
        file_part = part
      elseif part.name == "chunkNumber" and not number_part then
        number_part = part
      end
    end
    if not file_part then
      return nil, bad_request("missing multipart field \"file\": send the chunk's bytes in a part named file")
    end
    local last = session.total_chunks - 1
    if not number_part then
      return nil, bad_request(string.format(
        "missing multipart field \"chunkNumber\": send the chunk's number, from 0 to %d", last))
    end
    local text = number_part.content:match("^%s*(.-)%s*$")
    if not text:find("^%d+$") then
      return nil, bad_request(string.format("chunkNumber must be a whole number from 0 to %d, got %s",
        last, quote(number_part.content)))
    end
    local number = tonumber(text)
    if number > last then
      return nil, bad_request(string.format(
        "chunkNumber %s is out of range: the session has totalChunks %d, so use 0 to %d", text,
        session.total_chunks, last))
    end
    return file_part, number
  end

  function Server:upload_chunk(request, params)
    local session, failure = self:open_session(params)
    if not session then
      return failure
    end
    local file_part, number = chunk_fields(request, session)
    if not file_part then
      return number
    end
    -- A repeated chunk replaces the earlier one.
    session.chunks[number] = file_part.content
    if session.chunk_crcs then
      -- Each chunk's CRC is computed as it arrives, so that complete only
      -- combines the chunks' CRCs and never reads the whole file again.
      session.chunk_crcs[number] = helpers.crc32(file_part.content)
    end
    return helpers.json_response(200, { chunkNumber = string.format("%d", number), sessionId = session.id })
  end

  -- Returns the chunks of a session in order, their total size and the
  -- CRC-32 of the joined file, which only model sessions compute. Returns
  -- nil and a 400 response when a chunk is missing or the size is wrong.
  local function ordered_chunks(session)
    local missing = {}
    local pieces = {}
    local size = 0
    local crc
    for number = 0, session.total_chunks - 1 do
      local chunk = session.chunks[number]
      if chunk then
        pieces[#pieces + 1] = chunk
        size = size + #chunk
        if session.chunk_crcs then
          local chunk_crc = session.chunk_crcs[number]
          crc = crc and helpers.crc32_combine(crc, chunk_crc, #chunk) or chunk_crc
        end
      else
        missing[#missing + 1] = number
      end
    end
    if #missing > 0 then
      return nil, bad_request(string.format(
        "upload session %s is missing %s %s of 0 to %d: upload %s before completing the session",
        quote(session.id), #missing == 1 and "chunk" or "chunks", list_numbers(missing),
        session.total_chunks - 1, #missing == 1 and "it" or "them"))
    end
    if size ~= session.file_size then
      return nil, bad_request(string.format(
        "the chunks of upload session %s hold %d bytes in total, but its fileSize is %d: "
          .. "upload the chunks again with the right content", quote(session.id), size, session.file_size))
    end
    return pieces, size, crc
  end

  function Server:complete_upload_session(_, params)
    local session, failure = self:open_session(params)
    if not session then
      return failure
    end
    local pieces, failure_or_size, crc = ordered_chunks(session)
    if not pieces then
      return failure_or_size
    end
    -- The chunks are joined once, and the session lets go of them at once.
    local content = table.concat(pieces)
    close_session(session, "completed")
    if session.context == MODEL_CONTEXT then
      return self:import_model(session.model_id, session.file_name, content, crc)
    end
    local file = self:store_file(content, session.file_name, nil, session.context)
    return helpers.json_response(200, { url = file.url, fileId = file.id })
  end
end

mock_sessions.iso8601 = iso8601

return mock_sessions
