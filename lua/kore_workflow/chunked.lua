--- Uploads through a chunked upload session, for files of 25 MB and more.
--
-- The session is started with the file's size and chunk count. The C core
-- streams every chunk from disk as a byte range of the file, never a Lua
-- string. A chunk that fails with a retryable error is sent again on its
-- own, and then the session is completed.
local M = {}

--- Files of this many bytes and more go through a session: the single upload
-- accepts files under 25 MB, and 25 MB taken as 25 * 10^6 bytes is the
-- smaller reading of that limit.
M.THRESHOLD = 25 * 1000 * 1000

--- Default chunk size in bytes.
M.CHUNK_SIZE = 5 * 1024 * 1024

--- Attempts per chunk, the first one included.
M.CHUNK_ATTEMPTS = 4

--- Returns the size of the file at path in bytes, or nil and a message.
function M.file_size(path)
  local handle, open_error = io.open(path, "rb")
  if not handle then
    return nil, open_error
  end
  local size, seek_error = handle:seek("end")
  handle:close()
  if not size then
    return nil, seek_error
  end
  return size
end

local function extension_of(name)
  local extension = name:match("%.([%w]+)$")
  return extension and extension:lower() or "bin"
end

local function base_name(path)
  return path:match("([^/]+)$") or path
end

--- Uploads the file at path through a session.
---@param files table the raw calls: session_start, session_chunk, session_complete
---@param path string
---@param size integer the file's size in bytes
---@param options table context, filename, chunk_size, and call options (timeouts)
---@param sleep function(seconds) used between attempts of a chunk
---@param random function() returning a number in [0, 1) for the backoff jitter
---@return table|nil result of the completion (file or job), or nil and an error
function M.upload(files, path, size, options, sleep, random)
  local chunk_size = options.chunk_size or M.CHUNK_SIZE
  local name = options.filename or base_name(path)
  local total = math.max(1, math.ceil(size / chunk_size))
  local call_options = { timeout = options.timeout, connect_timeout = options.connect_timeout,
                         stall_timeout = options.stall_timeout }

  local session, err = files.session_start({
    fileContext = options.context or "bulkImport",
    totalChunks = total,
    fileExtension = extension_of(name),
    fileName = name,
    fileSize = size,
  }, call_options)
  if not session then
    return nil, err
  end

  for number = 0, total - 1 do
    local offset = number * chunk_size
    local chunk = {
      path = path,
      offset = offset,
      length = math.min(chunk_size, size - offset),
      chunk_number = number,
      filename = name,
    }
    local attempt = 1
    while true do
      local sent
      sent, err = files.session_chunk(session.sessionId, chunk, call_options)
      if sent then
        break
      end
      if not err.retryable or attempt >= M.CHUNK_ATTEMPTS then
        err.message = ("%s (chunk %d of %d, attempt %d)"):format(err.message, number + 1,
          total, attempt)
        return nil, err
      end
      if options.on_chunk_retry then
        options.on_chunk_retry(number, attempt, err)
      end
      sleep(random() * math.min(8, 2 ^ (attempt - 1)))
      attempt = attempt + 1
    end
    if options.on_chunk then
      options.on_chunk(number, total)
    end
  end

  local result
  result, err = files.session_complete(session.sessionId, call_options)
  if not result then
    return nil, err
  end
  if result.modelId == nil and session.modelId ~= nil then
    result.modelId = session.modelId
  end
  return result
end

return M
