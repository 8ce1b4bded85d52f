--- kore-workflow: the command-line tool of kore_workflow.
--
-- `require("kore_workflow.cli").run(argv, io_table)` runs one command and
-- returns its exit status. It uses the kore_workflow module, which is loaded
-- on first use, so `--help` works before the C core is built.
local M = {}

local PROGRAM = "kore-workflow"
local DEFAULT_TIMEOUT = 900 -- seconds
local DEFAULT_CONTEXT = "bulkImport"
local DEFAULT_COLUMNS = 80
local REDRAW_SECONDS = 0.5 -- maximum length of one sleep while waiting, see Progress:sleeper
local CONFIG_RELATIVE_PATH = "kore-workflow/config.lua" -- under ~/.config or $XDG_CONFIG_HOME

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
  .. "name it in a profile, or set KORE_API_KEY"

---------------------------------------------------------------------------
-- Options and help text
---------------------------------------------------------------------------

-- Options that select the environment, accepted by every command that calls
-- the API except promote, which takes two environments from profiles.
local CONNECTION_OPTIONS = {
  { long = "profile", arg = "NAME",
    text = "Take the host, the API key and the CA file from the profile NAME of the profiles "
      .. "file (see Profiles below). Default: $KORE_PROFILE. With a profile, $KORE_HOST and "
      .. "$KORE_API_KEY are not used." },
  { long = "host", arg = "URL",
    text = "Base URL of the environment, such as https://ai-for-process.example.ai. Overrides "
      .. "the profile's host. Default: $KORE_HOST." },
  { long = "api-key-file", arg = "FILE",
    text = "Read the API key from the first line of FILE; surrounding white space is "
      .. "ignored. Overrides the profile's key. Default: the key in $KORE_API_KEY." },
  { long = "ca-file", arg = "FILE",
    text = "PEM file of the CA certificates that verify the server's TLS certificate. "
      .. "Overrides the profile's ca_file. Default: the system's CA store." },
}

-- Options that every command accepts.
local OUTPUT_OPTIONS = {
  { long = "json",
    text = "Print the result, or the error, as exactly one JSON object on stdout: "
      .. '{"ok": true, ...} or {"ok": false, "error": {...}}.' },
  { long = "help", short = "h", text = "Print this help and exit." },
}

local TIMEOUT_TEXT = "Maximum time to wait for the job to end, in seconds (decimals allowed). "
  .. "Default: " .. DEFAULT_TIMEOUT .. "."

local function timeout_option(text)
  return { long = "timeout", arg = "SECONDS", text = text or TIMEOUT_TEXT }
end

local function no_wait_option(what)
  return { long = "no-wait",
           text = ("Return as soon as the %s job has started and print it, usually with status "
             .. "IN_PROGRESS, instead of waiting for it to end."):format(what) }
end

local JSON_OBJECT_TEXT = "a JSON object, or @FILE to read the object from FILE"

local COMMANDS = {
  import = {
    connection = true,
    summary = "Upload a workflow's three definition files and import them",
    usage = {
      "import [OPTIONS] WORKFLOW_ID DIR|FILE.zip",
      "import [OPTIONS] WORKFLOW_ID --workflow-data FILE --flow-data FILE --env-variables FILE",
      "import [OPTIONS] --new --name NAME DIR|FILE.zip",
    },
    description = "Imports a workflow export into the existing workflow WORKFLOW_ID, where it "
      .. "becomes the new in-development version, or with --new into a new workflow. DIR is an "
      .. "export directory holding app_definition.json, flow_definition.json and "
      .. "env_variables.json, and FILE.zip an export zip as the export command or the web UI "
      .. "saves it; the three file options name the files one by one instead. Every file is "
      .. "checked to exist and to be valid JSON before anything is sent. The files are then "
      .. "uploaded, the import is started, and the command waits for the import job to end.",
    options = {
      { long = "workflow-data", arg = "FILE",
        text = "App definition file (app_definition.json of an export). Give it together "
          .. "with --flow-data and --env-variables, in place of DIR." },
      { long = "flow-data", arg = "FILE", text = "Flow definition file (flow_definition.json of an export)." },
      { long = "env-variables", arg = "FILE",
        text = "Environment variables file (env_variables.json of an export). With --new it "
          .. "may be left out, and the new workflow then has no environment variables." },
      { long = "new",
        text = "Import into a new workflow instead of an existing one; no WORKFLOW_ID is given. "
          .. "Requires --name. The new workflow's id is printed as its workflow id." },
      { long = "name", arg = "NAME",
        text = "Name of the new workflow, which must be unique in the account. Only with --new." },
      { long = "backup", arg = "FILE.zip",
        text = "Before importing, export the workflow's current version and save the zip at "
          .. "FILE.zip (replaced if it exists), so that it can be imported back. Nothing is "
          .. "uploaded until the backup is saved. Not with --new." },
      no_wait_option("import"),
      timeout_option(TIMEOUT_TEXT .. " With --backup, the export of the backup has its own "
        .. "limit of the same length."),
    },
  },
  export = {
    connection = true,
    summary = "Export a workflow and save its zip",
    usage = { "export [OPTIONS] WORKFLOW_ID" },
    description = "Exports the workflow WORKFLOW_ID, waits for the export job to end, downloads "
      .. "the zip that holds app_definition.json, flow_definition.json and env_variables.json, "
      .. "and prints its path and size in bytes. The zip can be given to import as it is.",
    options = {
      { long = "output", arg = "FILE.zip",
        text = "Where to save the zip; an existing file is replaced. Default: "
          .. "./WORKFLOW_ID.zip in the current directory, with every character other than "
          .. "letters, digits, '.', '_' and '-' replaced by '_'." },
      { long = "flow-id", arg = "ID", text = "Export only the flow with this id (sent as the flowId query)." },
      { long = "no-wait",
        text = "Return as soon as the export job has started and print it, without waiting and "
          .. "without downloading; not with --output." },
      timeout_option(),
    },
  },
  deploy = {
    connection = true,
    summary = "Deploy a workflow",
    usage = { "deploy [OPTIONS] WORKFLOW_ID" },
    description = "Deploys the in-development version of the workflow WORKFLOW_ID. By default "
      .. "the server deploys before it responds (isAsync false); with --async it responds at once "
      .. "and the command waits for the deploy job to end.",
    options = {
      { long = "async", text = "Ask the server to deploy in the background (isAsync true)." },
      no_wait_option("deploy"),
      timeout_option(),
    },
  },
  undeploy = {
    connection = true,
    summary = "Undeploy a workflow",
    usage = { "undeploy [OPTIONS] WORKFLOW_ID" },
    description = "Undeploys the workflow WORKFLOW_ID and waits for the undeploy job to end.",
    options = { no_wait_option("undeploy"), timeout_option() },
  },
  status = {
    connection = true,
    summary = "Print the status of a job, or wait for it to end",
    usage = { "status [OPTIONS] DOCK_STATUS_ID" },
    description = "Reads the job behind DOCK_STATUS_ID (the dockStatusId that the other commands "
      .. "print) and prints its status: IN_PROGRESS, SUCCESS or FAILED. A job that ended FAILED "
      .. "exits with status 1.",
    options = {
      { long = "wait", text = "Poll until the job ends SUCCESS or FAILED instead of reading its status once." },
      timeout_option(TIMEOUT_TEXT .. " Only with --wait."),
    },
  },
  upload = {
    connection = true,
    summary = "Upload one file and print its file id",
    usage = { "upload [OPTIONS] FILE" },
    description = "Uploads FILE and prints the file id that the server assigned. A file of 25 MB "
      .. "(25,000,000 bytes) or more goes through a chunked upload session. The signed download "
      .. "URL is printed without its query string, because the query carries the signature.",
    options = {
      { long = "context", arg = "CONTEXT",
        text = "File context sent with the upload. Default: " .. DEFAULT_CONTEXT
          .. ", the context for workflow definition files." },
    },
  },
  ["models export"] = {
    connection = true,
    summary = "Export a model, and save it with --output",
    usage = { "models export [OPTIONS] MODEL_ID" },
    description = "Exports the model MODEL_ID and waits for the export job to end. With --output "
      .. "the exported file is downloaded and its path and size in bytes are printed; without "
      .. "it, only the job is printed, with the download link cut before its signature.",
    options = {
      { long = "output", arg = "FILE",
        text = "Save the exported model at FILE (replaced if it exists). Not with --no-wait." },
      no_wait_option("export"),
      timeout_option(),
    },
  },
  ["models deploy"] = {
    connection = true,
    summary = "Deploy a model",
    usage = { "models deploy [OPTIONS] MODEL_ID --type openSource|fineTune --name NAME" },
    description = "Deploys the model MODEL_ID under the deployment name NAME and waits for the "
      .. "deploy job to end. Note: lua-cjson 2.1 reads an empty JSON array as an empty table, "
      .. "so [] inside a JSON option is sent as {}.",
    options = {
      { long = "type", arg = "TYPE", text = "Model type, openSource or fineTune (sent as the modelType query)." },
      { long = "name", arg = "NAME", text = "Name of the deployment (the name field)." },
      { long = "device-type", arg = "TYPE",
        text = "Device to deploy on (the deviceType field), such as a GPU model name." },
      { long = "hyper-parameters", arg = "JSON",
        text = "Hyperparameters (the hyperParameters field): " .. JSON_OBJECT_TEXT .. "." },
      { long = "scaling-parameters", arg = "JSON",
        text = "Scaling parameters (the scalingParameters field): " .. JSON_OBJECT_TEXT .. "." },
      { long = "optimization-info", arg = "JSON",
        text = "Optimization settings (the optimizationInfo field): " .. JSON_OBJECT_TEXT .. "." },
      no_wait_option("deploy"),
      timeout_option(),
    },
  },
  ["models undeploy"] = {
    connection = true,
    summary = "Undeploy a model",
    usage = { "models undeploy [OPTIONS] MODEL_ID" },
    description = "Undeploys the model MODEL_ID and waits for the undeploy job to end.",
    options = { no_wait_option("undeploy"), timeout_option() },
  },
  ["models import"] = {
    connection = true,
    summary = "Upload a model file and import it",
    usage = { "models import [OPTIONS] FILE" },
    description = "Uploads FILE through a chunked upload session with the file context model, "
      .. "which imports it as a new model, and waits for the import job to end. The new model's "
      .. "id is printed as its model id.",
    options = { no_wait_option("import"), timeout_option() },
  },
  promote = {
    connection = false,
    summary = "Copy a workflow from one environment to another",
    usage = {
      "promote [OPTIONS] WORKFLOW_ID --from PROFILE --to PROFILE [--target-workflow ID]",
      "promote [OPTIONS] WORKFLOW_ID --from PROFILE --to PROFILE --new-name NAME",
    },
    description = "Exports the workflow WORKFLOW_ID from the environment of the profile --from "
      .. "into a zip, imports the zip into the environment of the profile --to, waits for the "
      .. "import, and with --deploy deploys the result. The target is the workflow of the same id, "
      .. "another one with --target-workflow, or a new workflow with --new-name. Progress goes to "
      .. "stderr while each step runs, and one line per finished step to stdout. When a step "
      .. "fails after the export, the command names the step, keeps the export zip, and prints its "
      .. "path and the command that repeats the failed step. Both environments "
      .. "come from the profiles file, so --profile, --host, --api-key-file and --ca-file are "
      .. "not accepted.",
    options = {
      { long = "from", arg = "PROFILE", text = "Profile of the environment to export from." },
      { long = "to", arg = "PROFILE", text = "Profile of the environment to import into." },
      { long = "target-workflow", arg = "ID",
        text = "Existing workflow to import into. Default: the workflow with the id WORKFLOW_ID "
          .. "in the target environment." },
      { long = "new-name", arg = "NAME",
        text = "Import into a new workflow with this name, unique in the target account, "
          .. "instead of an existing one. Not with --target-workflow or --backup." },
      { long = "deploy", text = "After the import, deploy the target workflow (isAsync false)." },
      { long = "backup", arg = "FILE.zip",
        text = "Before importing, export the target workflow's current version and save it at "
          .. "FILE.zip (replaced if it exists). Nothing is imported unless the backup is saved." },
      { long = "keep-export", arg = "FILE.zip",
        text = "Save the export at FILE.zip (replaced if it exists) and keep it. Default: a "
          .. "temporary file, removed when every step succeeded." },
      timeout_option("Maximum time to wait for each job (export, backup, import, deploy) to "
        .. "end, in seconds (decimals allowed). Default: " .. DEFAULT_TIMEOUT .. "."),
    },
  },
}

local COMMAND_ORDER = {
  "import", "export", "deploy", "undeploy", "status", "upload",
  "models export", "models deploy", "models undeploy", "models import", "promote",
}

local MODEL_COMMANDS = { "export", "deploy", "undeploy", "import" }

local ENVIRONMENT_HELP = {
  { "KORE_HOST", "Base URL of the environment, used when neither --host nor a profile is given." },
  { "KORE_API_KEY", "API key, used when neither --api-key-file nor a profile is given." },
  { "KORE_PROFILE", "Profile to use when --profile is not given." },
  { "KORE_WORKFLOW_CONFIG", "Path of the profiles file. Default: $XDG_CONFIG_HOME/"
    .. CONFIG_RELATIVE_PATH .. " when XDG_CONFIG_HOME is an absolute path, else ~/.config/"
    .. CONFIG_RELATIVE_PATH .. "." },
  { "KORE_WORKFLOW_DEBUG", "Set to 1 to print the Lua traceback of an internal error." },
  { "KORE_WORKFLOW_LUA", "Lua interpreter that the kore-workflow launcher runs. Default: lua5.4." },
  { "COLUMNS", "Width of the terminal progress line. Default: " .. DEFAULT_COLUMNS .. "." },
}

local EXIT_HELP = {
  { "0", "Success." },
  { "1", "The job ended FAILED." },
  { "2", "Usage error: a bad option or argument, no host or API key, an invalid key, an "
    .. "invalid profiles file, or a local file that is missing, unreadable or not valid JSON. "
    .. "Nothing was imported." },
  { "3", "API or network error: an HTTP error status, a connection or TLS failure, an "
    .. "invalid response, a redirect, a request whose outcome is unknown, or an internal error." },
  { "4", "Timed out: the job did not end within --timeout, or the server did not answer in time." },
  { "130", "Interrupted with Ctrl-C." },
}

local PROFILES_HELP_INTRO = "A profiles file names environments, so that --profile NAME (or "
  .. "$KORE_PROFILE) selects a host, its API key and its CA file, and promote can copy between "
  .. "two of them. The file is $KORE_WORKFLOW_CONFIG, else $XDG_CONFIG_HOME/" .. CONFIG_RELATIVE_PATH
  .. ", else ~/.config/" .. CONFIG_RELATIVE_PATH .. ". It is Lua source text that returns a table; "
  .. "it runs with no global variables at all, so it cannot call library functions or read "
  .. "the environment:"

local PROFILES_HELP_EXAMPLE = [[
    return {
      profiles = {
        staging = {
          host = "https://staging.example.ai",
          api_key_file = "~/.config/kore-workflow/staging.key",
        },
        production = {
          host = "https://ai-for-process.example.ai",
          api_key_env = "KORE_PROD_KEY",
          ca_file = "/etc/ssl/certs/corp-ca.pem",
        },
      },
    }]]

local PROFILES_HELP_FIELDS = "A profile has a host, exactly one of api_key_file (a file whose "
  .. "first line is the key) and api_key_env (the name of an environment variable that holds "
  .. "the key), and optionally ca_file. In api_key_file and ca_file, a leading ~ is the home "
  .. "directory and a relative path is relative to the profiles file's directory. A profile "
  .. "must not contain the key itself: a file with an api_key field is rejected, because "
  .. "configuration files get copied, shared and committed."

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

local function profiles_help()
  return table.concat({
    "Profiles:",
    wrap(PROFILES_HELP_INTRO, "  ", HELP_WIDTH),
    "",
    PROFILES_HELP_EXAMPLE,
    "",
    wrap(PROFILES_HELP_FIELDS, "  ", HELP_WIDTH),
  }, "\n")
end

local function connection_command_names()
  local names = {}
  for _, name in ipairs(COMMAND_ORDER) do
    if COMMANDS[name].connection then
      names[#names + 1] = name
    end
  end
  return table.concat(names, ", ")
end

-- Returns the help text shared by the commands: the connection options when
-- `connection` is true, then profiles, environment and exit statuses.
local function common_help(connection)
  local parts = {}
  if connection then
    parts[#parts + 1] = wrap("Options that select the environment (" .. connection_command_names()
      .. "):", "", HELP_WIDTH)
    parts[#parts + 1] = format_entries(option_entries(CONNECTION_OPTIONS))
    parts[#parts + 1] = ""
  end
  parts[#parts + 1] = "Options of every command:"
  parts[#parts + 1] = format_entries(option_entries(OUTPUT_OPTIONS))
  parts[#parts + 1] = ""
  parts[#parts + 1] = wrap(KEY_ON_COMMAND_LINE:sub(1, 1):upper() .. KEY_ON_COMMAND_LINE:sub(2) .. ".",
    "", HELP_WIDTH)
  parts[#parts + 1] = ""
  parts[#parts + 1] = profiles_help()
  parts[#parts + 1] = ""
  parts[#parts + 1] = "Environment:"
  parts[#parts + 1] = format_entries(ENVIRONMENT_HELP)
  parts[#parts + 1] = ""
  parts[#parts + 1] = "Exit status:"
  parts[#parts + 1] = format_entries(EXIT_HELP)
  return table.concat(parts, "\n")
end

local function command_list(names)
  local entries = {}
  for _, name in ipairs(names) do
    entries[#entries + 1] = { name, COMMANDS[name].summary .. "." }
  end
  return entries
end

local function tool_help()
  local commands = command_list(COMMAND_ORDER)
  commands[#commands + 1] = { "mock", "Run the local emulator of the API; see '" .. PROGRAM .. " mock --help'." }
  commands[#commands + 1] = { "help [COMMAND]", "Print this help, or the help of COMMAND." }
  return table.concat({
    "Usage: " .. PROGRAM .. " COMMAND [OPTIONS] [ARGUMENTS]",
    "       " .. PROGRAM .. " COMMAND --help",
    "",
    wrap("Manages workflows and models of a Kore.ai AI for Process environment through its "
      .. "management API: imports, exports, deploys and undeploys them, follows their jobs, and "
      .. "promotes a workflow from one environment to another.", "", HELP_WIDTH),
    "",
    "Commands:",
    format_entries(commands),
    "",
    "Options of the tool itself:",
    format_entries({ { "-h, --help", "Print this help and exit." },
                     { "--version", "Print the version and exit." } }),
    "",
    common_help(true),
    "",
  }, "\n")
end

local function models_help()
  local names, usage = {}, {}
  for _, sub in ipairs(MODEL_COMMANDS) do
    names[#names + 1] = "models " .. sub
    usage[#usage + 1] = (#usage == 0 and "Usage: " or "       ") .. PROGRAM .. " "
      .. COMMANDS["models " .. sub].usage[1]
  end
  return table.concat({
    table.concat(usage, "\n"),
    "",
    "Commands:",
    format_entries(command_list(names)),
    "",
    "Run '" .. PROGRAM .. " models COMMAND --help' for the options of each.",
    "",
    common_help(true),
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
    common_help(command.connection),
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

local COMMAND_NAMES_TEXT = "import, export, deploy, undeploy, status, upload, models, promote and mock"

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

-- Returns a URL without its query string and fragment, where a signed link
-- carries its signature.
local function without_query(url)
  return (url:match("^[^?#]*"))
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
    secrets = {},
    command = nil,
    progress = nil,
    dock_status_id = nil,
    kept_export = nil, -- path of promote's export zip, named when a later step is interrupted
    profiles = nil, -- the loaded profiles file, see load_profiles
  }, Context)
end

-- Stores an API key so that every later write replaces it with "***". The
-- longest key is replaced first, so a key that contains another is never
-- left half visible.
function Context:add_secret(key)
  local trimmed = key:match("^[ \t\r\n]*(.-)[ \t\r\n]*$")
  if trimmed == "" then
    return
  end
  for _, secret in ipairs(self.secrets) do
    if secret == trimmed then
      return
    end
  end
  self.secrets[#self.secrets + 1] = trimmed
  table.sort(self.secrets, function(a, b)
    return #a > #b
  end)
end

function Context:redact(text)
  for _, secret in ipairs(self.secrets) do
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
    text = table.concat(parts)
  end
  return text
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
    json_codec.decode_invalid_numbers(false)
    json_codec.decode_max_depth(200)
  end
  return json_codec
end

-- Returns a copy of value that cjson can encode, with the API keys redacted
-- from every string and the query cut from every string whose key ends in
-- "url" (a signed link's signature).
function Context:json_value(value, depth, key)
  local kind = type(value)
  if value == nil or value == codec().null then
    return codec().null
  elseif kind == "string" then
    if type(key) == "string" and key:lower():sub(-3) == "url" then
      value = without_query(value)
    end
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
      local copy_key = type(k) == "number" and k or self:redact(tostring(k))
      copy[copy_key] = self:json_value(v, depth + 1, k)
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

-- Returns { no_wait, timeout } of a command that waits for its job unless
-- --no-wait is given.
local function parse_wait(values, command)
  if values["no-wait"] and values.timeout then
    usage_error("--timeout applies only when the command waits; leave out --no-wait", command)
  end
  return { no_wait = values["no-wait"] == true, timeout = parse_timeout(values.timeout, command) }
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

-- Returns the value of a string option, raising a usage error when it is
-- given empty; nil when it is not given.
local function optional_text(values, name, command)
  local value = values[name]
  if value == "" then
    usage_error(("--%s must not be empty"):format(name), command)
  end
  return value
end

local function nonempty(value)
  if value == nil or value == "" then
    return nil
  end
  return value
end

---------------------------------------------------------------------------
-- Profiles
---------------------------------------------------------------------------

-- Fields a profile may have. The key itself (api_key) is rejected with its
-- own message, see check_profile.
local PROFILE_FIELDS = { host = true, api_key_file = true, api_key_env = true, ca_file = true }
local PROFILE_FIELDS_TEXT = "host, api_key_file, api_key_env and ca_file"

-- Returns the path of the profiles file.
local function profiles_path(ctx)
  local configured = nonempty(ctx.getenv("KORE_WORKFLOW_CONFIG"))
  if configured then
    return configured
  end
  -- The XDG Base Directory specification ignores a relative XDG_CONFIG_HOME.
  local xdg = nonempty(ctx.getenv("XDG_CONFIG_HOME"))
  if xdg and xdg:sub(1, 1) == "/" then
    return xdg .. "/" .. CONFIG_RELATIVE_PATH
  end
  local home = nonempty(ctx.getenv("HOME"))
  if not home then
    usage_error("cannot find the profiles file, because HOME is not set; set KORE_WORKFLOW_CONFIG "
      .. "to the file's path", ctx.command)
  end
  return home .. "/.config/" .. CONFIG_RELATIVE_PATH
end

-- Compiles the text of a profiles file as Lua source, never as a compiled
-- chunk, with an empty table as its global environment.
local function compile_profiles(text, path)
  if text:sub(1, 1) == "\27" then
    return nil, "it is a compiled Lua chunk; write it as Lua source text"
  end
  local chunk_name = "@" .. path
  -- Lua 5.1 and LuaJIT: load takes no environment there, so setfenv sets it.
  if _VERSION == "Lua 5.1" then
    local chunk, syntax_error = loadstring(text, chunk_name)
    if chunk then
      setfenv(chunk, {})
    end
    return chunk, syntax_error
  end
  return load(text, chunk_name, "t", {})
end

local function profile_where(name, path)
  return ("profile '%s' in %s"):format(printable(name, true), path)
end

-- Raises a usage error unless the profile table is valid. Messages name
-- fields but never print a field's value, which could be a key.
local function check_profile(name, profile, path, command)
  local where = profile_where(name, path)
  if type(profile) ~= "table" then
    usage_error(("%s must be a table such as { host = \"https://...\", api_key_file = \"...\" }, "
      .. "got a %s"):format(where, type(profile)), command)
  end
  if profile.api_key ~= nil then
    usage_error(("%s has an api_key field, which is rejected: a key written in a configuration "
      .. "file gets copied, shared and committed with it. Remove the field, put the key in a file "
      .. "that only you can read and name it with api_key_file, or name an environment variable "
      .. "that holds it with api_key_env"):format(where), command)
  end
  for field, value in pairs(profile) do
    if type(field) ~= "string" or not PROFILE_FIELDS[field] then
      usage_error(("%s has an unknown field '%s'; the fields are %s")
        :format(where, printable(field, true), PROFILE_FIELDS_TEXT), command)
    end
    if type(value) ~= "string" or value == "" then
      usage_error(("field %s of %s must be a non-empty string, got %s")
        :format(field, where, type(value) == "string" and "an empty string" or ("a " .. type(value))),
        command)
    end
  end
  if profile.api_key_file and profile.api_key_env then
    usage_error(("%s has both api_key_file and api_key_env; keep the one that names the key")
      :format(where), command)
  end
  if profile.api_key_env and not profile.api_key_env:match("^[%a_][%w_]*$") then
    usage_error(("field api_key_env of %s must be the name of an environment variable, such as "
      .. "KORE_PROD_KEY"):format(where), command)
  end
end

-- Loads and checks the profiles file once per run; returns its profiles
-- table and path.
local function load_profiles(ctx)
  if ctx.profiles then
    return ctx.profiles.profiles, ctx.profiles.path
  end
  local command = ctx.command
  local path = profiles_path(ctx)
  local handle, open_error = io.open(path, "rb")
  if not handle then
    usage_error(("cannot read the profiles file (%s); create it, or set KORE_WORKFLOW_CONFIG to "
      .. "its path"):format(open_error), command)
  end
  local text, read_error = handle:read("*a")
  handle:close()
  if text == nil then
    usage_error(("cannot read the profiles file %s (%s); KORE_WORKFLOW_CONFIG must name a file")
      :format(path, tostring(read_error)), command)
  end
  local chunk, compile_error = compile_profiles(text, path)
  if not chunk then
    usage_error(("the profiles file %s is not valid Lua: %s"):format(path, compile_error), command)
  end
  local ok, result = pcall(chunk)
  if not ok then
    usage_error(("the profiles file %s raised an error: %s; it runs with no global variables, "
      .. "so it can only return a table of constants"):format(path, tostring(result)), command)
  end
  if type(result) ~= "table" then
    usage_error(("the profiles file %s must return a table such as { profiles = { staging = { "
      .. "host = \"https://...\", api_key_file = \"...\" } } }, but it returned a %s")
      :format(path, type(result)), command)
  end
  for field in pairs(result) do
    if field ~= "profiles" then
      usage_error(("the profiles file %s has an unknown field '%s'; the only field is profiles")
        :format(path, printable(field, true)), command)
    end
  end
  if type(result.profiles) ~= "table" then
    usage_error(("the profiles file %s has no profiles table; return { profiles = { NAME = { "
      .. "host = ..., api_key_file = ... } } }"):format(path), command)
  end
  for name, profile in pairs(result.profiles) do
    if type(name) ~= "string" then
      usage_error(("the profiles table in %s must be keyed by profile names, got a %s key")
        :format(path, type(name)), command)
    end
    check_profile(name, profile, path, command)
  end
  ctx.profiles = { profiles = result.profiles, path = path }
  return result.profiles, path
end

-- Returns the profile called name and the path of its file; `option` names
-- where the name came from, for the message when it is not there.
local function find_profile(ctx, name, option)
  local profiles, path = load_profiles(ctx)
  local profile = profiles[name]
  if profile == nil then
    local names = {}
    for known in pairs(profiles) do
      names[#names + 1] = known
    end
    table.sort(names)
    local known_text = #names > 0 and ("the profiles there are " .. table.concat(names, ", "))
      or "it has no profiles"
    usage_error(("%s names the profile '%s', which is not in %s; %s")
      :format(option, printable(name, true), path, known_text), ctx.command)
  end
  return profile, path
end

-- Returns the directory part of a path, "." when it has none.
local function directory_of(path)
  return path:match("^(.*)/[^/]*$") or "."
end

-- Expands a path field of a profile: a leading ~ is the home directory, and
-- a relative path is taken relative to the profiles file's directory.
local function profile_file_path(ctx, value, field, name, path)
  if value == "~" or value:sub(1, 2) == "~/" then
    local home = nonempty(ctx.getenv("HOME"))
    if not home then
      usage_error(("field %s of %s starts with ~, but HOME is not set; write the full path")
        :format(field, profile_where(name, path)), ctx.command)
    end
    return home .. value:sub(2)
  elseif value:sub(1, 1) == "~" then
    usage_error(("field %s of %s starts with ~USER, which is not supported; write the full path")
      :format(field, profile_where(name, path)), ctx.command)
  elseif value:sub(1, 1) ~= "/" then
    return directory_of(path) .. "/" .. value
  end
  return value
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

-- Returns the first line of the key file. Raises a usage error when the
-- file cannot be read or contains no key; `source` names where the path
-- came from, and `fix` says what to change.
local function read_key_file(path, source, fix, command)
  local handle, open_error = io.open(path, "rb")
  if not handle then
    usage_error(("cannot read the API key file named by %s (%s); %s"):format(source, open_error, fix),
      command)
  end
  local line = handle:read("*l")
  handle:close()
  if line == nil or not line:find("%S") then
    usage_error(("the API key file '%s' named by %s is empty; put the key on its first line")
      :format(path, source), command)
  end
  return line
end

-- Returns the connection settings { host, host_source, key, key_source,
-- ca_file, ca_source, profile } from the options, the profile and the
-- environment, in that order of precedence. `profile_option` names the
-- option that chose the profile, for messages.
local function resolve_connection(ctx, values, profile_option)
  local command = ctx.command
  local name = values.profile
  profile_option = profile_option or "--profile"
  if name == "" then
    usage_error(profile_option .. " must not be empty", command)
  elseif name == nil then
    name = nonempty(ctx.getenv("KORE_PROFILE"))
    profile_option = "KORE_PROFILE"
  end
  local profile, path
  if name then
    profile, path = find_profile(ctx, name, profile_option)
  end
  local connection = { profile = name }

  if values.host then
    connection.host, connection.host_source = values.host, "--host"
  elseif profile then
    if not profile.host then
      usage_error(("%s has no host field; add host = \"https://...\" or pass --host URL")
        :format(profile_where(name, path)), command)
    end
    connection.host = profile.host
    connection.host_source = "field host of " .. profile_where(name, path)
  else
    connection.host = nonempty(ctx.getenv("KORE_HOST"))
    connection.host_source = "KORE_HOST"
    if connection.host == nil then
      usage_error("no host is set; set KORE_HOST, pass --host URL, such as "
        .. "https://ai-for-process.example.ai, or choose a profile with --profile NAME", command)
    end
  end

  if values["api-key-file"] then
    connection.key = read_key_file(values["api-key-file"], "--api-key-file",
      "pass a readable file to --api-key-file", command)
    connection.key_source = "the file " .. values["api-key-file"]
  elseif profile and profile.api_key_file then
    local source = "field api_key_file of " .. profile_where(name, path)
    local key_path = profile_file_path(ctx, profile.api_key_file, "api_key_file", name, path)
    connection.key = read_key_file(key_path, source, "fix the path in the profile, or make the "
      .. "file readable", command)
    connection.key_source = "the file " .. key_path
  elseif profile and profile.api_key_env then
    local variable = profile.api_key_env
    connection.key = nonempty(ctx.getenv(variable))
    connection.key_source = variable
    if connection.key == nil then
      usage_error(("the environment variable %s, named by field api_key_env of %s, is not set or "
        .. "empty; export the key in it"):format(variable, profile_where(name, path)), command)
    end
  elseif profile then
    usage_error(("%s names no API key; add api_key_file = \"~/.config/kore-workflow/%s.key\" or "
      .. "api_key_env = \"VARIABLE\", or pass --api-key-file FILE")
      :format(profile_where(name, path), printable(name, true)), command)
  else
    connection.key = nonempty(ctx.getenv("KORE_API_KEY"))
    connection.key_source = "KORE_API_KEY"
    if connection.key == nil then
      usage_error("no API key is set; set KORE_API_KEY, pass --api-key-file FILE, or choose a "
        .. "profile with --profile NAME", command)
    end
  end

  if values["ca-file"] then
    connection.ca_file, connection.ca_source = values["ca-file"], "--ca-file"
  elseif profile and profile.ca_file then
    connection.ca_file = profile_file_path(ctx, profile.ca_file, "ca_file", name, path)
    connection.ca_source = "field ca_file of " .. profile_where(name, path)
  end
  return connection
end

-- Creates the client of a resolved connection.
local function connect(ctx, connection)
  local command = ctx.command
  ctx:add_secret(connection.key)
  local kw = load_library()
  local ok, client = pcall(kw.client, { host = connection.host, api_key = connection.key,
                                        ca_file = connection.ca_file })
  if not ok then
    local message = strip_position(tostring(client))
    if not message:find("bad argument", 1, true) then
      error(client, 0)
    end
    if message:find("(api_key)", 1, true) then
      message = ("the API key from %s is invalid: %s"):format(connection.key_source, message)
    elseif message:find("(host)", 1, true) then
      message = ("the host from %s is invalid: %s"):format(connection.host_source, message)
    elseif message:find("(ca_file)", 1, true) then
      message = ("the CA file from %s is invalid: %s"):format(connection.ca_source or "--ca-file", message)
    end
    usage_error(message, command)
  end
  return client, kw
end

-- Creates the client from the connection options, the profile and the environment.
local function open_client(ctx, values)
  return connect(ctx, resolve_connection(ctx, values))
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

-- Returns one "label:   value" line of a human-readable result, with the
-- values aligned after the longest label, "percent complete:".
local function result_line(label, value)
  return ("%-18s %s\n"):format(label .. ":", value)
end

local JOB_FIELDS = {
  { "dockStatusId", "dock status id" },
  { "status", "status" },
  { "workflowId", "workflow id" },
  { "modelId", "model id" },
  { "jobType", "job type" },
  { "action", "action" },
  { "percentageComplete", "percent complete" },
  { "downloadUrl", "download url", url = true },
}

local function format_fields(record, fields)
  local lines = {}
  for _, field in ipairs(fields) do
    local value = record[field[1]]
    if value ~= nil and type(value) ~= "table" then
      local text = printable(value, true)
      if field.url and without_query(text) ~= text then
        text = without_query(text) .. " (signature query omitted)"
      end
      lines[#lines + 1] = result_line(field[2], text)
    end
  end
  return table.concat(lines)
end

-- Returns a job's status for the progress line, with the percentage that
-- model jobs report, such as "IN_PROGRESS 40%".
local function job_status_text(job)
  local text = tostring(job.status)
  local percent = tonumber(job.percentageComplete)
  if percent and percent >= 0 and percent <= 100 then
    text = ("%s %d%%"):format(text, math.floor(percent))
  end
  return text
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

-- Returns the one-line text of a library error without the library's own
-- "kore_workflow: " prefix.
local function error_line(err)
  local line = tostring(err):gsub("^kore_workflow: ", "")
  return printable(line, true)
end

-- Prints a library error (a kore_workflow error table) and returns the exit
-- status. `extra` holds fields added to the JSON object, and `notes` lines
-- printed on stderr after the error.
local function report_error(ctx, err, extra, notes)
  command_line_hint(err)
  local job = type(err.job) == "table" and err.job or nil
  if ctx.json then
    local object = { ok = false, error = error_fields(err), job = job }
    for k, v in pairs(extra or {}) do
      object[k] = v
    end
    ctx:emit_json(object)
  else
    if err.kind == "job_failed" and job then
      ctx:out(format_fields(job, JOB_FIELDS))
    end
    ctx:err(PROGRAM .. ": " .. error_line(err) .. "\n")
    for _, note in ipairs(notes or {}) do
      ctx:err(PROGRAM .. ": " .. printable(note, true) .. "\n")
    end
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

-- Returns the job_failed error of a job that ended FAILED.
local function failed_job_error(client, job, hint)
  local message = ("job %s ended FAILED"):format(tostring(job.dockStatusId))
  if type(job.message) == "string" and job.message ~= "" then
    message = message .. ": " .. job.message
  end
  return client:new_error {
    kind = "job_failed",
    id = job.dockStatusId and tostring(job.dockStatusId) or nil,
    job = job,
    retryable = false,
    message = message,
    hint = hint or "read the server's reason in the job, fix the cause, then retry",
  }
end

-- Reports the job a command ended with: success, or a job that ended
-- FAILED. Options: job_name ("the import", named when the job goes on without
-- the tool), failed_hint, lines (printed before the job's fields) and json
-- (fields added to the JSON object).
local function finish_job(ctx, client, job, err, options)
  options = options or {}
  if not job then
    return report_error(ctx, err)
  end
  if job.status == "FAILED" then
    return report_error(ctx, failed_job_error(client, job, options.failed_hint))
  end
  if ctx.json then
    local object = { ok = true, job = job }
    for k, v in pairs(options.json or {}) do
      object[k] = v
    end
    ctx:emit_json(object)
  else
    ctx:out((options.lines or "") .. format_fields(job, JOB_FIELDS))
    if job.status ~= "SUCCESS" and options.job_name and job.dockStatusId ~= nil then
      ctx:err(("%s: %s continues on the server; follow it with '%s status %s --wait'\n")
        :format(PROGRAM, options.job_name, PROGRAM, printable(job.dockStatusId, true)))
    end
  end
  return EXIT_OK
end

-- Waits for a job that has not ended yet, unless wait.no_wait is set.
-- Returns the final job, or nil and an error. The final job keeps the
-- workflowId and modelId of the start record when the dock status lacks them.
local function wait_for_job(ctx, client, kw, progress, job, wait, label, prefix)
  if wait.no_wait or job.status == "SUCCESS" or job.status == "FAILED" then
    return job
  end
  ctx.dock_status_id = job.dockStatusId
  progress:step((prefix or "") .. "waiting for dock status " .. tostring(job.dockStatusId),
    job_status_text(job))
  local final, err = client:wait(job.dockStatusId, {
    timeout = wait.timeout,
    label = label,
    on_progress = function(current)
      progress:set_status(job_status_text(current))
    end,
    sleep = progress:sleeper(kw.sleep),
  })
  if final then
    for _, field in ipairs({ "workflowId", "modelId" }) do
      if final[field] == nil then
        final[field] = job[field]
      end
    end
  end
  return final, err
end

-- Prints a downloaded file and the job that produced it.
local function report_saved(ctx, saved, job)
  if ctx.json then
    ctx:emit_json({ ok = true, job = job,
                    file = { path = saved.path, bytes = saved.bytes, contentType = saved.content_type } })
  else
    ctx:out(result_line("file", printable(saved.path, true))
      .. result_line("size", tostring(saved.bytes) .. " bytes") .. format_fields(job, JOB_FIELDS))
  end
  return EXIT_OK
end

-- Returns the size of a file in bytes, or nil when it cannot be read.
local function file_size(path)
  local handle = io.open(path, "rb")
  if not handle then
    return nil
  end
  local size = handle:seek("end")
  handle:close()
  return size
end

-- Quotes a word for a shell command shown in a hint, unless it needs no quotes.
local function shell_word(text)
  text = tostring(text)
  if text:match("^[%w%./_:@%%+=,-]+$") then
    return text
  end
  return "'" .. text:gsub("'", "'\\''") .. "'"
end

---------------------------------------------------------------------------
-- Definition files
---------------------------------------------------------------------------

local FILE_OPTIONS = {
  { option = "workflow-data", role = "workflow_data" },
  { option = "flow-data", role = "flow_data" },
  { option = "env-variables", role = "env_variables" },
}

local IMPORT_FAILED_HINT = "check the definition files and the server's reason, then retry"

-- Returns the source of an import: the directory or zip at positional
-- argument `index`, or the table of the file options' paths. With
-- `env_optional`, --env-variables may be left out of the file options.
local function import_source(values, positional, index, env_optional)
  local command = "import"
  local provided, missing = {}, {}
  for _, file in ipairs(FILE_OPTIONS) do
    if values[file.option] == "" then
      usage_error(("--%s must not be empty"):format(file.option), command)
    elseif values[file.option] then
      provided[#provided + 1] = file
    elseif not (env_optional and file.role == "env_variables") then
      missing[#missing + 1] = "--" .. file.option
    end
  end
  if #provided == 0 then
    if positional[index] == nil then
      usage_error("missing DIR: pass the export directory or zip, or --workflow-data, --flow-data "
        .. "and --env-variables", command)
    end
    return required_argument(positional, index, "DIR", command)
  end
  if positional[index] ~= nil then
    usage_error("pass either DIR or the file options, not both", command)
  end
  if #missing > 0 then
    local together = env_optional and "--workflow-data and --flow-data"
      or "--workflow-data, --flow-data and --env-variables"
    usage_error(("missing %s: %s must be given together"):format(table.concat(missing, " and "), together),
      command)
  end
  local source = {}
  for _, file in ipairs(provided) do
    source[file.role] = values[file.option]
  end
  return source
end

local function join_path(dir, name)
  if dir:sub(-1) == "/" then
    return dir .. name
  end
  return dir .. "/" .. name
end

-- Returns the definition list { role, file, field, path, dir or zip } that
-- the client's file checks take, for a directory, a zip or a table of paths.
-- A role missing from the table is left out.
local function definition_list(kw, source)
  local defs = {}
  local is_zip = type(source) == "string" and source:lower():match("%.zip$") ~= nil
  for _, file in ipairs(kw.definition_files) do
    local def = { role = file.role, file = file.file, field = file.field }
    if is_zip then
      def.zip, def.path = source, source .. ":" .. file.file
    elseif type(source) == "string" then
      def.dir, def.path = source, join_path(source, file.file)
    else
      def.path = source[file.role]
    end
    if def.path then
      defs[#defs + 1] = def
    end
  end
  return defs
end

-- Checks, uploads and imports the definition files of source as a new
-- workflow called name, then waits for the job unless options.wait is false.
-- Returns the job (its workflowId is the new workflow), or nil and an error.
-- NOTE: the library has no public call that uploads definitions for a new
-- workflow, so this runs the client's own checks, _read_zip and
-- _check_definition, which import_files runs for an existing workflow.
local function import_new_workflow(client, kw, name, source, options)
  local on_step = options.on_step
  local defs = definition_list(kw, source)
  on_step("check", { files = defs })
  if defs[1].zip then
    local ok, err = client:_read_zip(defs)
    if not ok then
      return nil, err
    end
  end
  for _, def in ipairs(defs) do
    local ok, err = client:_check_definition(def)
    if not ok then
      return nil, err
    end
  end

  local fields = { workflowName = name }
  for _, def in ipairs(defs) do
    on_step("upload", { role = def.role, path = def.path })
    local file, err
    if def.content then
      file, err = client.files.upload_data(def.file, def.content, { context = DEFAULT_CONTEXT })
    else
      file, err = client.files.upload(def.path, { context = DEFAULT_CONTEXT })
    end
    if not file then
      return nil, err
    end
    fields[def.field] = file.fileId
  end

  on_step("import", { name = name })
  local job, err = client.workflow.import_new(fields)
  if not job then
    return nil, err
  end
  if options.wait == false or job.status == "SUCCESS" or job.status == "FAILED" then
    return job
  end
  on_step("wait", { job = job })
  local final, wait_error = client:wait(job.dockStatusId, {
    timeout = options.timeout,
    label = ("import of new workflow %s"):format(name),
    on_progress = options.on_progress,
    sleep = options.sleep,
  })
  if final and final.workflowId == nil then
    final.workflowId = job.workflowId
  end
  return final, wait_error
end

local function describe_step(step, detail)
  if step == "check" then
    return "checking the definition files"
  elseif step == "backup" then
    return ("backing up workflow %s to %s"):format(tostring(detail.workflow_id), tostring(detail.path))
  elseif step == "upload" then
    return "uploading " .. tostring(detail.path)
  elseif step == "import" and detail.name then
    return "importing as the new workflow " .. tostring(detail.name)
  elseif step == "import" then
    return "importing into workflow " .. tostring(detail.workflow_id)
  elseif step == "wait" then
    return "waiting for dock status " .. tostring(detail.job and detail.job.dockStatusId)
  end
  return tostring(step)
end

-- Returns an on_step function for import_files and import_new_workflow
-- that shows each step on the progress line, after `prefix`.
local function step_reporter(ctx, progress, prefix)
  return function(step, detail)
    detail = detail or {}
    if step == "wait" and detail.job then
      ctx.dock_status_id = detail.job.dockStatusId
    end
    local status = step == "wait" and detail.job and job_status_text(detail.job) or nil
    progress:step(prefix .. describe_step(step, detail), status)
  end
end

---------------------------------------------------------------------------
-- Workflow commands
---------------------------------------------------------------------------

local function run_import_new(ctx, values, positional)
  local command = "import"
  if values.backup then
    usage_error("--backup applies only to an import into an existing workflow; a new workflow has "
      .. "no version to back up", command)
  end
  local name = optional_text(values, "name", command)
  if not name then
    usage_error("--new requires --name NAME, the name of the new workflow", command)
  end
  check_positional_count(positional, 1, command, "one DIR or FILE.zip with --new, and no WORKFLOW_ID")
  local source = import_source(values, positional, 1, true)
  local wait = parse_wait(values, command)

  local client, kw = open_client(ctx, values)
  local progress = start_progress(ctx, kw)
  local job, err = import_new_workflow(client, kw, name, source, {
    wait = not wait.no_wait,
    timeout = wait.timeout,
    on_step = step_reporter(ctx, progress, ""),
    on_progress = function(current)
      progress:set_status(job_status_text(current))
    end,
    sleep = progress:sleeper(kw.sleep),
  })
  return finish_job(ctx, client, job, err, { job_name = "the import", failed_hint = IMPORT_FAILED_HINT })
end

local function run_import(ctx, values, positional)
  local command = "import"
  if values.new then
    return run_import_new(ctx, values, positional)
  end
  if values.name then
    usage_error("--name applies only with --new, which imports into a new workflow", command)
  end
  local workflow_id = required_argument(positional, 1, "WORKFLOW_ID", command)
  check_positional_count(positional, 2, command, "WORKFLOW_ID and DIR")
  local source = import_source(values, positional, 2, false)
  local backup = optional_text(values, "backup", command)
  local wait = parse_wait(values, command)

  local client, kw = open_client(ctx, values)
  local progress = start_progress(ctx, kw)
  local show_step = step_reporter(ctx, progress, "")
  local backup_saved = false
  local job, err = client:import_files(workflow_id, source, {
    wait = not wait.no_wait,
    timeout = wait.timeout,
    backup = backup,
    on_step = function(step, detail)
      -- import_files uploads only after the backup is saved.
      if step == "upload" and backup then
        backup_saved = true
      end
      show_step(step, detail)
    end,
    on_progress = function(current)
      progress:set_status(job_status_text(current))
    end,
    sleep = progress:sleeper(kw.sleep),
  })

  local backup_record = backup_saved and { path = backup, bytes = file_size(backup) } or nil
  if job and job.status == "FAILED" then
    job, err = nil, failed_job_error(client, job, IMPORT_FAILED_HINT)
  end
  if not job and backup_record then
    return report_error(ctx, err, { backup = backup_record },
      { ("the backup of workflow %s is saved at %s"):format(workflow_id, backup) })
  elseif not job then
    return report_error(ctx, err)
  end
  local lines
  if backup_record then
    lines = result_line("backup file", ("%s (%s bytes)"):format(printable(backup, true),
      tostring(backup_record.bytes)))
  end
  return finish_job(ctx, client, job, err, {
    job_name = "the import", lines = lines, json = { backup = backup_record },
  })
end

-- Returns the default file name of a workflow's export: the id with every
-- character that is unsafe in a file name replaced by "_", plus ".zip".
local function default_export_path(workflow_id)
  return "./" .. workflow_id:gsub("[^%w%._%-]", "_") .. ".zip"
end

local function run_export(ctx, values, positional)
  local command = "export"
  local workflow_id = required_argument(positional, 1, "WORKFLOW_ID", command)
  check_positional_count(positional, 1, command, "one WORKFLOW_ID")
  local output = optional_text(values, "output", command)
  local flow_id = optional_text(values, "flow-id", command)
  local wait = parse_wait(values, command)
  if output and wait.no_wait then
    usage_error("--output needs the finished export; leave out --no-wait to download it", command)
  end
  output = output or default_export_path(workflow_id)

  local client, kw = open_client(ctx, values)
  local progress = start_progress(ctx, kw)
  progress:step("exporting workflow " .. workflow_id)
  if wait.no_wait then
    local job, err = client.workflow.export(workflow_id, flow_id and { flow_id = flow_id } or nil)
    return finish_job(ctx, client, job, err, { job_name = "the export" })
  end

  local waiting = false
  local saved, err = client:export_to(workflow_id, output, {
    flow_id = flow_id,
    timeout = wait.timeout,
    on_progress = function(current)
      if not waiting then
        waiting = true
        ctx.dock_status_id = current.dockStatusId
        progress:step("waiting for dock status " .. tostring(current.dockStatusId), job_status_text(current))
      else
        progress:set_status(job_status_text(current))
      end
    end,
    sleep = progress:sleeper(kw.sleep),
  })
  if not saved then
    return report_error(ctx, err)
  end
  return report_saved(ctx, saved, saved.job)
end

local function run_deploy(ctx, values, positional)
  local command = "deploy"
  local workflow_id = required_argument(positional, 1, "WORKFLOW_ID", command)
  check_positional_count(positional, 1, command, "one WORKFLOW_ID")
  local wait = parse_wait(values, command)
  local async = values.async == true

  local client, kw = open_client(ctx, values)
  local progress = start_progress(ctx, kw)
  progress:step(("deploying workflow %s (%s)"):format(workflow_id, async and "isAsync true" or "isAsync false"))
  local job, err = client.workflow.deploy(workflow_id, { async = async })
  if job then
    job, err = wait_for_job(ctx, client, kw, progress, job, wait, "deploy of workflow " .. workflow_id)
  end
  return finish_job(ctx, client, job, err, { job_name = "the deploy" })
end

local function run_undeploy(ctx, values, positional)
  local command = "undeploy"
  local workflow_id = required_argument(positional, 1, "WORKFLOW_ID", command)
  check_positional_count(positional, 1, command, "one WORKFLOW_ID")
  local wait = parse_wait(values, command)

  local client, kw = open_client(ctx, values)
  local progress = start_progress(ctx, kw)
  progress:step("undeploying workflow " .. workflow_id)
  local job, err = client.workflow.undeploy(workflow_id)
  if job then
    job, err = wait_for_job(ctx, client, kw, progress, job, wait, "undeploy of workflow " .. workflow_id)
  end
  return finish_job(ctx, client, job, err, { job_name = "the undeploy" })
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
        progress:set_status(job_status_text(current))
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
  local file, err = client.files.upload(path, {
    context = context,
    on_chunk = function(number, total)
      progress:step(("uploading %s: chunk %d of %d sent"):format(path, number + 1, total))
    end,
  })
  if not file then
    return report_error(ctx, err)
  end
  -- The query string of the signed URL carries the signature, so it is cut off.
  local url = type(file.url) == "string" and without_query(file.url) or nil
  if ctx.json then
    ctx:emit_json({ ok = true, file = { fileId = file.fileId, url = url } })
  else
    local lines = result_line("file id", printable(file.fileId, true))
    if url then
      lines = lines .. result_line("url", printable(url, true) .. " (signature query omitted)")
    end
    ctx:out(lines)
  end
  return EXIT_OK
end

---------------------------------------------------------------------------
-- Model commands
---------------------------------------------------------------------------

local MODEL_TYPES = { openSource = true, fineTune = true }

-- Returns the JSON object given to a JSON option, as text or as @FILE, or
-- nil when the option is not given. Raises a usage error for anything but
-- a JSON object.
local function json_option(values, option, command)
  local text = values[option]
  if text == nil then
    return nil
  end
  local source = "--" .. option
  if text:sub(1, 1) == "@" then
    local path = text:sub(2)
    if path == "" then
      usage_error(("--%s @FILE needs a file name after @"):format(option), command)
    end
    local handle, open_error = io.open(path, "rb")
    if not handle then
      usage_error(("cannot read the file given to --%s (%s)"):format(option, open_error), command)
    end
    text = handle:read("*a") or ""
    handle:close()
    source = ("the file %s given to --%s"):format(path, option)
  end
  local ok, value = pcall(codec().decode, text)
  if not ok then
    usage_error(("%s is not valid JSON (%s); give an object such as {\"epochs\": 3}")
      :format(source, strip_position(tostring(value))), command)
  end
  if type(value) ~= "table" or value[1] ~= nil then
    local got = type(value) == "table" and "an array" or value == codec().null and "null"
      or ("a " .. type(value))
    usage_error(("%s must be a JSON object such as {\"epochs\": 3}, got %s"):format(source, got), command)
  end
  return value
end

-- Returns a job that ended SUCCESS with its download link, reading the
-- dock status once more when the job record itself carried none.
local function with_download_link(client, job)
  if type(job.downloadUrl) == "string" or job.dockStatusId == nil then
    return job
  end
  local current = client.workflow.status(job.dockStatusId)
  if current and type(current.downloadUrl) == "string" then
    job.downloadUrl = current.downloadUrl
  end
  return job
end

local function run_models_export(ctx, values, positional)
  local command = "models export"
  local model_id = required_argument(positional, 1, "MODEL_ID", command)
  check_positional_count(positional, 1, command, "one MODEL_ID")
  local output = optional_text(values, "output", command)
  local wait = parse_wait(values, command)
  if output and wait.no_wait then
    usage_error("--output needs the finished export; leave out --no-wait to download it", command)
  end

  local client, kw = open_client(ctx, values)
  local progress = start_progress(ctx, kw)
  progress:step("exporting model " .. model_id)
  local job, err = client.models.export(model_id)
  if job then
    job, err = wait_for_job(ctx, client, kw, progress, job, wait, "export of model " .. model_id)
  end
  if not output or not job or job.status ~= "SUCCESS" then
    return finish_job(ctx, client, job, err, { job_name = "the export" })
  end

  job = with_download_link(client, job)
  if type(job.downloadUrl) ~= "string" then
    return report_error(ctx, client:new_error {
      kind = "invalid_response", id = model_id, retryable = false, job = job,
      message = ("export of model %s ended SUCCESS without a download link (dock status %s)")
        :format(model_id, tostring(job.dockStatusId)),
      hint = "read the dock status again later with the status command; the server may add the "
        .. "link after the job ends",
    })
  end
  progress:step("downloading the export to " .. output)
  local saved, download_error = client:download(job.downloadUrl, output)
  if not saved then
    return report_error(ctx, download_error)
  end
  return report_saved(ctx, saved, job)
end

local function run_models_deploy(ctx, values, positional)
  local command = "models deploy"
  local model_id = required_argument(positional, 1, "MODEL_ID", command)
  check_positional_count(positional, 1, command, "one MODEL_ID")
  local model_type = optional_text(values, "type", command)
  if not model_type then
    usage_error("missing --type: give openSource or fineTune", command)
  elseif not MODEL_TYPES[model_type] then
    usage_error(("invalid --type '%s': expected openSource or fineTune"):format(model_type), command)
  end
  local name = optional_text(values, "name", command)
  if not name then
    usage_error("missing --name NAME, the name of the deployment", command)
  end
  local fields = {
    model_type = model_type,
    name = name,
    deviceType = optional_text(values, "device-type", command),
    hyperParameters = json_option(values, "hyper-parameters", command),
    scalingParameters = json_option(values, "scaling-parameters", command),
    optimizationInfo = json_option(values, "optimization-info", command),
  }
  local wait = parse_wait(values, command)

  local client, kw = open_client(ctx, values)
  local progress = start_progress(ctx, kw)
  progress:step(("deploying model %s as %s"):format(model_id, name))
  local job, err = client.models.deploy(model_id, fields)
  if job then
    job, err = wait_for_job(ctx, client, kw, progress, job, wait, "deploy of model " .. model_id)
  end
  return finish_job(ctx, client, job, err, { job_name = "the deploy" })
end

local function run_models_undeploy(ctx, values, positional)
  local command = "models undeploy"
  local model_id = required_argument(positional, 1, "MODEL_ID", command)
  check_positional_count(positional, 1, command, "one MODEL_ID")
  local wait = parse_wait(values, command)

  local client, kw = open_client(ctx, values)
  local progress = start_progress(ctx, kw)
  progress:step("undeploying model " .. model_id)
  local job, err = client.models.undeploy(model_id)
  if job then
    job, err = wait_for_job(ctx, client, kw, progress, job, wait, "undeploy of model " .. model_id)
  end
  return finish_job(ctx, client, job, err, { job_name = "the undeploy" })
end

local function run_models_import(ctx, values, positional)
  local command = "models import"
  local path = required_argument(positional, 1, "FILE", command)
  check_positional_count(positional, 1, command, "one FILE")
  local wait = parse_wait(values, command)

  local client, kw = open_client(ctx, values)
  local progress = start_progress(ctx, kw)
  progress:step("uploading " .. path)
  local job, err = client.models.import(path, {
    on_chunk = function(number, total)
      progress:step(("uploading %s: chunk %d of %d sent"):format(path, number + 1, total))
    end,
  })
  if job and job.dockStatusId ~= nil then
    job, err = wait_for_job(ctx, client, kw, progress, job, wait, "import of model " .. path)
  end
  return finish_job(ctx, client, job, err, { job_name = "the import" })
end

---------------------------------------------------------------------------
-- Promote
---------------------------------------------------------------------------

-- Returns the stdout lines of the promote steps that are done.
local function promote_lines(report)
  local lines = {}
  local function add(label, text)
    lines[#lines + 1] = ("%-8s %s"):format(label .. ":", printable(text, true))
  end
  local source, target = report.source, report.target
  if report.export then
    add("export", ("workflow %s from %s: %s bytes, dock status %s"):format(source.workflowId,
      source.profile, tostring(report.export.bytes), tostring(report.export.job.dockStatusId)))
  end
  if report.backup then
    add("backup", ("workflow %s on %s saved at %s (%s bytes)"):format(target.workflowId, target.profile,
      report.backup.path, tostring(report.backup.bytes)))
  end
  if report.import then
    local job = report.import.job
    local subject = target.name and ("new workflow %s named %s"):format(tostring(target.workflowId), target.name)
      or ("workflow " .. tostring(target.workflowId))
    add("import", ("%s on %s: %s, dock status %s"):format(subject, target.profile, tostring(job.status),
      tostring(job.dockStatusId)))
  end
  if report.deploy then
    local job = report.deploy.job
    add("deploy", ("workflow %s on %s: %s, dock status %s"):format(tostring(target.workflowId),
      target.profile, tostring(job.status), tostring(job.dockStatusId)))
  end
  if report.export and report.export.kept ~= nil then
    add("zip", (report.export.kept and "kept at %s" or "%s removed"):format(report.export.path))
  end
  if #lines == 0 then
    return ""
  end
  return table.concat(lines, "\n") .. "\n"
end

-- Returns the command that repeats a failed step by hand, or nil.
local function promote_retry_command(report, step, zip_path)
  local target = report.target
  local profile = shell_word(target.profile)
  if step == "import" and target.name then
    return ("%s import --profile %s --new --name %s %s"):format(PROGRAM, profile, shell_word(target.name),
      shell_word(zip_path))
  elseif step == "import" then
    return ("%s import --profile %s %s %s"):format(PROGRAM, profile, shell_word(target.workflowId),
      shell_word(zip_path))
  elseif step == "deploy" then
    return ("%s deploy --profile %s %s"):format(PROGRAM, profile, shell_word(target.workflowId))
  end
  return nil
end

-- Reads and checks promote's options; returns them as a table.
local function promote_options(values, positional)
  local command = "promote"
  local options = {}
  options.source_id = required_argument(positional, 1, "WORKFLOW_ID", command)
  check_positional_count(positional, 1, command, "one WORKFLOW_ID")
  options.from = optional_text(values, "from", command)
  options.to = optional_text(values, "to", command)
  if not options.from or not options.to then
    usage_error("promote needs --from PROFILE and --to PROFILE, the profiles of the environment to "
      .. "export from and of the one to import into", command)
  end
  options.new_name = optional_text(values, "new-name", command)
  options.target_id = optional_text(values, "target-workflow", command)
  options.backup = optional_text(values, "backup", command)
  options.keep = optional_text(values, "keep-export", command)
  if options.new_name and options.target_id then
    usage_error("--target-workflow and --new-name exclude each other: import into an existing "
      .. "workflow or into a new one", command)
  end
  if options.new_name and options.backup then
    usage_error("--backup applies only to an existing target workflow; a new workflow has no "
      .. "version to back up", command)
  end
  if options.keep and not options.keep:lower():match("%.zip$") then
    usage_error("--keep-export must name a file ending in .zip, because the import step reads only "
      .. "a path ending in .zip as an export zip", command)
  end
  if not options.new_name then
    options.target_id = options.target_id or options.source_id
    if options.from == options.to and options.target_id == options.source_id then
      usage_error(("--from and --to both name the profile '%s', so the target would be workflow %s "
        .. "itself; pass --target-workflow ID or --new-name NAME"):format(options.from, options.source_id),
        command)
    end
  end
  options.deploy = values.deploy == true
  options.timeout = parse_timeout(values.timeout, command)
  return options
end

local function run_promote(ctx, values, positional)
  local options = promote_options(values, positional)
  local source_connection = resolve_connection(ctx, { profile = options.from }, "--from")
  local target_connection = resolve_connection(ctx, { profile = options.to }, "--to")
  local source_client, kw = connect(ctx, source_connection)
  local target_client = connect(ctx, target_connection)
  local progress = start_progress(ctx, kw)
  local sleep = progress:sleeper(kw.sleep)

  local report = {
    source = { profile = options.from, host = source_connection.host, workflowId = options.source_id },
    target = { profile = options.to, host = target_connection.host, workflowId = options.target_id,
               name = options.new_name },
  }

  -- Without --keep-export the zip goes to a temporary name. The file that
  -- os.tmpname creates reserves that name until the end, and the zip gets
  -- a ".zip" suffix, because import reads only such a path as a zip.
  local zip_path, reservation = options.keep, nil
  if not zip_path then
    reservation = os.tmpname()
    zip_path = reservation .. ".zip"
  end

  local function fail(step, err)
    command_line_hint(err)
    if reservation then
      os.remove(reservation)
    end
    local notes = {}
    local retry
    if report.export then
      report.export.kept = true
      retry = promote_retry_command(report, step, zip_path)
      notes[#notes + 1] = ("the export of workflow %s is kept at %s"):format(options.source_id, zip_path)
      if retry then
        notes[#notes + 1] = ("repeat the %s step with: %s"):format(step, retry)
      end
    else
      notes[#notes + 1] = ("no export zip was saved, and nothing was imported into %s"):format(options.to)
    end
    if ctx.json then
      ctx:emit_json({
        ok = false, step = step, error = error_fields(err), job = type(err.job) == "table" and err.job or nil,
        source = report.source, target = report.target, export = report.export, backup = report.backup,
        import = report.import, retry = retry,
      })
    else
      ctx:out(promote_lines(report))
      if err.kind == "job_failed" and type(err.job) == "table" then
        ctx:out(format_fields(err.job, JOB_FIELDS))
      end
      ctx:err(("%s: promote failed at the %s step: %s\n"):format(PROGRAM, step, error_line(err)))
      for _, note in ipairs(notes) do
        ctx:err(PROGRAM .. ": " .. printable(note, true) .. "\n")
      end
    end
    return EXIT_BY_KIND[err.kind] or EXIT_API
  end

  -- Step 1: export from the source environment.
  progress:step(("export: exporting workflow %s from %s"):format(options.source_id, options.from))
  local waiting = false
  local saved, err = source_client:export_to(options.source_id, zip_path, {
    timeout = options.timeout,
    sleep = sleep,
    on_progress = function(current)
      if not waiting then
        waiting = true
        ctx.dock_status_id = current.dockStatusId
        progress:step("export: waiting for dock status " .. tostring(current.dockStatusId),
          job_status_text(current))
      else
        progress:set_status(job_status_text(current))
      end
    end,
  })
  if not saved then
    return fail("export", err)
  end
  ctx.kept_export = zip_path
  report.export = { path = zip_path, bytes = saved.bytes, job = saved.job }

  -- Step 2: import into the target environment, after the optional backup.
  local show_step = step_reporter(ctx, progress, "import: ")
  local backup_saved = false
  local import_options = {
    timeout = options.timeout,
    sleep = sleep,
    backup = options.backup,
    on_step = function(step, detail)
      if step == "upload" and options.backup then
        backup_saved = true
      end
      show_step(step, detail)
    end,
    on_progress = function(current)
      progress:set_status(job_status_text(current))
    end,
  }
  local job
  if options.new_name then
    job, err = import_new_workflow(target_client, kw, options.new_name, zip_path, import_options)
  else
    job, err = target_client:import_files(options.target_id, zip_path, import_options)
  end
  if backup_saved then
    report.backup = { path = options.backup, bytes = file_size(options.backup) }
  end
  if job and job.status == "FAILED" then
    job, err = nil, failed_job_error(target_client, job, IMPORT_FAILED_HINT)
  end
  if not job then
    return fail("import", err)
  end
  if options.new_name then
    report.target.workflowId = job.workflowId
  end
  report.import = { job = job }

  -- Step 3: deploy the target workflow.
  if options.deploy then
    local target_id = report.target.workflowId
    if target_id == nil then
      return fail("deploy", target_client:new_error {
        kind = "invalid_response", retryable = false, job = job,
        message = ("the import of the new workflow %s ended without a workflowId, so it cannot be "
          .. "deployed"):format(options.new_name),
        hint = "find the workflow's id in the target environment and deploy it with the deploy command",
      })
    end
    progress:step(("deploy: deploying workflow %s on %s"):format(target_id, options.to))
    local deployed
    deployed, err = target_client.workflow.deploy(target_id, { async = false })
    if deployed then
      deployed, err = wait_for_job(ctx, target_client, kw, progress, deployed, { timeout = options.timeout },
        "deploy of workflow " .. target_id, "deploy: ")
    end
    if deployed and deployed.status == "FAILED" then
      deployed, err = nil, failed_job_error(target_client, deployed)
    end
    if not deployed then
      return fail("deploy", err)
    end
    report.deploy = { job = deployed }
  end

  report.export.kept = options.keep ~= nil
  if not options.keep then
    os.remove(zip_path)
  end
  if reservation then
    os.remove(reservation)
  end
  ctx.kept_export = nil
  if ctx.json then
    ctx:emit_json({ ok = true, source = report.source, target = report.target, export = report.export,
                    backup = report.backup, import = report.import, deploy = report.deploy })
  else
    ctx:out(promote_lines(report))
  end
  return EXIT_OK
end

---------------------------------------------------------------------------
-- Dispatch
---------------------------------------------------------------------------

local RUNNERS = {
  import = run_import,
  export = run_export,
  deploy = run_deploy,
  undeploy = run_undeploy,
  status = run_status,
  upload = run_upload,
  ["models export"] = run_models_export,
  ["models deploy"] = run_models_deploy,
  ["models undeploy"] = run_models_undeploy,
  ["models import"] = run_models_import,
  promote = run_promote,
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
for _, option in ipairs(CONNECTION_OPTIONS) do
  LEADING_OPTIONS[#LEADING_OPTIONS + 1] = option
end
for _, option in ipairs(OUTPUT_OPTIONS) do
  LEADING_OPTIONS[#LEADING_OPTIONS + 1] = option
end
LEADING_OPTIONS[#LEADING_OPTIONS + 1] = { long = "version" }

-- Splits argv into the options before the command, the command and the
-- tokens after it. Returns nil for the command when there is none.
local function split_command(tokens)
  local value_options = {}
  for _, option in ipairs(LEADING_OPTIONS) do
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

local MODELS_TEXT = "the models commands are export, deploy, undeploy and import"

-- Returns the full name of a models command ("models deploy") and the
-- tokens after it.
local function models_command(rest)
  local sub = rest[1]
  if sub == nil then
    usage_error("missing the models command; " .. MODELS_TEXT, "models")
  elseif sub:sub(1, 1) == "-" then
    usage_error(("missing the models command before '%s'; write %s models COMMAND [OPTIONS], where %s")
      :format(option_name(sub), PROGRAM, MODELS_TEXT), "models")
  elseif not COMMANDS["models " .. sub] then
    usage_error(("unknown models command '%s'; %s"):format(sub, MODELS_TEXT), "models")
  end
  local after = {}
  for i = 2, #rest do
    after[#after + 1] = rest[i]
  end
  return "models " .. sub, after
end

local function print_help_topic(ctx, topic)
  local name = topic[1]
  if name == nil then
    ctx:out(tool_help())
  elseif name == "mock" then
    return run_mock(ctx, { "--help" })
  elseif name == "models" and topic[2] == nil then
    ctx:out(models_help())
  elseif name == "models" and COMMANDS["models " .. topic[2]] then
    ctx:out(command_help("models " .. topic[2]))
  elseif COMMANDS[name] then
    ctx:out(command_help(name))
  else
    usage_error(("no help for '%s'; the commands are %s"):format(table.concat(topic, " "), COMMAND_NAMES_TEXT))
  end
  return EXIT_OK
end

-- Raises a usage error for a connection option given to a command that
-- takes its environments from profiles.
local function reject_connection_options(tokens, command)
  local connection = {}
  for _, option in ipairs(CONNECTION_OPTIONS) do
    connection["--" .. option.long] = true
  end
  for _, token in ipairs(tokens) do
    if token == "--" then
      return
    end
    local name = option_name(token)
    if connection[name] then
      usage_error(("%s does not apply to %s, which takes both environments from the profiles named "
        .. "by --from and --to"):format(name, command), command)
    end
  end
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
    usage_error("missing COMMAND; the commands are " .. COMMAND_NAMES_TEXT)
  elseif name == "mock" then
    if #leading > 0 then
      usage_error("options before 'mock' are not used by the emulator; put them after 'mock'")
    end
    return run_mock(ctx, rest)
  elseif name == "help" then
    return print_help_topic(ctx, rest)
  elseif name == "models" then
    if rest[1] == "--help" or rest[1] == "-h" then
      ctx:out(models_help())
      return EXIT_OK
    end
    name, rest = models_command(rest)
  end

  local command = COMMANDS[name]
  if not command then
    usage_error(("unknown command '%s'; the commands are %s"):format(name, COMMAND_NAMES_TEXT))
  end
  ctx.command = name
  if has_flag(rest, { "--help", "-h" }) then
    ctx:out(command_help(name))
    return EXIT_OK
  end

  local all = {}
  for _, token in ipairs(leading) do
    all[#all + 1] = token
  end
  for _, token in ipairs(rest) do
    all[#all + 1] = token
  end
  local specs = {}
  for _, option in ipairs(command.options) do
    specs[#specs + 1] = option
  end
  if command.connection then
    for _, option in ipairs(CONNECTION_OPTIONS) do
      specs[#specs + 1] = option
    end
  else
    reject_connection_options(all, name)
  end
  for _, option in ipairs(OUTPUT_OPTIONS) do
    specs[#specs + 1] = option
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
      if ctx.kept_export then
        hint = (hint and hint .. "; " or "") .. "the export zip is kept at " .. ctx.kept_export
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
