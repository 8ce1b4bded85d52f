-- The `kore-workflow mock` subcommand: runs the local API emulator from
-- kore_workflow.mock until it is stopped.

local mock = require("kore_workflow.mock")

local mock_cli = {}

local PROGRAM = "kore-workflow mock"

local USAGE = [[
Usage: kore-workflow mock [options]

Runs a local emulator of the Kore.ai AI for Process workflow API for tests.
The first line of standard output is the base URL, such as
http://127.0.0.1:41234. Request log lines go to standard error.
Stop the emulator with Ctrl-C, SIGTERM or POST <url>/_mock/shutdown.

Options:
  --host ADDR           address to listen on (default 127.0.0.1)
  --port N              TCP port to listen on; 0 picks a free port (default 0)
  --api-key KEY         API key that requests must send in the x-api-key
                        header; it shows in the process list, so prefer
                        --api-key-file or KORE_API_KEY
  --api-key-file FILE   read the API key from the first line of FILE
  --polls N             dock-status polls that return IN_PROGRESS before a
                        job ends (default 2)
  --delay SECONDS       delay added before every API reply (default 0)
  --workflow ID[=DIR]   seed a workflow id; with =DIR, its current version is
                        read from the export directory DIR
                        (app_definition.json, flow_definition.json and,
                        when present, env_variables.json). Repeat for more
                        (default: a-00000000-0000-4000-8000-000000000001)
  --model ID            seed a model id with a small generated model file;
                        repeat for more
  --id-field NAME       job id field name in the replies that start jobs:
                        dockStatusId, dock-statusId or _id (default
                        dockStatusId)
  --export-url-field NAME
                        where a finished export's dock status carries its
                        download link: downloadUrl inside "response", or
                        downloadURL at the top level (default downloadUrl)
  --session-ttl SECONDS how long an upload session accepts chunks after it
                        starts (default 3600)
  --max-single-upload BYTES
                        file size from which POST /api/public/files answers
                        413 (default 25000000)
  --idle-exit SECONDS   exit after SECONDS without any request (default:
                        never)
  --quiet               log only errors to standard error
  -h, --help            show this help and exit

Without --api-key or --api-key-file, the key is read from the environment
variable KORE_API_KEY.

API routes, which need the key: POST /api/public/files,
POST /api/public/files/session/start, POST /api/public/files/session/ID,
POST /api/public/files/session/ID/complete, POST /api/public/workflows/import,
POST /api/public/workflows/ID/import, POST /api/public/workflows/ID/export
(also /workflow/ID/export, with an optional ?flowId=),
POST /api/public/workflows/ID/deploy, POST /api/public/workflows/ID/undeploy
(also /workflow/ID/undeploy), POST /api/public/models/ID/export,
POST /api/public/models/ID/deploy?modelType=openSource|fineTune,
POST /api/public/models/ID/undeploy, GET /api/public/dock-status/ID.

Control routes, which need no key: GET /_mock/requests, POST /_mock/reset,
POST /_mock/script, POST /_mock/workflows, GET /_mock/workflows/ID,
POST /_mock/models, GET /_mock/models/ID, GET /_mock/files/ID,
GET /_mock/exports/ID.zip (the signed download link of an export),
POST /_mock/shutdown. The header of kore_workflow/mock.lua describes each
route's request and reply.
]]

-- Option specs: `value` names the argument shown in messages, `flag` marks
-- options without one.
local OPTIONS = {
  ["--host"] = { key = "host", value = "ADDR" },
  ["--port"] = { key = "port", value = "N" },
  ["--api-key"] = { key = "api_key", value = "KEY" },
  ["--api-key-file"] = { key = "api_key_file", value = "FILE" },
  ["--polls"] = { key = "polls", value = "N" },
  ["--delay"] = { key = "delay", value = "SECONDS" },
  ["--workflow"] = { key = "workflow", value = "ID[=DIR]", list = true },
  ["--model"] = { key = "model", value = "ID", list = true },
  ["--id-field"] = { key = "id_field", value = "NAME" },
  ["--export-url-field"] = { key = "export_url_field", value = "NAME" },
  ["--session-ttl"] = { key = "session_ttl", value = "SECONDS" },
  ["--max-single-upload"] = { key = "max_single_upload", value = "BYTES" },
  ["--idle-exit"] = { key = "idle_exit", value = "SECONDS" },
  ["--quiet"] = { key = "quiet", flag = true },
  ["--help"] = { key = "help", flag = true },
  ["-h"] = { key = "help", flag = true },
}

local ID_FIELDS = { dockStatusId = true, ["dock-statusId"] = true, _id = true }
local EXPORT_URL_FIELDS = { downloadUrl = true, downloadURL = true }

local function usage_error(message)
  io.stderr:write(PROGRAM, ": ", message, "\n",
    "Try '", PROGRAM, " --help' for more information.\n")
  return 2
end

-- Collects option values from argv. Returns a table of raw strings, or nil
-- and a message. A leading "mock" subcommand word is skipped, so argv may
-- be the whole command line after the program name.
local function collect_options(argv)
  local values = { workflow = {}, model = {} }
  local count = #argv
  local i = 1
  if argv[1] == "mock" then
    i = 2
  end
  while i <= count do
    local argument = argv[i]
    local name, inline = argument:match("^(%-%-[^=]+)=(.*)$")
    name = name or argument
    local spec = OPTIONS[name]
    if not spec then
      if argument:sub(1, 1) == "-" then
        return nil, string.format("unknown option %s", argument)
      end
      return nil, string.format("unexpected argument %s", argument)
    end
    if spec.flag then
      if inline then
        return nil, string.format("option %s takes no value", name)
      end
      values[spec.key] = true
    else
      local value = inline
      if not value then
        i = i + 1
        value = argv[i]
        if value == nil then
          return nil, string.format("option %s needs a value %s", name, spec.value)
        end
      end
      if spec.list then
        table.insert(values[spec.key], value)
      else
        values[spec.key] = value
      end
    end
    i = i + 1
  end
  return values
end

local function parse_number(name, text, minimum, integer)
  local number = tonumber(text)
  if not number or number ~= number or number == math.huge or number < minimum
    or (integer and number ~= math.floor(number)) then
    local kind = integer and "a whole number" or "a number"
    return nil, string.format("invalid value %q for %s: expected %s of at least %s", text, name, kind,
      tostring(minimum))
  end
  return number
end

-- Reads the API key from the first line of a file, trimmed of surrounding
-- white space. Returns the key, or nil and a message.
local function read_key_file(path)
  local file, err = io.open(path, "r")
  if not file then
    return nil, string.format("cannot read the API key file: %s", tostring(err))
  end
  local line = file:read("*l")
  file:close()
  local key = line and line:match("^%s*(.-)%s*$")
  if not key or key == "" then
    return nil, string.format("the first line of the API key file %s is empty", path)
  end
  return key
end

-- Splits --workflow values of the form ID or ID=DIR at the first "=".
-- Returns the list of ids and the map of id to export directory, or nil,
-- nil and a message.
local function parse_workflows(values)
  local ids, dirs = {}, {}
  for _, value in ipairs(values) do
    local id, dir = value:match("^([^=]*)=(.*)$")
    id = id or value
    if id == "" then
      return nil, nil, string.format("invalid value %q for --workflow: expected ID or ID=DIR", value)
    end
    if dir then
      if dir == "" then
        return nil, nil, string.format("invalid value %q for --workflow: the directory after = is empty", value)
      end
      dirs[id] = dir
    else
      ids[#ids + 1] = id
    end
  end
  return ids, dirs
end

-- Turns raw option strings into mock.new options. Returns the options, or
-- nil and a message.
local function build_options(values)
  local options = { host = values.host }
  local err
  if values.port then
    options.port, err = parse_number("--port", values.port, 0, true)
    if not options.port then
      return nil, err
    end
    if options.port > 65535 then
      return nil, string.format("invalid value %q for --port: expected at most 65535", values.port)
    end
  end
  if values.polls then
    options.polls, err = parse_number("--polls", values.polls, 0, true)
    if not options.polls then
      return nil, err
    end
  end
  if values.delay then
    options.delay, err = parse_number("--delay", values.delay, 0, false)
    if not options.delay then
      return nil, err
    end
  end
  if values.idle_exit then
    options.idle_exit, err = parse_number("--idle-exit", values.idle_exit, 0, false)
    if not options.idle_exit then
      return nil, err
    end
    if options.idle_exit == 0 then
      return nil, "invalid value 0 for --idle-exit: expected a number of seconds greater than 0"
    end
  end
  if values.id_field then
    if not ID_FIELDS[values.id_field] then
      return nil, string.format(
        "invalid value %q for --id-field: expected dockStatusId, dock-statusId or _id", values.id_field)
    end
    options.id_field = values.id_field
  end
  if values.session_ttl then
    options.session_ttl, err = parse_number("--session-ttl", values.session_ttl, 0, false)
    if not options.session_ttl then
      return nil, err
    end
    if options.session_ttl == 0 then
      return nil, "invalid value 0 for --session-ttl: expected a number of seconds greater than 0"
    end
  end
  if values.max_single_upload then
    options.max_single_upload, err = parse_number("--max-single-upload", values.max_single_upload, 1, true)
    if not options.max_single_upload then
      return nil, err
    end
  end
  if values.export_url_field then
    if not EXPORT_URL_FIELDS[values.export_url_field] then
      return nil, string.format("invalid value %q for --export-url-field: expected downloadUrl or downloadURL",
        values.export_url_field)
    end
    options.export_url_field = values.export_url_field
  end
  if values.host == "" then
    return nil, "invalid empty value for --host"
  end
  options.workflows, options.workflow_dirs, err = parse_workflows(values.workflow)
  if not options.workflows then
    return nil, err
  end
  for _, id in ipairs(values.model) do
    if id == "" then
      return nil, "invalid empty value for --model"
    end
  end
  options.models = values.model
  return options
end

-- Finds the API key from --api-key, --api-key-file or KORE_API_KEY, in that
-- order. Returns the key, or nil and a message.
local function find_api_key(values)
  if values.api_key and values.api_key_file then
    return nil, "give only one of --api-key and --api-key-file"
  end
  if values.api_key then
    if values.api_key == "" then
      return nil, "invalid empty value for --api-key"
    end
    return values.api_key
  end
  if values.api_key_file then
    return read_key_file(values.api_key_file)
  end
  local key = os.getenv("KORE_API_KEY")
  if key and key ~= "" then
    return key
  end
  return nil, "no API key given: use --api-key-file FILE, set KORE_API_KEY, or use --api-key KEY"
end

-- Runs the subcommand. argv contains the arguments after the program name,
-- with or without the leading word "mock". Returns the exit status: 0
-- after a shutdown request, an idle exit or Ctrl-C, 1 when the emulator
-- cannot listen or fails, 2 for a usage error.
function mock_cli.run(argv)
  local values, err = collect_options(argv or {})
  if not values then
    return usage_error(err)
  end
  if values.help then
    io.stdout:write(USAGE)
    io.stdout:flush()
    return 0
  end
  local options
  options, err = build_options(values)
  if not options then
    return usage_error(err)
  end
  options.api_key, err = find_api_key(values)
  if not options.api_key then
    return usage_error(err)
  end
  local quiet = values.quiet
  options.log = function(line, kind)
    if not quiet or kind == "error" then
      io.stderr:write(PROGRAM, ": ", line, "\n")
    end
  end

  local created, server = pcall(mock.new, options)
  if not created then
    -- Drops the "file:line:" position and the function name that mock.new
    -- puts before its message, such as an unreadable --workflow directory.
    local message = tostring(server):gsub("^[^:]*:%d+: ", ""):gsub("^kore_workflow%.mock%.new: ", "")
    return usage_error(message)
  end
  local ok
  ok, err = server:listen()
  if not ok then
    io.stderr:write(PROGRAM, ": ", err, "\n")
    return 1
  end
  io.stdout:write(server:url(), "\n")
  io.stdout:flush()

  -- The standalone interpreter turns SIGINT into the error "interrupted!".
  -- SIGTERM keeps its default action and ends the process at once, which
  -- loses nothing because the emulator keeps its state only in memory.
  local reason
  ok, reason = pcall(server.run, server)
  if ok then
    return 0
  end
  server:close()
  if tostring(reason):find("interrupted!", 1, true) then
    options.log("stopping: interrupted", "info")
    return 0
  end
  io.stderr:write(PROGRAM, ": the emulator failed: ", tostring(reason), "\n")
  return 1
end

return mock_cli
