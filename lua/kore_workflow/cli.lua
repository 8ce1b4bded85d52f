--- kore-workflow: the command-line tool of kore_workflow.
--
-- `require("kore_workflow.cli").run(argv, io_table)` runs one command and
-- returns its exit status. It uses only the public kore_workflow module, which
-- is loaded on first use, so `--help` works before the C core is built.
local M = {}

local PROGRAM = "kore-workflow"
local DEFAULT_TIMEOUT = 900 -- seconds
local DEFAULT_CONTEXT = "bulkImport"
local DEFAULT_COLUMNS = 80
local REDRAW_SECONDS = 0.5 -- maximum length of one sleep while waiting, see Progress:sleeper

local EXIT_OK = 0
local EXIT_JOB_FAILED = 1
local EXIT_USAGE = 2
local EXIT_API = 3
local EXIT_TIMEOUT = 4
local EXIT_INTERRUPTED = 130 -- 128 + SIGINT, as shells report it

-- Exit status per error kind. Every kind not listed (http, network, tls,
-- invalid_response, outcome_unknown, redirect, internal) exits with EXIT_API.
local EXIT_BY_KIND = {
  job_failed = EXIT_JOB_FAILED,
  file = EXIT_USAGE,
  usage = EXIT_USAGE,
  timeout = EXIT_TIMEOUT,
  interrupted = EXIT_INTERRUPTED,
}

local KEY_ON_COMMAND_LINE = "the API key is not accepted on the command line, because every "
  .. "user of this machine can read a process's arguments in the process list; "
  .. "put the key in a file readable only by you and pass --api-key-file FILE, "
  .. "or set KORE_API_KEY"

---------------------------------------------------------------------------
-- Options and help text
---------------------------------------------------------------------------

-- Options that every API command (import, status, upload) accepts.
local COMMON_OPTIONS = {
  { long = "host", arg = "URL",
    text = "Base URL of the environment, such as https://ai-for-process.example.ai. "
      .. "Default: $KORE_HOST." },
  { long = "api-key-file", arg = "FILE",
    text = "Read the API key from the first line of FILE; surrounding white space is "
      .. "ignored. Default: the key in $KORE_API_KEY." },
  { long = "ca-file", arg = "FILE",
    text = "PEM file of the CA certificates that verify the server's TLS certificate. "
      .. "Default: the system's CA store." },
  { long = "json",
    text = "Print the result, or the error, as exactly one JSON object on stdout: "
      .. '{"ok": true, ...} or {"ok": false, "error": {...}}.' },
  { long = "help", short = "h", text = "Print this help and exit." },
}

local TIMEOUT_TEXT = "Maximum time to wait for the job to end, in seconds (decimals allowed). "
  .. "Default: " .. DEFAULT_TIMEOUT .. "."

local COMMANDS = {
  import = {
    summary = "Upload a workflow's three definition files and import them",
    usage = {
      "import [OPTIONS] WORKFLOW_ID DIR",
      "import [OPTIONS] WORKFLOW_ID --workflow-data FILE --flow-data FILE --env-variables FILE",
    },
    description = "Imports a workflow export into the existing workflow WORKFLOW_ID, where it "
      .. "becomes the new in-development version. DIR is an export directory holding "
      .. "app_definition.json, flow_definition.json and env_variables.json; the three file "
      .. "options name the files one by one instead. Every file is checked to exist and to be "
      .. "valid JSON before anything is sent. The files are then uploaded, the import is "
      .. "started, and the command waits for the import job to end.",
    options = {
      { long = "workflow-data", arg = "FILE",
        text = "App definition file (app_definition.json of an export). Give it together "
          .. "with --flow-data and --env-variables, in place of DIR." },
      { long = "flow-data", arg = "FILE", text = "Flow definition file (flow_definition.json of an export)." },
      { long = "env-variables", arg = "FILE",
        text = "Environment variables file (env_variables.json of an export)." },
      { long = "no-wait",
        text = "Return as soon as the import job has started and print it, usually with "
          .. "status IN_PROGRESS, instead of waiting for it to end." },
      { long = "timeout", arg = "SECONDS", text = TIMEOUT_TEXT },
    },
  },
  status = {
    summary = "Print the status of a job, or wait for it to end",
    usage = { "status [OPTIONS] DOCK_STATUS_ID" },
    description = "Reads the job behind DOCK_STATUS_ID (the dockStatusId that import prints) "
      .. "and prints its status: IN_PROGRESS, SUCCESS or FAILED. A job that ended FAILED "
      .. "exits with status 1.",
    options = {
      { long = "wait", text = "Poll until the job ends SUCCESS or FAILED instead of reading its status once." },
      { long = "timeout", arg = "SECONDS", text = TIMEOUT_TEXT .. " Only with --wait." },
    },
  },
  upload = {
    summary = "Upload one file and print its file id",
    usage = { "upload [OPTIONS] FILE" },
    description = "Uploads FILE (under 25 MB) and prints the file id that the server assigned. "
      .. "The signed download URL is printed without its query string, because the query "
      .. "carries the signature.",
    options = {
      { long = "context", arg = "CONTEXT",
        text = "File context sent with the upload. Default: " .. DEFAULT_CONTEXT
          .. ", the context for workflow definition files." },
    },
  },
}

local COMMAND_ORDER = { "import", "status", "upload" }

local ENVIRONMENT_HELP = {
  { "KORE_HOST", "Base URL of the environment, used when --host is not given." },
  { "KORE_API_KEY", "API key, used when --api-key-file is not given." },
  { "KORE_WORKFLOW_DEBUG", "Set to 1 to print the Lua traceback of an internal error." },
  { "KORE_WORKFLOW_LUA", "Lua interpreter that the kore-workflow launcher runs. Default: lua5.4." },
  { "COLUMNS", "Width of the terminal progress line. Default: " .. DEFAULT_COLUMNS .. "." },
}

local EXIT_HELP = {
  { "0", "Success." },
  { "1", "The job ended FAILED." },
  { "2", "Usage error: a bad option or argument, no host or API key, an invalid key, or "
    .. "a local file that is missing, unreadable or not valid JSON. Nothing was imported." },
  { "3", "API or network error: an HTTP error status, a connection or TLS failure, an "
    .. "invalid response, a redirect, a request whose outcome is unknown, or an internal error." },
  { "4", "Timed out: the job did not end within --timeout, or the server did not answer in time." },
  { "130", "Interrupted with Ctrl-C." },
}

-- Wraps text to lines of at most `width` characters, each starting with `indent`.
local function wrap(text, indent, width)
  local lines = {}
  local line = indent
  for word in text:gmatch("%S+") do
    if #line > #indent and #line + 1 + #word > width then
      lines[#lines + 1] = line
      line = indent .. word
    elseif #line > #indent then
      line = line .. " " .. word
    else
      line = line .. word
    end
  end
  lines[#lines + 1] = line
  return table.concat(lines, "\n")
end

local TERM_COLUMN = 24 -- column where option and variable descriptions start
local HELP_WIDTH = 79

-- Formats "  TERM  description" entries with the description wrapped at TERM_COLUMN.
local function format_entries(entries)
  local out = {}
  local indent = string.rep(" ", TERM_COLUMN)
  for _, entry in ipairs(entries) do
    local term, text = "  " .. entry[1], entry[2]
    local body = wrap(text, indent, HELP_WIDTH)
    if #term + 2 <= TERM_COLUMN then
      out[#out + 1] = term .. body:sub(#term + 1)
    else
      out[#out + 1] = term .. "\n" .. body
    end
  end
  return table.concat(out, "\n")
end

local function option_entries(options)
  local entries = {}
  for _, option in ipairs(options) do
    local term = "--" .. option.long
    if option.short then
      term = "-" .. option.short .. ", " .. term
    end
    if option.arg then
      term = term .. " " .. option.arg
    end
    entries[#entries + 1] = { term, option.text }
  end
  return entries
end

local function common_help()
  return table.concat({
    "Options of every API command (import, status, upload):",
    format_entries(option_entries(COMMON_OPTIONS)),
    "",
    wrap(KEY_ON_COMMAND_LINE:sub(1, 1):upper() .. KEY_ON_COMMAND_LINE:sub(2) .. ".", "", HELP_WIDTH),
    "",
    "Environment:",
    format_entries(ENVIRONMENT_HELP),
    "",
    "Exit status:",
    format_entries(EXIT_HELP),
  }, "\n")
end

local function tool_help()
  local commands = {}
  for _, name in ipairs(COMMAND_ORDER) do
    commands[#commands + 1] = { name, COMMANDS[name].summary .. "." }
  end
  commands[#commands + 1] = { "mock", "Run the local emulator of the API; see '" .. PROGRAM .. " mock --help'." }
  commands[#commands + 1] = { "help [COMMAND]", "Print this help, or the help of COMMAND." }
  return table.concat({
    "Usage: " .. PROGRAM .. " COMMAND [OPTIONS] [ARGUMENTS]",
    "       " .. PROGRAM .. " COMMAND --help",
    "",
    wrap("Imports workflow definitions into a Kore.ai AI for Process environment through its "
      .. "management API, and follows the import jobs.", "", HELP_WIDTH),
    "",
    "Commands:",
    format_entries(commands),
    "",
    "Options of the tool itself:",
    format_entries({ { "-h, --help", "Print this help and exit." },
                     { "--version", "Print the version and exit." } }),
    "",
    common_help(),
    "",
  }, "\n")
end

local function command_help(name)
  local command = COMMANDS[name]
  local usage = {}
  for i, line in ipairs(command.usage) do
    usage[i] = (i == 1 and "Usage: " or "       ") .. PROGRAM .. " " .. line
  end
  return table.concat({
    table.concat(usage, "\n"),
    "",
    wrap(command.description, "", HELP_WIDTH),
    "",
    "Options:",
    format_entries(option_entries(command.options)),
    "",
    common_help(),
    "",
  }, "\n")
end

local function short_usage()
  local lines = { "Usage:" }
  for _, name in ipairs(COMMAND_ORDER) do
    for _, line in ipairs(COMMANDS[name].usage) do
      lines[#lines + 1] = "  " .. PROGRAM .. " " .. line
    end
  end
  lines[#lines + 1] = "  " .. PROGRAM .. " mock ..."
  lines[#lines + 1] = "Run '" .. PROGRAM .. " --help' for the options, the environment and the exit statuses."
  return table.concat(lines, "\n") .. "\n"
end

---------------------------------------------------------------------------
-- Errors raised inside the tool
---------------------------------------------------------------------------

-- A usage error: a table raised with error() and turned into exit status 2.
local UsageError = {}

local function usage_error(message, command)
  error(setmetatable({ message = message, command = command }, UsageError), 0)
end

local function is_usage_error(value)
  return type(value) == "table" and getmetatable(value) == UsageError
end

-- Removes the "file.lua:12: " position that error() puts in front of a message.
local function strip_position(message)
  local stripped = message:gsub("^[^\n:]+:%d+: ", "", 1)
  return stripped
end

-- Replaces control characters, which a server could use to rewrite the
-- terminal, with '?'. With `one_line`, runs of tabs and line breaks become
-- one space first. Without it, line breaks are kept.
local function printable(text, one_line)
  text = tostring(text)
  if one_line then
    return (text:gsub("[\t\r\n]+", " "):gsub("[%c\127]", "?"))
  end
  return (text:gsub("[%z\1-\9\11-\31\127]", "?"))
end

---------------------------------------------------------------------------
-- Context: output streams, redaction and JSON
---------------------------------------------------------------------------

local Context = {}
Context.__index = Context

local function new_context(io_table)
  io_table = io_table or {}
  return setmetatable({
    stdout = io_table.stdout or io.stdout,
    stderr = io_table.stderr or io.stderr,
    getenv = io_table.getenv or os.getenv,
    isatty = io_table.isatty,
    json = false,
    secret = nil,
    command = nil,
    progress = nil,
    dock_status_id = nil,
  }, Context)
end

-- Stores the API key so that every later write replaces it with "***".
function Context:set_secret(key)
  local trimmed = key:match("^[ \t\r\n]*(.-)[ \t\r\n]*$")
  if trimmed ~= "" then
    self.secret = trimmed
  end
end

function Context:redact(text)
  local secret = self.secret
  if secret == nil then
    return text
  end
  local parts = {}
  local position = 1
  while true do
    local first, last = text:find(secret, position, true)
    if not first then
      break
    end
    parts[#parts + 1] = text:sub(position, first - 1)
    parts[#parts + 1] = "***"
    position = last + 1
  end
  parts[#parts + 1] = text:sub(position)
  return table.concat(parts)
end

-- Writes to stdout or stderr, ending the progress line first when both
-- could share one terminal. Write failures (a closed pipe) are ignored.
function Context:write(stream_name, text)
  if self.progress then
    self.progress:finish()
  end
  local stream = self[stream_name]
  pcall(stream.write, stream, self:redact(text))
  if stream.flush then
    pcall(stream.flush, stream)
  end
end

function Context:out(text)
  self:write("stdout", text)
end

function Context:err(text)
  self:write("stderr", text)
end

function Context:debug_enabled()
  return self.getenv("KORE_WORKFLOW_DEBUG") == "1"
end

local json_codec

local function codec()
  if not json_codec then
    json_codec = require("cjson").new()
    json_codec.encode_sparse_array(true)
    json_codec.encode_invalid_numbers(false)
  end
  return json_codec
end

-- Returns a copy of value that cjson can encode, with the API key redacted
-- from every string.
function Context:json_value(value, depth)
  local kind = type(value)
  if value == nil or value == codec().null then
    return codec().null
  elseif kind == "string" then
    return self:redact(value)
  elseif kind == "number" then
    if value ~= value or value == math.huge or value == -math.huge then
      return tostring(value)
    end
    return value
  elseif kind == "boolean" then
    return value
  elseif kind == "table" and depth < 50 then
    local copy = {}
    for k, v in pairs(value) do
      local key = type(k) == "number" and k or self:redact(tostring(k))
      copy[key] = self:json_value(v, depth + 1)
    end
    return copy
  end
  return tostring(value)
end

function Context:emit_json(object)
  local ok, text = pcall(codec().encode, self:json_value(object, 0))
  if not ok then
    text = codec().encode({ ok = false, error = {
      kind = "internal", message = "the result cannot be encoded as JSON: " .. tostring(text),
      status = codec().null, retryable = false, hint = codec().null,
    } })
  end
  self:out(text .. "\n")
end

---------------------------------------------------------------------------
-- Progress display on stderr
---------------------------------------------------------------------------

local Progress = {}
Progress.__index = Progress

-- On a terminal one line is rewritten in place with "\r". Elsewhere every
-- step and every status change gets its own line.
local function new_progress(ctx, clock, tty)
  local columns = tonumber(ctx.getenv("COLUMNS") or "")
  if not columns or columns < 20 then
    columns = DEFAULT_COLUMNS
  end
  return setmetatable({
    ctx = ctx,
    clock = clock,
    start = clock(),
    tty = tty,
    columns = math.floor(columns),
    text = nil,
    status = nil,
    drawn = 0, -- width of the line now on the terminal, 0 when none is open
  }, Progress)
end

function Progress:elapsed()
  local seconds = self.clock() - self.start
  if seconds ~= seconds or seconds < 0 then
    seconds = 0
  end
  return math.floor(seconds)
end

-- Returns the progress line: step, job status and elapsed seconds. With a
-- width, the middle of the step text is cut so that the status and the
-- elapsed time stay visible.
function Progress:line(width)
  local text = printable(self.text, true)
  local suffix = ""
  if self.status then
    suffix = ": " .. printable(self.status, true)
  end
  suffix = suffix .. (" (%d s)"):format(self:elapsed())
  if width and #text + #suffix > width then
    local room = width - #suffix - 3
    if room < 8 then
      return (text .. suffix):sub(1, width)
    end
    local head = math.ceil(room / 2)
    text = text:sub(1, head) .. "..." .. text:sub(#text - (room - head) + 1)
  end
  return text .. suffix
end

function Progress:redraw()
  if not (self.tty and self.text) then
    return
  end
  -- One column stays free, because a line that fills the terminal wraps on
  -- some terminals and "\r" would then rewrite only its second half.
  local line = self:line(self.columns - 1)
  local padding = string.rep(" ", self.drawn - #line)
  local stream = self.ctx.stderr
  pcall(stream.write, stream, self.ctx:redact("\r" .. line .. padding))
  pcall(stream.flush, stream)
  self.drawn = #line
end

function Progress:print_line()
  local stream = self.ctx.stderr
  pcall(stream.write, stream, self.ctx:redact(self:line() .. "\n"))
end

-- Starts a step, such as "uploading FILE", with the job status known so far.
function Progress:step(text, status)
  self.text = text
  self.status = status
  if self.tty then
    self:redraw()
  else
    self:print_line()
  end
end

function Progress:set_status(status)
  if type(status) ~= "string" then
    status = tostring(status)
  end
  local changed = status ~= self.status
  self.status = status
  if self.tty then
    self:redraw()
  elseif changed then
    self:print_line()
  end
end

-- Ends the terminal line so that the next output starts on a new line.
function Progress:finish()
  if self.tty and self.drawn > 0 then
    local stream = self.ctx.stderr
    pcall(stream.write, stream, "\n")
    self.drawn = 0
  end
end

-- Returns a sleep function for the waiter that sleeps in slices of at most
-- REDRAW_SECONDS. The terminal line is redrawn after each slice, so the
-- elapsed time keeps moving between polls, and Ctrl-C, which the Lua
-- interpreter raises only between Lua instructions, takes effect within a slice.
function Progress:sleeper(sleep)
  return function(seconds)
    local left = seconds
    while left > 0 do
      local slice = left < REDRAW_SECONDS and left or REDRAW_SECONDS
      sleep(slice)
      left = left - slice
      self:redraw()
    end
  end
end

---------------------------------------------------------------------------
-- Argument parsing
---------------------------------------------------------------------------

-- Returns the option name of a token for messages, without any "=VALUE",
-- so that a value (perhaps a secret) is never echoed.
local function option_name(token)
  return (token:match("^[^=]*"))
end

local function is_api_key_option(token)
  return token == "--api-key" or token:sub(1, 10) == "--api-key="
end

-- Parses tokens against option specs and returns the option values, keyed
-- by long name (true for a flag), and the list of positional arguments.
-- Options may come before, between or after positional arguments, and "--"
-- ends the options.
local function parse_arguments(tokens, specs, command)
  local by_name = {}
  for _, spec in ipairs(specs) do
    by_name[spec.long] = spec
    if spec.short then
      by_name[spec.short] = spec
    end
  end

  local values, positional = {}, {}
  local only_positional = false
  local i = 1
  while i <= #tokens do
    local token = tokens[i]
    if only_positional or token == "-" or token:sub(1, 1) ~= "-" then
      positional[#positional + 1] = token
    elseif token == "--" then
      only_positional = true
    elseif is_api_key_option(token) then
      usage_error(KEY_ON_COMMAND_LINE, command)
    else
      local name, inline = token:match("^%-%-([^=]+)=(.*)$")
      if not name then
        name = token:match("^%-%-(.+)$") or token:match("^%-(.)$")
      end
      local spec = name and by_name[name]
      if not spec then
        usage_error(("unknown option '%s'"):format(option_name(token)), command)
      end
      if spec.arg then
        if inline == nil then
          i = i + 1
          inline = tokens[i]
          if inline == nil then
            usage_error(("option --%s requires a value (%s)"):format(spec.long, spec.arg), command)
          end
        end
        values[spec.long] = inline
      elseif inline ~= nil then
        usage_error(("option --%s takes no value"):format(spec.long), command)
      else
        values[spec.long] = true
      end
    end
    i = i + 1
  end
  return values, positional
end

-- Returns true when one of the tokens before "--" is one of the flags.
local function has_flag(tokens, flags)
  for _, token in ipairs(tokens) do
    if token == "--" then
      return false
    end
    for _, flag in ipairs(flags) do
      if token == flag then
        return true
      end
    end
  end
  return false
end

local function parse_timeout(text, command)
  if text == nil then
    return DEFAULT_TIMEOUT
  end
  local seconds = tonumber(text)
  if not seconds or seconds ~= seconds or seconds <= 0 or seconds == math.huge then
    usage_error(("invalid --timeout '%s': expected a number of seconds above 0, such as 900"):format(text),
      command)
  end
  return seconds
end

-- Returns positional argument `index`; raises a usage error when it is
-- missing or empty, because an empty id or path names nothing.
local function required_argument(positional, index, name, command)
  local value = positional[index]
  if value == nil then
    usage_error("missing " .. name, command)
  elseif value == "" then
    usage_error(name .. " must not be empty", command)
  end
  return value
end

local function check_positional_count(positional, max, command, names)
  if #positional > max then
    usage_error(("unexpected argument '%s'; %s takes %s"):format(positional[max + 1], command, names), command)
  end
end

---------------------------------------------------------------------------
-- Library access
---------------------------------------------------------------------------

local library

-- Loads the public kore_workflow module, raising an internal error with the
-- build command when the C core is missing.
local function load_library()
  if library then
    return library
  end
  local ok, result = pcall(require, "kore_workflow")
  if not ok then
    error({ internal = true, message = "cannot load the kore_workflow library: " .. tostring(result),
            hint = "build the C core with 'cmake -S . -B build && cmake --build build' "
              .. "and run the tool through bin/kore-workflow" }, 0)
  end
  library = result
  return library
end

local function nonempty(value)
  if value == nil or value == "" then
    return nil
  end
  return value
end

-- Returns the first line of the key file. Raises a usage error when the
-- file cannot be read or contains no key.
local function read_key_file(path, command)
  local handle, open_error = io.open(path, "rb")
  if not handle then
    usage_error(("cannot read the API key file (%s); pass a readable file to --api-key-file")
      :format(open_error), command)
  end
  local line = handle:read("*l")
  handle:close()
  if line == nil or not line:find("%S") then
    usage_error(("the API key file '%s' is empty; put the key on its first line"):format(path), command)
  end
  return line
end

-- Creates the client from the common options and the environment.
local function open_client(ctx, values)
  local command = ctx.command
  local host = values.host or nonempty(ctx.getenv("KORE_HOST"))
  if host == nil then
    usage_error("no host is set; set KORE_HOST or pass --host URL, such as "
      .. "https://ai-for-process.example.ai", command)
  end

  local key, key_source
  if values["api-key-file"] then
    key = read_key_file(values["api-key-file"], command)
    key_source = "the file " .. values["api-key-file"]
  else
    key = nonempty(ctx.getenv("KORE_API_KEY"))
    key_source = "KORE_API_KEY"
    if key == nil then
      usage_error("no API key is set; set KORE_API_KEY or pass --api-key-file FILE", command)
    end
  end
  ctx:set_secret(key)

  local kw = load_library()
  local ok, client = pcall(kw.client, { host = host, api_key = key, ca_file = values["ca-file"] })
  if not ok then
    local message = strip_position(tostring(client))
    if not message:find("bad argument", 1, true) then
      error(client, 0)
    end
    if message:find("(api_key)", 1, true) then
      message = ("the API key from %s is invalid: %s"):format(key_source, message)
    elseif message:find("(host)", 1, true) then
      message = ("the host from %s is invalid: %s"):format(values.host and "--host" or "KORE_HOST", message)
    elseif message:find("(ca_file)", 1, true) then
      message = "the --ca-file is invalid: " .. message
    end
    usage_error(message, command)
  end
  return client, kw
end

local function start_progress(ctx, kw)
  local tty = ctx.isatty
  local on_terminal
  if tty then
    on_terminal = tty(2)
  else
    on_terminal = kw.isatty(2)
  end
  ctx.progress = new_progress(ctx, kw.monotonic, on_terminal and true or false)
  return ctx.progress
end

---------------------------------------------------------------------------
-- Results
---------------------------------------------------------------------------

local JOB_FIELDS = {
  { "dockStatusId", "dock status id" },
  { "status", "status" },
  { "workflowId", "workflow id" },
  { "jobType", "job type" },
  { "action", "action" },
  { "percentageComplete", "percent complete" },
}

local function format_fields(record, fields)
  local lines = {}
  for _, field in ipairs(fields) do
    local value = record[field[1]]
    if value ~= nil and type(value) ~= "table" then
      lines[#lines + 1] = ("%-16s %s"):format(field[2] .. ":", printable(value, true))
    end
  end
  return table.concat(lines, "\n") .. "\n"
end

local function error_fields(err)
  local null = codec().null
  return {
    kind = err.kind,
    message = err.message,
    status = err.status or null,
    retryable = err.retryable == true,
    hint = err.hint or null,
  }
end

-- Rewrites the library's Lua option names in a hint into this tool's
-- options, so a TLS hint tells the user to pass --ca-file.
local function command_line_hint(err)
  if type(err.hint) ~= "string" then
    return
  end
  local hint = err.hint:gsub("ca_file = ", "--ca-file "):gsub("ca_file", "--ca-file")
  hint = hint:gsub("the timeout option", "--timeout")
  err.hint = hint
end

-- Prints a library error (a kore_workflow error table) and returns the exit status.
local function report_error(ctx, err)
  command_line_hint(err)
  local job = type(err.job) == "table" and err.job or nil
  if ctx.json then
    ctx:emit_json({ ok = false, error = error_fields(err), job = job })
  else
    if err.kind == "job_failed" and job then
      ctx:out(format_fields(job, JOB_FIELDS))
    end
    -- tostring(err) starts with the library's own "kore_workflow: " prefix.
    local line = tostring(err):gsub("^kore_workflow: ", "")
    ctx:err(PROGRAM .. ": " .. printable(line, true) .. "\n")
  end
  return EXIT_BY_KIND[err.kind] or EXIT_API
end

local function report_usage(ctx, err)
  local command = err.command
  local help = command and (PROGRAM .. " " .. command .. " --help") or (PROGRAM .. " --help")
  if ctx.json then
    ctx:emit_json({ ok = false, error = {
      kind = "usage", message = err.message, status = codec().null, retryable = false,
      hint = "run '" .. help .. "' for the options",
    } })
  else
    ctx:err(("%s: %s\nRun '%s' for the options.\n"):format(PROGRAM, printable(err.message, true), help))
  end
  return EXIT_USAGE
end

-- Reports the job a command ended with: success, or a job that ended FAILED.
local function finish_job(ctx, client, job, err)
  if not job then
    return report_error(ctx, err)
  end
  if job.status == "FAILED" then
    local message = ("job %s ended FAILED"):format(tostring(job.dockStatusId))
    if type(job.message) == "string" and job.message ~= "" then
      message = message .. ": " .. job.message
    end
    return report_error(ctx, client:new_error {
      kind = "job_failed",
      id = job.dockStatusId and tostring(job.dockStatusId) or nil,
      job = job,
      retryable = false,
      message = message,
      hint = "check the definition files and the server's reason, then retry",
    })
  end
  if ctx.json then
    ctx:emit_json({ ok = true, job = job })
  else
    ctx:out(format_fields(job, JOB_FIELDS))
  end
  return EXIT_OK
end

---------------------------------------------------------------------------
-- Commands
---------------------------------------------------------------------------

local FILE_OPTIONS = {
  { option = "workflow-data", role = "workflow_data" },
  { option = "flow-data", role = "flow_data" },
  { option = "env-variables", role = "env_variables" },
}

-- Returns the source argument of import_files: the directory, or the table
-- of the three file paths.
local function import_source(values, positional)
  local provided, missing = {}, {}
  for _, file in ipairs(FILE_OPTIONS) do
    if values[file.option] == "" then
      usage_error(("--%s must not be empty"):format(file.option), "import")
    elseif values[file.option] then
      provided[#provided + 1] = file
    else
      missing[#missing + 1] = "--" .. file.option
    end
  end
  if #provided == 0 then
    if positional[2] == nil then
      usage_error("missing DIR: pass the export directory, or --workflow-data, --flow-data "
        .. "and --env-variables", "import")
    end
    return required_argument(positional, 2, "DIR", "import")
  end
  if positional[2] ~= nil then
    usage_error("pass either DIR or the three file options, not both", "import")
  end
  if #missing > 0 then
    usage_error(("missing %s: --workflow-data, --flow-data and --env-variables must be given together")
      :format(table.concat(missing, " and ")), "import")
  end
  local source = {}
  for _, file in ipairs(provided) do
    source[file.role] = values[file.option]
  end
  return source
end

local function describe_step(step, detail)
  if step == "check" then
    return "checking the definition files"
  elseif step == "upload" then
    return "uploading " .. tostring(detail.path)
  elseif step == "import" then
    return "importing into workflow " .. tostring(detail.workflow_id)
  elseif step == "wait" then
    return "waiting for dock status " .. tostring(detail.job and detail.job.dockStatusId)
  end
  return tostring(step)
end

local function run_import(ctx, values, positional)
  local workflow_id = required_argument(positional, 1, "WORKFLOW_ID", "import")
  check_positional_count(positional, 2, "import", "WORKFLOW_ID and DIR")
  local source = import_source(values, positional)
  local timeout = parse_timeout(values.timeout, "import")

  local client, kw = open_client(ctx, values)
  local progress = start_progress(ctx, kw)
  local job, err = client:import_files(workflow_id, source, {
    wait = not values["no-wait"],
    timeout = timeout,
    on_step = function(step, detail)
      detail = detail or {}
      if step == "wait" and detail.job then
        ctx.dock_status_id = detail.job.dockStatusId
      end
      local status = step == "wait" and detail.job and detail.job.status or nil
      progress:step(describe_step(step, detail), status and tostring(status))
    end,
    on_progress = function(current)
      progress:set_status(current.status)
    end,
    sleep = progress:sleeper(kw.sleep),
  })
  local code = finish_job(ctx, client, job, err)
  if code == EXIT_OK and not ctx.json and job.status ~= "SUCCESS" then
    ctx:err(("%s: the import continues on the server; follow it with '%s status %s --wait'\n")
      :format(PROGRAM, PROGRAM, printable(job.dockStatusId, true)))
  end
  return code
end

local function run_status(ctx, values, positional)
  local id = required_argument(positional, 1, "DOCK_STATUS_ID", "status")
  check_positional_count(positional, 1, "status", "one DOCK_STATUS_ID")
  if values.timeout and not values.wait then
    usage_error("--timeout applies only with --wait", "status")
  end
  local timeout = parse_timeout(values.timeout, "status")

  local client, kw = open_client(ctx, values)
  local job, err
  if values.wait then
    local progress = start_progress(ctx, kw)
    ctx.dock_status_id = id
    progress:step("waiting for dock status " .. id)
    job, err = client:wait(id, {
      timeout = timeout,
      on_progress = function(current)
        progress:set_status(current.status)
      end,
      sleep = progress:sleeper(kw.sleep),
    })
  else
    job, err = client.workflow.status(id)
  end
  return finish_job(ctx, client, job, err)
end

local function run_upload(ctx, values, positional)
  local path = required_argument(positional, 1, "FILE", "upload")
  check_positional_count(positional, 1, "upload", "one FILE")
  local context = values.context or DEFAULT_CONTEXT
  if context == "" then
    usage_error("--context must not be empty", "upload")
  end

  local client, kw = open_client(ctx, values)
  local progress = start_progress(ctx, kw)
  progress:step("uploading " .. path)
  local file, err = client.files.upload(path, { context = context })
  if not file then
    return report_error(ctx, err)
  end
  -- The query string of the signed URL carries the signature, so it is cut off.
  local url = type(file.url) == "string" and file.url:match("^[^?#]*") or nil
  if ctx.json then
    ctx:emit_json({ ok = true, file = { fileId = file.fileId, url = url } })
  else
    local lines = ("%-16s %s\n"):format("file id:", printable(file.fileId, true))
    if url then
      lines = lines .. ("%-16s %s (signature query omitted)\n"):format("url:", printable(url, true))
    end
    ctx:out(lines)
  end
  return EXIT_OK
end

local RUNNERS = {
  import = run_import,
  status = run_status,
  upload = run_upload,
}

local function run_mock(ctx, rest)
  local ok, mock_cli = pcall(require, "kore_workflow.mock_cli")
  if not ok then
    error({ internal = true, message = "cannot load the emulator: " .. tostring(mock_cli) }, 0)
  end
  ctx.command = "mock"
  local code = mock_cli.run(rest)
  if type(code) ~= "number" then
    return EXIT_OK
  end
  return code
end

local function print_version(ctx)
  local kw = load_library()
  ctx:out(("%s %s\n"):format(PROGRAM, tostring(kw._VERSION)))
  return EXIT_OK
end

-- The options that may come before the command name.
local LEADING_OPTIONS = {}
for _, option in ipairs(COMMON_OPTIONS) do
  LEADING_OPTIONS[#LEADING_OPTIONS + 1] = option
end
LEADING_OPTIONS[#LEADING_OPTIONS + 1] = { long = "version" }

-- Splits argv into the options before the command, the command and the
-- tokens after it. Returns nil for the command when there is none.
local function split_command(tokens)
  local value_options = {}
  for _, option in ipairs(COMMON_OPTIONS) do
    if option.arg then
      value_options["--" .. option.long] = true
    end
  end
  local leading = {}
  local i = 1
  while i <= #tokens do
    local token = tokens[i]
    if token == "--" then
      i = i + 1
      break
    elseif token:sub(1, 1) ~= "-" or token == "-" then
      break
    end
    leading[#leading + 1] = token
    if value_options[token] and tokens[i + 1] then
      leading[#leading + 1] = tokens[i + 1]
      i = i + 1
    end
    i = i + 1
  end
  local rest = {}
  for j = i + 1, #tokens do
    rest[#rest + 1] = tokens[j]
  end
  return leading, tokens[i], rest
end

local function dispatch(ctx, tokens)
  if #tokens == 0 then
    ctx:err(short_usage())
    return EXIT_USAGE
  end
  local leading, name, rest = split_command(tokens)
  if has_flag(leading, { "--json" }) or (name ~= "mock" and has_flag(rest, { "--json" })) then
    ctx.json = true
  end

  local values = parse_arguments(leading, LEADING_OPTIONS)
  if values.help then
    ctx:out(tool_help())
    return EXIT_OK
  end
  if values.version then
    return print_version(ctx)
  end

  if name == nil then
    usage_error("missing COMMAND; the commands are import, status, upload and mock")
  elseif name == "mock" then
    if #leading > 0 then
      usage_error("options before 'mock' are not used by the emulator; put them after 'mock'")
    end
    return run_mock(ctx, rest)
  elseif name == "help" then
    local topic = rest[1]
    if topic == nil then
      ctx:out(tool_help())
    elseif topic == "mock" then
      return run_mock(ctx, { "--help" })
    elseif COMMANDS[topic] then
      ctx:out(command_help(topic))
    else
      usage_error(("no help for '%s'; the commands are import, status, upload and mock"):format(topic))
    end
    return EXIT_OK
  end

  local command = COMMANDS[name]
  if not command then
    usage_error(("unknown command '%s'; the commands are import, status, upload and mock"):format(name))
  end
  ctx.command = name
  if has_flag(rest, { "--help", "-h" }) then
    ctx:out(command_help(name))
    return EXIT_OK
  end

  local specs = {}
  for _, option in ipairs(command.options) do
    specs[#specs + 1] = option
  end
  for _, option in ipairs(COMMON_OPTIONS) do
    specs[#specs + 1] = option
  end
  local all = {}
  for _, token in ipairs(leading) do
    all[#all + 1] = token
  end
  for _, token in ipairs(rest) do
    all[#all + 1] = token
  end
  local options, positional = parse_arguments(all, specs, name)
  return RUNNERS[name](ctx, options, positional)
end

-- Turns a Lua error that escaped a command into output and an exit status:
-- a bad argument to the library is a usage error (2), Ctrl-C exits with 130,
-- and anything else is an internal error (3).
local function report_failure(ctx, failure)
  local value = failure.value
  if is_usage_error(value) then
    return report_usage(ctx, value)
  end
  local kind, message, hint
  if type(value) == "table" and value.internal then
    kind, message, hint = "internal", value.message, value.hint
  else
    message = strip_position(tostring(value))
    if message:find("bad argument", 1, true) or message:find("bad option", 1, true) then
      return report_usage(ctx, { message = message, command = ctx.command })
    elseif message:find("interrupted!?$") then
      kind, message = "interrupted", "interrupted"
      if ctx.dock_status_id then
        hint = ("the job may still be running on the server; check it with '%s status %s --wait'")
          :format(PROGRAM, tostring(ctx.dock_status_id))
      end
    else
      kind, message = "internal", "internal error: " .. message
      if not ctx:debug_enabled() then
        hint = "set KORE_WORKFLOW_DEBUG=1 to print the Lua traceback"
      end
    end
  end

  if ctx.json then
    local null = codec().null
    ctx:emit_json({ ok = false, error = {
      kind = kind, message = message, status = null, retryable = false, hint = hint or null,
    } })
  else
    local line = PROGRAM .. ": " .. printable(message, true)
    if hint then
      line = line .. "; " .. hint
    end
    ctx:err(line .. "\n")
  end
  if kind == "internal" and failure.traceback and ctx:debug_enabled() then
    ctx:err(failure.traceback .. "\n")
  end
  return EXIT_BY_KIND[kind] or EXIT_API
end

--- Runs the command line and returns the exit status.
---@param argv table arguments, argv[1] being the command (the `arg` table of a script works)
---@param io_table table|nil stdout and stderr (objects with :write), getenv(name)
--- and isatty(fd), each replacing io.stdout, io.stderr, os.getenv and
--- kore_workflow.isatty
---@return integer exit status: 0 success, 1 job failed, 2 usage, 3 API or
--- network error, 4 timed out, 130 interrupted
function M.run(argv, io_table)
  local ctx = new_context(io_table)
  local tokens = {}
  for i = 1, (argv and (argv.n or #argv) or 0) do
    tokens[i] = tostring(argv[i])
  end

  local failure
  local ok, code = xpcall(function()
    return dispatch(ctx, tokens)
  end, function(value)
    failure = { value = value }
    if not is_usage_error(value) then
      local message = type(value) == "table" and value.message or value
      failure.traceback = debug.traceback(tostring(message), 2)
    end
    return value
  end)
  if ctx.progress then
    ctx.progress:finish()
  end
  if ok then
    return code
  end
  return report_failure(ctx, failure)
end

return M
