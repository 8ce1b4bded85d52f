--- kore_workflow: a client for the Kore.ai AI for Process workflow management API.
--
-- The C core (kore_workflow.core) performs every HTTP call; this module adds
-- the client object, the default client configured from the environment,
-- waiting for a job, and importing a workflow's three definition files.
local core = require "kore_workflow.core"
local chunked = require "kore_workflow.chunked"
local scheduler = require "kore_workflow.scheduler"
local waiter = require "kore_workflow.waiter"

local M = {
  _VERSION = core._VERSION,
}

--- Definition files of a UI export, in the order they are uploaded.
-- `field` is the import body field that takes the uploaded file's id.
M.definition_files = {
  { role = "workflow_data", file = "app_definition.json", field = "workflowDataFileId" },
  { role = "flow_data", file = "flow_definition.json", field = "flowDataFileId" },
  { role = "env_variables", file = "env_variables.json", field = "envVariablesFileId" },
}

local function argument_error(position, name, fname, message, level)
  error(("bad argument #%d (%s) to '%s' (%s)"):format(position, name, fname, message),
    (level or 2) + 1)
end

-- Returns a JSON codec { encode, decode, null } of this module's own: vim.json
-- inside Neovim, otherwise a private lua-cjson instance, so the host's cjson
-- settings are neither used nor changed.
local function new_codec()
  local vim_json = type(vim) == "table" and rawget(vim, "json")
  if type(vim_json) == "table" and type(vim_json.decode) == "function" then
    return {
      encode = vim_json.encode,
      decode = function(text)
        return vim_json.decode(text)
      end,
      null = rawget(vim, "NIL"),
    }
  end
  local cjson = require("cjson").new()
  cjson.decode_invalid_numbers(false)
  cjson.encode_invalid_numbers(false)
  cjson.decode_max_depth(200)
  cjson.encode_max_depth(200)
  return { encode = cjson.encode, decode = cjson.decode, null = cjson.null }
end

local Client = {}
Client.__index = Client

-- nginx phases in which a blocking call stalls every request of the worker.
local NGINX_REQUEST_PHASES = {
  set = true, rewrite = true, server_rewrite = true, access = true, content = true,
  header_filter = true, body_filter = true, log = true, timer = true, balancer = true,
  ssl_cert = true, ssl_session_fetch = true, ssl_client_hello = true,
}
local nginx_warned = false

-- Logs once per nginx worker when a blocking call runs inside a request
-- handler, where it stalls every other request of that worker.
local function warn_if_blocking_in_nginx()
  if nginx_warned or type(ngx) ~= "table" or type(ngx.get_phase) ~= "function" then
    return
  end
  local ok, phase = pcall(ngx.get_phase)
  if ok and NGINX_REQUEST_PHASES[phase] then
    nginx_warned = true
    ngx.log(ngx.WARN, "kore_workflow: a blocking call ran in nginx's ", phase,
      " phase and stalled every request of this worker; use the non-blocking form, ",
      "require(\"kore_workflow.openresty\").client{...} or client:nonblocking(adapter)")
  end
end

-- Wraps a blocking C call so that it warns when used inside nginx.
local function blocking(call)
  if type(ngx) ~= "table" then
    return call
  end
  return function(...)
    warn_if_blocking_in_nginx()
    return call(...)
  end
end

function Client:__tostring()
  return tostring(self._handle)
end

local function file_upload_error(path, message)
  return core.new_error {
    kind = "file", id = path, retryable = false,
    message = ("cannot upload file '%s': %s"):format(path, message),
    hint = "check the path and that the file is readable",
  }
end

-- Adds the client's namespaces to fields: every call of the core as given
-- in calls (blocking or stepped), with files.upload choosing the chunked
-- session for large files and models.import uploading a model through it.
local function new_namespaces(calls, sleep, fields)
  local files = calls.files
  local raw_upload = files.upload

  local function upload(path, options)
    if type(path) ~= "string" or path == "" then
      argument_error(1, "path", "files.upload", "non-empty string expected, got " .. type(path))
    end
    if options ~= nil and type(options) ~= "table" then
      argument_error(2, "options", "files.upload", "table expected, got " .. type(options))
    end
    options = options or {}
    local chunk_size = options.chunk_size
    if chunk_size ~= nil and (type(chunk_size) ~= "number" or chunk_size < 1
        or chunk_size ~= math.floor(chunk_size)) then
      argument_error(2, "options", "files.upload", "option 'chunk_size' must be a whole "
        .. "number of bytes above 0")
    end
    local size = chunked.file_size(path)
    local threshold = options.chunk_threshold or chunked.THRESHOLD
    if size == nil or size < threshold then
      local single = {}
      for k, v in pairs(options) do
        if k ~= "chunk_size" and k ~= "chunk_threshold" and k ~= "on_chunk"
            and k ~= "on_chunk_retry" then
          single[k] = v
        end
      end
      return raw_upload(path, single)
    end
    return chunked.upload(files, path, size, options, sleep, core.random)
  end

  local function import_model(path, options)
    if type(path) ~= "string" or path == "" then
      argument_error(1, "path", "models.import", "non-empty string expected, got " .. type(path))
    end
    options = options or {}
    local size, size_error = chunked.file_size(path)
    if not size then
      return nil, file_upload_error(path, size_error)
    end
    local session_options = {}
    for k, v in pairs(options) do
      session_options[k] = v
    end
    session_options.context = "model"
    return chunked.upload(files, path, size, session_options, sleep, core.random)
  end

  for namespace, functions in pairs(calls) do
    fields[namespace] = {}
    for name, call in pairs(functions) do
      fields[namespace][name] = call
    end
  end
  fields.files.upload = upload
  fields.models.import = import_model
  return fields
end

--- Creates a client for one environment.
---@param options table host (base URL), api_key, and optionally ca_file,
--- connect_timeout, timeout, stall_timeout (seconds), max_response (bytes),
--- logger (function(line, level)), verbose (log request and response lines)
--- and insecure (turn TLS verification off; logs a warning)
---@return table client
function M.client(options)
  if type(options) ~= "table" then
    argument_error(1, "options", "kore_workflow.client", "table expected, got " .. type(options))
  end
  local codec = new_codec()
  -- Called through pcall so that an option error points at the caller's line.
  local ok, handle = pcall(core.new_client, options, codec)
  if not ok then
    error(handle, 2)
  end
  local api = core.bind(handle)
  local calls = {}
  for namespace, functions in pairs(api) do
    if namespace ~= "start" then
      calls[namespace] = {}
      for name, call in pairs(functions) do
        calls[namespace][name] = blocking(call)
      end
    end
  end
  return setmetatable(new_namespaces(calls, core.sleep, {
    _api = api,
    _handle = handle,
    _codec = codec,
  }), Client)
end

-- Wraps a start function so that it returns the call's result, stepping the
-- request and sleeping through the adapter between steps. The coroutine is
-- suspended only inside adapter.sleep, never inside a C function. The
-- request goes to adapter.sleep as a second argument, which lets a
-- scheduler end the sleep early on socket activity.
local function stepped(start, adapter)
  return function(...)
    local request, err = start(...)
    if not request then
      return nil, err
    end
    while not request:step() do
      adapter.sleep(request:next_step(), request)
    end
    return request:result()
  end
end

--- Returns the non-blocking form of the client: the same calls, for code
-- running inside a coroutine that the adapter can suspend.
-- adapter.sleep(seconds, request) must suspend the calling coroutine and
-- resume it later (kore_workflow.nvim and kore_workflow.openresty provide one
-- for their hosts). request is set when the sleep waits on a transfer, which
-- may then be resumed early.
---@param adapter table { sleep = function(seconds) }
function Client:nonblocking(adapter)
  if type(adapter) ~= "table" or type(adapter.sleep) ~= "function" then
    argument_error(1, "adapter", "nonblocking", "table with a sleep function expected")
  end
  local calls = {}
  for namespace, functions in pairs(self._api.start) do
    calls[namespace] = {}
    for name, start in pairs(functions) do
      calls[namespace][name] = stepped(start, adapter)
    end
  end
  return setmetatable(new_namespaces(calls, adapter.sleep, {
    _api = self._api,
    _handle = self._handle,
    _codec = self._codec,
    _sleep = adapter.sleep,
  }), Client)
end

--- Blocks for up to seconds until a socket of the client's non-blocking
-- requests is ready, and returns true if one is. For the idle wait of a
-- plain Lua scheduler (the poll option of kore_workflow.scheduler.new); a
-- host with its own event loop must not call it.
---@param seconds number
---@return boolean
function Client:poll(seconds)
  if type(seconds) ~= "number" then
    argument_error(1, "seconds", "poll", "number expected, got " .. type(seconds))
  end
  return core.poll(self._handle, seconds)
end

--- Builds an error table of the module, with the client's key redacted.
function Client:new_error(fields)
  return core.new_error(fields, self._handle)
end

local function id_text(id)
  if type(id) == "number" then
    return ("%.0f"):format(id)
  end
  return id
end

--- Polls a dock status until its job ends.
-- Returns the job when it ends SUCCESS, or nil and an error (kind
-- "job_failed" with the job attached, "timeout" at the deadline, or the
-- error of the status call that cannot be retried).
---@param dock_status_id string|integer
---@param options table|nil timeout (seconds, default 900), on_progress(job),
--- request_timeout, interval, max_interval, sleep, clock, random, label
function Client:wait(dock_status_id, options)
  local kind = type(dock_status_id)
  if kind ~= "string" and kind ~= "number" then
    argument_error(1, "dock status id", "wait", "string expected, got " .. kind)
  end
  if options ~= nil and type(options) ~= "table" then
    argument_error(2, "options", "wait", "table expected, got " .. type(options))
  end
  options = options or {}
  local status = self.workflow.status
  return waiter.wait {
    id = id_text(dock_status_id),
    status = function(_, call_options)
      return status(dock_status_id, call_options)
    end,
    new_error = function(fields)
      return core.new_error(fields, self._handle)
    end,
    timeout = options.timeout,
    request_timeout = options.request_timeout,
    interval = options.interval,
    factor = options.factor,
    max_interval = options.max_interval,
    on_progress = options.on_progress,
    sleep = options.sleep or self._sleep or core.sleep,
    clock = options.clock or core.monotonic,
    random = options.random or core.random,
    label = options.label,
  }
end

local function join_path(dir, name)
  if dir:sub(-1) == "/" then
    return dir .. name
  end
  return dir .. "/" .. name
end

-- Returns the list of { role, file, field, path } for an export directory
-- or a table of paths; raises on arguments of the wrong type.
local function definition_paths(source, fname)
  local paths = {}
  if type(source) == "string" and source:lower():match("%.zip$") then
    for i, def in ipairs(M.definition_files) do
      paths[i] = { role = def.role, file = def.file, field = def.field,
                   path = source .. ":" .. def.file, zip = source }
    end
  elseif type(source) == "string" then
    for i, def in ipairs(M.definition_files) do
      paths[i] = { role = def.role, file = def.file, field = def.field,
                   path = join_path(source, def.file), dir = source }
    end
  elseif type(source) == "table" then
    for i, def in ipairs(M.definition_files) do
      local path = source[def.role]
      if type(path) ~= "string" or path == "" then
        argument_error(2, "files", fname, ("field '%s' must be a file path, got %s")
          :format(def.role, type(path)), 3)
      end
      paths[i] = { role = def.role, file = def.file, field = def.field, path = path }
    end
  else
    argument_error(2, "files", fname, "directory path or table expected, got " .. type(source), 3)
  end
  return paths
end

-- The largest definition file read from an export zip, in bytes.
local MAX_ZIP_ENTRY = 64 * 1024 * 1024

-- Reads the definition files of an export zip into the defs' content fields.
function Client:_read_zip(defs)
  local names = {}
  for _, def in ipairs(defs) do
    names[def.file] = true
  end
  local entries, err = core.zip_read(defs[1].zip, names, MAX_ZIP_ENTRY)
  if not entries then
    return nil, err
  end
  for _, def in ipairs(defs) do
    if entries[def.file] == nil then
      return nil, self:new_error {
        kind = "file", id = def.zip, retryable = false,
        message = ("the export zip '%s' holds no %s"):format(def.zip, def.file),
        hint = "an export zip must contain app_definition.json, flow_definition.json and "
          .. "env_variables.json; export the workflow again",
      }
    end
    def.content = entries[def.file]
  end
  return true
end

-- Reads and parses one definition file; returns true, or nil and an error.
function Client:_check_definition(def)
  if def.content then
    local ok, decode_error = pcall(self._codec.decode, def.content)
    if ok then
      return true
    end
    return nil, self:new_error {
      kind = "file", id = def.zip, retryable = false,
      message = ("the %s file %s in '%s' is not valid JSON (%s)"):format(def.role, def.file,
        def.zip, tostring(decode_error)),
      hint = "export the workflow again; nothing was uploaded",
    }
  end
  local handle, open_error = io.open(def.path, "rb")
  local where = def.dir and ("%s in %s"):format(def.file, def.dir) or ("'%s'"):format(def.path)
  if not handle then
    local hint = def.dir
      and "an export directory must contain app_definition.json, flow_definition.json and env_variables.json"
      or "check the path"
    return nil, self:new_error {
      kind = "file", id = def.path, retryable = false,
      message = ("cannot read the %s file %s (%s)"):format(def.role, where, open_error),
      hint = hint,
    }
  end
  local text = handle:read("*a")
  handle:close()
  local ok, decode_error = pcall(self._codec.decode, text)
  if not ok then
    return nil, self:new_error {
      kind = "file", id = def.path, retryable = false,
      message = ("the %s file %s is not valid JSON (%s)"):format(def.role, where,
        tostring(decode_error)),
      hint = "export the workflow again or fix the file; nothing was uploaded",
    }
  end
  return true
end

--- Imports a workflow's three definition files into an existing workflow.
-- Checks that every file exists and is valid JSON before anything is sent,
-- uploads them, starts the import and, unless options.wait is false, waits
-- for the job to end.
---@param workflow_id string
---@param source string|table export directory, or { workflow_data, flow_data, env_variables }
---@param options table|nil as for wait, plus on_step(step, detail), wait,
--- and context (file context of the uploads, default "bulkImport")
function Client:import_files(workflow_id, source, options)
  local fname = "import_files"
  if type(workflow_id) ~= "string" then
    argument_error(1, "workflow id", fname, "string expected, got " .. type(workflow_id))
  end
  -- The same rules as the C core's, checked here so that no file is uploaded
  -- for an import that cannot be sent.
  if workflow_id == "" then
    argument_error(1, "workflow id", fname, "must not be empty")
  elseif workflow_id == "." or workflow_id == ".." then
    argument_error(1, "workflow id", fname, ("'%s' is not a valid id because it is a "
      .. "relative path segment"):format(workflow_id))
  elseif #workflow_id > 1024 then
    argument_error(1, "workflow id", fname, "longer than 1024 bytes")
  end
  if options ~= nil and type(options) ~= "table" then
    argument_error(3, "options", fname, "table expected, got " .. type(options))
  end
  options = options or {}
  local on_step = options.on_step or function() end
  local defs = definition_paths(source, fname)

  on_step("check", { files = defs })
  if defs[1].zip then
    local ok, err = self:_read_zip(defs)
    if not ok then
      return nil, err
    end
  end
  for _, def in ipairs(defs) do
    local ok, err = self:_check_definition(def)
    if not ok then
      return nil, err
    end
  end

  if options.backup ~= nil then
    if type(options.backup) ~= "string" or options.backup == "" then
      argument_error(3, "options", fname, "option 'backup' must be a file path")
    end
    on_step("backup", { workflow_id = workflow_id, path = options.backup })
    local saved, err = self:export_to(workflow_id, options.backup, {
      timeout = options.timeout, interval = options.interval,
      max_interval = options.max_interval, sleep = options.sleep, clock = options.clock,
    })
    if not saved then
      err.message = ("backup of workflow %s failed, so nothing was imported: %s")
        :format(workflow_id, err.message)
      return nil, err
    end
  end

  local fields = {}
  local context = options.context or "bulkImport"
  for _, def in ipairs(defs) do
    on_step("upload", { role = def.role, path = def.path })
    local file, err
    if def.content then
      file, err = self.files.upload_data(def.file, def.content, { context = context })
    else
      file, err = self.files.upload(def.path, { context = context })
    end
    if not file then
      return nil, err
    end
    fields[def.field] = file.fileId
  end

  on_step("import", { workflow_id = workflow_id, fields = fields })
  local job, err = self.workflow.import(workflow_id, fields)
  if not job then
    return nil, err
  end
  if options.wait == false or job.status == "SUCCESS" then
    return job
  end

  on_step("wait", { job = job })
  local wait_options = {}
  for k, v in pairs(options) do
    wait_options[k] = v
  end
  wait_options.label = wait_options.label or ("import into workflow " .. workflow_id)
  return self:wait(job.dockStatusId, wait_options)
end

--- Saves the file behind url at path, streaming it to disk. The API key is
-- sent only when url is on the client's own host.
---@param url string
---@param path string
---@param options table|nil timeouts (seconds)
---@return table|nil { path, bytes, content_type }, or nil and an error
function Client:download(url, path, options)
  return self.files.download(url, path, options)
end

--- Exports a workflow, waits for the export job and saves its zip at path.
---@param workflow_id string
---@param path string
---@param options table|nil flow_id, and the options of wait
---@return table|nil { path, bytes, content_type, job }, or nil and an error
function Client:export_to(workflow_id, path, options)
  if type(path) ~= "string" or path == "" then
    argument_error(2, "path", "export_to", "non-empty string expected, got " .. type(path))
  end
  options = options or {}
  local fields = options.flow_id and { flow_id = options.flow_id } or nil
  local job, err = self.workflow.export(workflow_id, fields)
  if not job then
    return nil, err
  end
  local final = job
  if job.status ~= "SUCCESS" then
    local wait_options = {}
    for k, v in pairs(options) do
      if k ~= "flow_id" then
        wait_options[k] = v
      end
    end
    wait_options.label = wait_options.label or ("export of workflow " .. workflow_id)
    final, err = self:wait(job.dockStatusId, wait_options)
    if not final then
      return nil, err
    end
  end
  local url = final.downloadUrl or job.downloadUrl
  if type(url) ~= "string" then
    return nil, self:new_error {
      kind = "invalid_response", id = workflow_id, retryable = false, job = final,
      message = ("export of workflow %s ended SUCCESS without a download link (dock status %s)")
        :format(workflow_id, tostring(final.dockStatusId)),
      hint = "read the dock status again later; the server may add the link after the job ends",
    }
  end
  local saved
  saved, err = self:download(url, path)
  if not saved then
    return nil, err
  end
  saved.job = final
  return saved
end

-- Runs fn(nonblocking_client, item, index) for every item, at most
-- `concurrency` at once, and returns two tables indexed like items: the
-- results, and the errors (nil when there were none).
function Client:_run_concurrently(items, concurrency, fn)
  local handle = self._handle
  local tasks = scheduler.new {
    idle_sleep = self._sleep or core.sleep,
    clock = core.monotonic,
    -- A client without a host adapter may block, so its idle waits end as
    -- soon as a transfer has news.
    poll = self._sleep == nil and function(seconds)
      return core.poll(handle, seconds)
    end or nil,
  }
  local client = self:nonblocking(scheduler.task_adapter)
  local results, errors = {}, nil
  local next_index = 1
  local function worker()
    while next_index <= #items do
      local index = next_index
      next_index = next_index + 1
      local result, err = fn(client, items[index], index)
      results[index] = result
      if err ~= nil then
        errors = errors or {}
        errors[index] = err
      end
    end
  end
  for _ = 1, math.min(concurrency, #items) do
    tasks:spawn(worker)
  end
  tasks:run()
  return results, errors
end

local function check_concurrency(options, fname)
  local concurrency = options.concurrency or 8
  if type(concurrency) ~= "number" or concurrency < 1 or concurrency ~= math.floor(concurrency) then
    argument_error(2, "options", fname, "option 'concurrency' must be an integer of 1 or more")
  end
  return concurrency
end

--- Waits for several dock statuses at once, with at most options.concurrency
-- (default 8) requests in flight. Returns the final jobs and, when any wait
-- failed, a table of errors, both indexed like ids.
---@param ids table array of dock status ids
---@param options table|nil as for wait, plus concurrency
function Client:wait_all(ids, options)
  if type(ids) ~= "table" then
    argument_error(1, "ids", "wait_all", "table expected, got " .. type(ids))
  end
  options = options or {}
  local concurrency = check_concurrency(options, "wait_all")
  return self:_run_concurrently(ids, concurrency, function(client, id)
    return client:wait(id, options)
  end)
end

--- Imports several workflows at once: items is an array of
-- { workflow_id = ..., source = dir_or_paths }. Returns the final jobs and,
-- when any import failed, a table of errors, both indexed like items.
---@param items table
---@param options table|nil as for import_files, plus concurrency
function Client:import_many(items, options)
  if type(items) ~= "table" then
    argument_error(1, "items", "import_many", "table expected, got " .. type(items))
  end
  options = options or {}
  local concurrency = check_concurrency(options, "import_many")
  for i, item in ipairs(items) do
    if type(item) ~= "table" or type(item.workflow_id) ~= "string" or item.source == nil then
      argument_error(1, "items", "import_many",
        ("item %d must be { workflow_id = string, source = dir or paths }"):format(i))
    end
  end
  return self:_run_concurrently(items, concurrency, function(client, item)
    return client:import_files(item.workflow_id, item.source, options)
  end)
end

-- The default client, built on first use from kore_workflow.configure{...} or
-- from KORE_HOST and KORE_API_KEY.
local default_options
local default_client

--- Sets the options of the default client used by kore_workflow.workflow.*,
-- kore_workflow.files.* and kore_workflow.wait; missing host and api_key
-- still come from KORE_HOST and KORE_API_KEY.
function M.configure(options)
  if type(options) ~= "table" then
    argument_error(1, "options", "kore_workflow.configure", "table expected, got " .. type(options))
  end
  default_options = {}
  for k, v in pairs(options) do
    default_options[k] = v
  end
  default_client = nil
end

--- Returns the default client, creating it on first use.
function M.default_client()
  if default_client then
    return default_client
  end
  local options = {}
  for k, v in pairs(default_options or {}) do
    options[k] = v
  end
  options.host = options.host or os.getenv("KORE_HOST")
  options.api_key = options.api_key or os.getenv("KORE_API_KEY")
  if options.host == nil then
    error("kore_workflow: no host is configured; set KORE_HOST or call "
      .. "kore_workflow.configure{ host = ..., api_key = ... }", 3)
  end
  if options.api_key == nil then
    error("kore_workflow: no API key is configured; set KORE_API_KEY or call "
      .. "kore_workflow.configure{ api_key = ... }", 3)
  end
  default_client = M.client(options)
  return default_client
end

M.workflow = {
  import = function(...)
    return M.default_client().workflow.import(...)
  end,
  status = function(...)
    return M.default_client().workflow.status(...)
  end,
}

M.files = {
  upload = function(...)
    return M.default_client().files.upload(...)
  end,
}

function M.wait(...)
  return M.default_client():wait(...)
end

function M.import_files(...)
  return M.default_client():import_files(...)
end

local error_metatable = getmetatable(core.new_error { kind = "probe", message = "probe" })

--- Returns true when value is an error table of this module.
function M.is_error(value)
  return type(value) == "table" and getmetatable(value) == error_metatable
end

--- Blocks for the given number of seconds.
M.sleep = core.sleep
--- Returns seconds on a monotonic clock.
M.monotonic = core.monotonic
--- Returns true when the file descriptor (1 for stdout) is a terminal.
M.isatty = core.isatty

return M
