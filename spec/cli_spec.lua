-- Specs for the kore-workflow command-line tool. Each case runs
-- bin/kore-workflow as a separate process, from a temporary directory, against
-- a spawned emulator, with stdout and stderr captured in separate files. The
-- API key reaches the tool through KORE_API_KEY or a key file named by a
-- profile, never on a command line. HOME is an empty temporary directory, so
-- no profiles file of the machine's user is read.
local cjson = require("cjson")
local emulator = require("support.emulator")
local fixtures = require("support.fixtures")

local KEY = fixtures.TEST_KEY
local WORKFLOW_ID = fixtures.WORKFLOW_ID
-- Seeded with the example definitions, for export, deploy and backups.
local SOURCE_ID = "a-5eed0000-0000-4000-8000-00000000000e"
local MODEL_ID = "cm-00000000-0000-4000-8000-0000000000a1"
local MODEL_FILE_NAME = "banking-intents.bin"
local MODEL_CONTENT = "weights of the banking intent model\n"
local DEFINITION_FILES = { "app_definition.json", "flow_definition.json", "env_variables.json" }
local DOCK_STATUS_PATTERN = "^/api/public/dock%-status/"
local RUN_LIMIT = 120 -- seconds before `timeout` stops a hung tool run

local function shell_quote(text)
  return "'" .. tostring(text):gsub("'", "'\\''") .. "'"
end

-- Returns the absolute path of the repository root.
local function absolute_root()
  local handle = assert(io.popen("cd " .. shell_quote(emulator.root) .. " && pwd -P"))
  local path = handle:read("*l")
  handle:close()
  return path
end

local ROOT = absolute_root()
local LAUNCHER = ROOT .. "/bin/kore-workflow"
local EXAMPLE_DIR = ROOT .. "/" .. fixtures.EXAMPLE_DIR
-- The HOME of every run unless a case sets its own: empty, so that the
-- default profiles file does not exist.
local EMPTY_HOME = fixtures.temp_dir()

local function command_exists(name)
  local handle = io.popen("command -v " .. shell_quote(name) .. " 2>/dev/null")
  local found = handle:read("*l")
  handle:close()
  return found ~= nil and found ~= ""
end

local HAS_TIMEOUT = command_exists("timeout")

-- Returns the exit status from the results of os.execute on Lua 5.1 (one
-- number, 256 times the status) and on Lua 5.2 and later (ok, "exit", status).
local function exit_status(first, termination, code)
  if type(first) == "number" then
    if first >= 256 then
      return math.floor(first / 256)
    end
    return first
  end
  if termination == "signal" then
    return 128 + code
  end
  return code
end

-- Every stdout and stderr captured by run_cli, for the final check that the
-- test key appears in none of them.
local captured = {}

local function contains(text, needle)
  return text:find(needle, 1, true) ~= nil
end

-- Returns a shell file that sets the environment of a run: KORE_HOST and
-- KORE_API_KEY default to the emulator and the test key, HOME to an empty
-- directory, and a value of false leaves the variable unset.
local function write_env_file(env)
  local lines = { "unset KORE_HOST KORE_API_KEY KORE_WORKFLOW_DEBUG KORE_PROFILE KORE_WORKFLOW_CONFIG "
    .. "XDG_CONFIG_HOME" }
  for name, value in pairs(env) do
    if value == false then
      lines[#lines + 1] = "unset " .. name
    else
      lines[#lines + 1] = ("%s=%s; export %s"):format(name, shell_quote(value), name)
    end
  end
  return fixtures.write_temp(table.concat(lines, "\n") .. "\n")
end

-- Runs the launcher with args from a temporary directory. Options: env
-- (variables to set, false to unset), launcher (another path to run),
-- wrap (function turning the shell command into the one to execute),
-- work_dir (the directory to run in, kept afterwards).
-- Returns { code, stdout, stderr, elapsed }.
local function run_cli(emu, args, options)
  options = options or {}
  local env = { KORE_HOST = emu and emu.url or false, KORE_API_KEY = KEY, HOME = EMPTY_HOME }
  for name, value in pairs(options.env or {}) do
    env[name] = value
  end
  local env_file = write_env_file(env)
  local stdout_file, stderr_file = os.tmpname(), os.tmpname()
  local work_dir = options.work_dir or fixtures.temp_dir()

  local quoted = {}
  for i, arg in ipairs(args) do
    quoted[i] = shell_quote(arg)
  end
  local tool = shell_quote(options.launcher or LAUNCHER) .. " " .. table.concat(quoted, " ")
  if HAS_TIMEOUT then
    tool = "timeout " .. RUN_LIMIT .. " " .. tool
  end
  local command = ("cd %s && . %s && exec %s"):format(shell_quote(work_dir), shell_quote(env_file), tool)
  if options.wrap then
    command = options.wrap(command)
  end
  command = ("%s >%s 2>%s"):format(command, shell_quote(stdout_file), shell_quote(stderr_file))
  assert(not contains(command, KEY), "the spec put the test key on a command line")

  local started = os.time()
  local code = exit_status(os.execute(command))
  local result = {
    code = code,
    stdout = fixtures.read_file(stdout_file),
    stderr = fixtures.read_file(stderr_file),
    elapsed = os.time() - started,
  }
  os.remove(env_file)
  os.remove(stdout_file)
  os.remove(stderr_file)
  if not options.work_dir then
    os.execute("rm -rf " .. shell_quote(work_dir))
  end

  captured[#captured + 1] = result.stdout
  captured[#captured + 1] = result.stderr
  assert(not contains(result.stdout, KEY), "the test key appears on stdout of: " .. table.concat(args, " "))
  assert(not contains(result.stderr, KEY), "the test key appears on stderr of: " .. table.concat(args, " "))
  return result
end

-- Decodes stdout, which must contain exactly one JSON object on one line.
local function decode_json(result)
  local line_count = select(2, result.stdout:gsub("\n", "\n"))
  assert.are.equal(1, line_count, "stdout is not exactly one line: " .. result.stdout)
  local ok, value = pcall(cjson.decode, result.stdout)
  assert.is_true(ok, "stdout is not valid JSON: " .. result.stdout)
  assert.are.equal("table", type(value), "stdout is not a JSON object: " .. result.stdout)
  return value
end

-- Returns the requests the emulator logged whose path starts with prefix.
local function requests_to(emu, prefix)
  local found = {}
  for _, record in ipairs(emu:requests()) do
    if record.path:sub(1, #prefix) == prefix then
      found[#found + 1] = record
    end
  end
  return found
end

local function api_requests(emu)
  return requests_to(emu, "/api/")
end

local function script_dock_status(emu, body)
  emu:script({
    method = "GET",
    path_pattern = DOCK_STATUS_PATTERN,
    responses = { { status = 200, body = body } },
    ["repeat"] = -1,
  })
end

-- Copies the example export into a new directory; `replace` maps file names
-- to new contents, and a content of false leaves the file out.
local function export_dir(replace)
  local dir = fixtures.temp_dir()
  for _, name in ipairs(DEFINITION_FILES) do
    local content = fixtures.read_file(EXAMPLE_DIR .. "/" .. name)
    if replace and replace[name] ~= nil then
      content = replace[name]
    end
    if content then
      local handle = assert(io.open(dir .. "/" .. name, "wb"))
      handle:write(content)
      handle:close()
    end
  end
  return dir
end

-- Store field of the emulator (GET /_mock/workflows/ID) for each definition file.
local STORED_FIELDS = {
  ["app_definition.json"] = "workflowData",
  ["flow_definition.json"] = "flowData",
  ["env_variables.json"] = "envVariables",
}

local function example_file(name)
  return fixtures.read_file(EXAMPLE_DIR .. "/" .. name)
end

-- Returns the three definition files of an export zip, read with the C
-- core's zip reader, keyed by file name.
local function read_export_zip(path)
  local names = {}
  for _, name in ipairs(DEFINITION_FILES) do
    names[name] = true
  end
  local entries, err = require("kore_workflow.core").zip_read(path, names, 64 * 1024 * 1024)
  assert(entries, "cannot read the zip " .. path .. ": " .. tostring(err))
  return entries
end

local function file_exists(path)
  local handle = io.open(path, "rb")
  if handle then
    handle:close()
    return true
  end
  return false
end

-- Writes a profiles file and key files into a new directory. `profiles`
-- maps names to Lua source of the profile tables; `keys` maps key file
-- names to contents. Returns the directory and the profiles file's path.
local function write_profiles(profiles, keys)
  local dir = fixtures.temp_dir()
  for name, content in pairs(keys or {}) do
    local handle = assert(io.open(dir .. "/" .. name, "wb"))
    handle:write(content)
    handle:close()
  end
  local lines = { "return {", "  profiles = {" }
  for name, source in pairs(profiles) do
    lines[#lines + 1] = ("    [%q] = %s,"):format(name, source)
  end
  lines[#lines + 1] = "  },"
  lines[#lines + 1] = "}"
  local path = dir .. "/config.lua"
  local handle = assert(io.open(path, "wb"))
  handle:write(table.concat(lines, "\n"), "\n")
  handle:close()
  return dir, path
end

-- Returns the value of a "label:   value" line of the human summary.
local function summary_value(stdout, label)
  for line in stdout:gmatch("[^\n]+") do
    local value = line:match("^" .. label:gsub("%p", "%%%0") .. ":%s+(.-)%s*$")
    if value then
      return value
    end
  end
  return nil
end

describe("kore-workflow", function()
  local emu

  setup(function()
    emu = emulator.start({ api_key = KEY, polls = 1,
                           workflows = { WORKFLOW_ID, SOURCE_ID .. "=" .. EXAMPLE_DIR } })
    emu:control("POST", "/_mock/models", { id = MODEL_ID, fileName = MODEL_FILE_NAME, content = MODEL_CONTENT })
  end)

  teardown(function()
    emu:stop()
  end)

  before_each(function()
    emu:reset()
  end)

  describe("import", function()
    it("imports an export directory", function()
      local result = run_cli(emu, { "import", WORKFLOW_ID, EXAMPLE_DIR })
      assert.are.equal(0, result.code, result.stderr)
      assert.are.equal("SUCCESS", summary_value(result.stdout, "status"))
      assert.are.equal(WORKFLOW_ID, summary_value(result.stdout, "workflow id"))
      local id = summary_value(result.stdout, "dock status id")
      assert.is_truthy(id and id:find("^ds%-"), result.stdout)

      assert.are.equal(3, #requests_to(emu, "/api/public/files"))
      assert.are.equal(1, #requests_to(emu, "/api/public/workflows/" .. WORKFLOW_ID .. "/import"))
      assert.is_true(#requests_to(emu, "/api/public/dock-status/" .. id) >= 1)
    end)

    it("prints plain progress lines when stderr is a file", function()
      local result = run_cli(emu, { "import", WORKFLOW_ID, EXAMPLE_DIR })
      assert.are.equal(0, result.code, result.stderr)
      assert.is_nil(result.stderr:find("\r", 1, true))
      assert.is_truthy(contains(result.stderr, "checking the definition files"))
      for _, name in ipairs(DEFINITION_FILES) do
        assert.is_truthy(contains(result.stderr, "uploading " .. EXAMPLE_DIR .. "/" .. name), result.stderr)
      end
      assert.is_truthy(contains(result.stderr, "importing into workflow " .. WORKFLOW_ID), result.stderr)
      assert.is_truthy(result.stderr:find("waiting for dock status ds%-[^\n]*: IN_PROGRESS %(%d+ s%)\n"),
        result.stderr)
      assert.is_truthy(result.stderr:find("waiting for dock status ds%-[^\n]*: SUCCESS %(%d+ s%)\n"),
        result.stderr)
    end)

    it("prints one JSON object with --json", function()
      local result = run_cli(emu, { "import", WORKFLOW_ID, EXAMPLE_DIR, "--json" })
      assert.are.equal(0, result.code, result.stderr)
      local value = decode_json(result)
      assert.are.equal(true, value.ok)
      assert.are.equal("SUCCESS", value.job.status)
      assert.are.equal(WORKFLOW_ID, value.job.workflowId)
      assert.is_truthy(tostring(value.job.dockStatusId):find("^ds%-"))
    end)

    it("returns the started job with --no-wait", function()
      local result = run_cli(emu, { "import", "--no-wait", WORKFLOW_ID, EXAMPLE_DIR })
      assert.are.equal(0, result.code, result.stderr)
      assert.are.equal("IN_PROGRESS", summary_value(result.stdout, "status"))
      assert.is_truthy(contains(result.stderr, "status ds-"), result.stderr)
      assert.are.equal(0, #requests_to(emu, "/api/public/dock-status/"))
    end)

    it("returns the started job as JSON with --no-wait --json", function()
      local result = run_cli(emu, { "import", WORKFLOW_ID, EXAMPLE_DIR, "--no-wait", "--json" })
      assert.are.equal(0, result.code, result.stderr)
      local value = decode_json(result)
      assert.are.equal(true, value.ok)
      assert.are.equal("IN_PROGRESS", value.job.status)
    end)

    it("takes the three files as options", function()
      local dir = fixtures.temp_dir()
      local paths = {}
      for option, name in pairs({ ["--workflow-data"] = "app_definition.json", ["--flow-data"] = "flow_definition.json",
                                  ["--env-variables"] = "env_variables.json" }) do
        paths[option] = dir .. "/renamed-" .. name
        local handle = assert(io.open(paths[option], "wb"))
        handle:write(fixtures.read_file(EXAMPLE_DIR .. "/" .. name))
        handle:close()
      end
      local result = run_cli(emu, {
        "import", WORKFLOW_ID,
        "--workflow-data", paths["--workflow-data"],
        "--flow-data=" .. paths["--flow-data"],
        "--env-variables", paths["--env-variables"],
      })
      assert.are.equal(0, result.code, result.stderr)
      assert.are.equal("SUCCESS", summary_value(result.stdout, "status"))

      local uploaded = {}
      for _, record in ipairs(requests_to(emu, "/api/public/files")) do
        for _, part in ipairs(record.parts or {}) do
          if part.name == "file" then
            uploaded[#uploaded + 1] = part.filename
          end
        end
      end
      assert.are.same({ "renamed-app_definition.json", "renamed-flow_definition.json",
                        "renamed-env_variables.json" }, uploaded)
    end)

    it("sends nothing when a file is not valid JSON", function()
      local dir = export_dir({ ["flow_definition.json"] = "{ \"nodes\": [ " })
      local result = run_cli(emu, { "import", WORKFLOW_ID, dir })
      assert.are.equal(2, result.code, result.stderr)
      assert.is_truthy(contains(result.stderr, "not valid JSON"), result.stderr)
      assert.is_truthy(contains(result.stderr, "flow_definition.json"), result.stderr)
      assert.are.same({}, api_requests(emu))
    end)

    it("sends nothing when env_variables.json is missing", function()
      local dir = export_dir({ ["env_variables.json"] = false })
      local result = run_cli(emu, { "import", WORKFLOW_ID, dir })
      assert.are.equal(2, result.code, result.stderr)
      assert.is_truthy(contains(result.stderr, "env_variables.json"), result.stderr)
      assert.are.same({}, api_requests(emu))
    end)

    it("reports a local file error as JSON", function()
      local dir = export_dir({ ["app_definition.json"] = "not json" })
      local result = run_cli(emu, { "import", "--json", WORKFLOW_ID, dir })
      assert.are.equal(2, result.code, result.stderr)
      local value = decode_json(result)
      assert.are.equal(false, value.ok)
      assert.are.equal("file", value.error.kind)
      assert.are.equal(false, value.error.retryable)
      assert.are.same({}, api_requests(emu))
    end)

    it("exits 1 when the job ends FAILED", function()
      script_dock_status(emu, { _id = "ds-failed-1", status = "FAILED", message = "flow node 7 is invalid" })
      local result = run_cli(emu, { "import", WORKFLOW_ID, EXAMPLE_DIR })
      assert.are.equal(1, result.code, result.stderr)
      assert.are.equal("FAILED", summary_value(result.stdout, "status"))
      assert.is_truthy(contains(result.stderr, "ended FAILED: flow node 7 is invalid"), result.stderr)
    end)

    it("reports a FAILED job as JSON", function()
      script_dock_status(emu, { _id = "ds-failed-2", status = "FAILED" })
      local result = run_cli(emu, { "import", WORKFLOW_ID, EXAMPLE_DIR, "--json" })
      assert.are.equal(1, result.code, result.stderr)
      local value = decode_json(result)
      assert.are.equal(false, value.ok)
      assert.are.equal("job_failed", value.error.kind)
      assert.are.equal("FAILED", value.job.status)
      assert.are.equal("ds-failed-2", value.job.dockStatusId)
    end)

    it("redacts a key that the server echoes", function()
      script_dock_status(emu, { _id = "ds-echo", status = "FAILED", message = "rejected key " .. KEY })
      for _, json in ipairs({ false, true }) do
        local args = { "import", WORKFLOW_ID, EXAMPLE_DIR }
        if json then
          args[#args + 1] = "--json"
        end
        -- run_cli itself asserts that the key appears in neither stream.
        local result = run_cli(emu, args)
        assert.are.equal(1, result.code, result.stderr)
        assert.is_truthy(contains(result.stdout .. result.stderr, "rejected key ***"))
      end
    end)

    it("exits 3 for an unknown workflow", function()
      local result = run_cli(emu, { "import", "a-unknown", EXAMPLE_DIR })
      assert.are.equal(3, result.code, result.stderr)
      assert.is_truthy(result.stderr:find("\nkore%-workflow: [^\n]*HTTP 404[^\n]*\n$"), result.stderr)
      assert.are.equal("", result.stdout)
    end)

    it("reports an HTTP error as JSON", function()
      local result = run_cli(emu, { "import", "a-unknown", EXAMPLE_DIR, "--json" })
      assert.are.equal(3, result.code, result.stderr)
      local value = decode_json(result)
      assert.are.equal(false, value.ok)
      assert.are.equal("http", value.error.kind)
      assert.are.equal(404, value.error.status)
      assert.are.equal("string", type(value.error.message))
      assert.are.equal("string", type(value.error.hint))
      assert.are.equal(false, value.error.retryable)
    end)

    it("exits 3 for a wrong key", function()
      local wrong_key = "kg-00000000-wrong-key-for-the-cli-spec"
      local result = run_cli(emu, { "import", WORKFLOW_ID, EXAMPLE_DIR }, { env = { KORE_API_KEY = wrong_key } })
      assert.are.equal(3, result.code, result.stderr)
      assert.is_truthy(contains(result.stderr, "HTTP 401"), result.stderr)
      assert.is_false(contains(result.stdout .. result.stderr, wrong_key))
      assert.are.equal(0, #requests_to(emu, "/api/public/workflows/"))
    end)

    it("exits 4 when the job outlasts --timeout", function()
      script_dock_status(emu, { _id = "ds-endless", status = "IN_PROGRESS" })
      local result = run_cli(emu, { "import", WORKFLOW_ID, EXAMPLE_DIR, "--timeout", "1" })
      assert.are.equal(4, result.code, result.stderr)
      assert.is_truthy(contains(result.stderr, "timed out after 1 s"), result.stderr)
      assert.is_true(result.elapsed <= 10, "the run took " .. result.elapsed .. " s")
    end)

    it("reports a timeout as JSON", function()
      script_dock_status(emu, { _id = "ds-endless", status = "IN_PROGRESS" })
      local result = run_cli(emu, { "import", WORKFLOW_ID, EXAMPLE_DIR, "--timeout=0.5", "--json" })
      assert.are.equal(4, result.code, result.stderr)
      local value = decode_json(result)
      assert.are.equal("timeout", value.error.kind)
      assert.are.equal(true, value.error.retryable)
      assert.are.equal("IN_PROGRESS", value.job.status)
    end)

    it("rejects an invalid --timeout", function()
      for _, text in ipairs({ "0", "-3", "soon", "inf", "nan" }) do
        local result = run_cli(emu, { "import", WORKFLOW_ID, EXAMPLE_DIR, "--timeout", text })
        assert.are.equal(2, result.code, "--timeout " .. text .. ": " .. result.stderr)
        assert.is_truthy(contains(result.stderr, "--timeout"), result.stderr)
      end
      assert.are.same({}, api_requests(emu))
    end)

    it("rejects an incomplete set of file options", function()
      local result = run_cli(emu, { "import", WORKFLOW_ID, "--workflow-data",
                                    EXAMPLE_DIR .. "/app_definition.json" })
      assert.are.equal(2, result.code, result.stderr)
      assert.is_truthy(contains(result.stderr, "--flow-data"), result.stderr)
      assert.is_truthy(contains(result.stderr, "--env-variables"), result.stderr)
      assert.are.same({}, api_requests(emu))
    end)

    it("rejects DIR together with file options", function()
      local result = run_cli(emu, { "import", WORKFLOW_ID, EXAMPLE_DIR, "--workflow-data",
                                    EXAMPLE_DIR .. "/app_definition.json" })
      assert.are.equal(2, result.code, result.stderr)
      assert.are.same({}, api_requests(emu))
    end)
  end)

  describe("status", function()
    -- Starts an import without waiting and returns its dock status id.
    local function start_import()
      local result = run_cli(emu, { "import", WORKFLOW_ID, EXAMPLE_DIR, "--no-wait", "--json" })
      assert.are.equal(0, result.code, result.stderr)
      return decode_json(result).job.dockStatusId
    end

    it("prints the current status without --wait", function()
      local id = start_import()
      local result = run_cli(emu, { "status", id })
      assert.are.equal(0, result.code, result.stderr)
      assert.are.equal("IN_PROGRESS", summary_value(result.stdout, "status"))
      assert.are.equal(id, summary_value(result.stdout, "dock status id"))
      assert.are.equal(1, #requests_to(emu, "/api/public/dock-status/" .. id))
    end)

    it("waits for the job to end with --wait", function()
      local id = start_import()
      local result = run_cli(emu, { "status", id, "--wait", "--timeout", "60" })
      assert.are.equal(0, result.code, result.stderr)
      assert.are.equal("SUCCESS", summary_value(result.stdout, "status"))
      assert.are.equal(WORKFLOW_ID, summary_value(result.stdout, "workflow id"))
      assert.is_truthy(contains(result.stderr, "waiting for dock status " .. id .. ": SUCCESS"), result.stderr)
    end)

    it("prints the job as JSON", function()
      local id = start_import()
      local result = run_cli(emu, { "--json", "status", id })
      assert.are.equal(0, result.code, result.stderr)
      local value = decode_json(result)
      assert.are.equal(true, value.ok)
      assert.are.equal(id, value.job.dockStatusId)
      assert.are.equal("IN_PROGRESS", value.job.status)
    end)

    it("exits 1 for a FAILED job", function()
      script_dock_status(emu, { _id = "ds-failed-3", status = "FAILED" })
      local result = run_cli(emu, { "status", "ds-failed-3" })
      assert.are.equal(1, result.code, result.stderr)
      assert.are.equal("FAILED", summary_value(result.stdout, "status"))
    end)

    it("exits 3 for an unknown dock status", function()
      local result = run_cli(emu, { "status", "ds-unknown", "--json" })
      assert.are.equal(3, result.code, result.stderr)
      local value = decode_json(result)
      assert.are.equal("http", value.error.kind)
      assert.are.equal(404, value.error.status)
    end)

    it("exits 4 when --wait outlasts --timeout", function()
      script_dock_status(emu, { _id = "ds-endless", status = "IN_PROGRESS" })
      local result = run_cli(emu, { "status", "ds-endless", "--wait", "--timeout", "1" })
      assert.are.equal(4, result.code, result.stderr)
      assert.is_truthy(contains(result.stderr, "timed out"), result.stderr)
    end)

    it("rejects --timeout without --wait", function()
      local result = run_cli(emu, { "status", "ds-1", "--timeout", "5" })
      assert.are.equal(2, result.code, result.stderr)
      assert.are.same({}, api_requests(emu))
    end)

    it("rejects a missing or extra id", function()
      local missing = run_cli(emu, { "status" })
      assert.are.equal(2, missing.code, missing.stderr)
      assert.is_truthy(contains(missing.stderr, "DOCK_STATUS_ID"), missing.stderr)
      local extra = run_cli(emu, { "status", "ds-1", "ds-2" })
      assert.are.equal(2, extra.code, extra.stderr)
      assert.are.same({}, api_requests(emu))
    end)
  end)

  describe("upload", function()
    local path = EXAMPLE_DIR .. "/flow_definition.json"

    it("prints the file id and no URL query", function()
      local result = run_cli(emu, { "upload", path })
      assert.are.equal(0, result.code, result.stderr)
      local file_id = summary_value(result.stdout, "file id")
      assert.is_truthy(file_id and file_id:find("^%x+$"), result.stdout)
      assert.are.equal(24, #file_id)
      assert.is_nil(result.stdout:find("?", 1, true))
      assert.is_false(contains(result.stdout .. result.stderr, "signature="))

      local uploads = requests_to(emu, "/api/public/files")
      assert.are.equal(1, #uploads)
      local context
      for _, part in ipairs(uploads[1].parts or {}) do
        if part.name == "fileContext" then
          context = part.value
        end
      end
      assert.are.equal("bulkImport", context)
    end)

    it("prints the file as JSON without the URL query", function()
      local result = run_cli(emu, { "upload", path, "--json", "--context", "customContext" })
      assert.are.equal(0, result.code, result.stderr)
      local value = decode_json(result)
      assert.are.equal(true, value.ok)
      assert.is_truthy(value.file.fileId:find("^%x+$"))
      assert.is_truthy(value.file.url:find("^http://127%.0%.0%.1:%d+/"), value.file.url)
      assert.is_nil(value.file.url:find("?", 1, true))
      assert.is_false(contains(result.stdout, "signature"))

      local context
      for _, part in ipairs(requests_to(emu, "/api/public/files")[1].parts or {}) do
        if part.name == "fileContext" then
          context = part.value
        end
      end
      assert.are.equal("customContext", context)
    end)

    it("exits 2 for a missing file", function()
      local result = run_cli(emu, { "upload", "/nonexistent/kore-workflow-spec.json" })
      assert.are.equal(2, result.code, result.stderr)
      assert.is_truthy(contains(result.stderr, "/nonexistent/kore-workflow-spec.json"), result.stderr)
      assert.are.same({}, api_requests(emu))
    end)
  end)

  describe("import of a zip", function()
    -- Exports SOURCE_ID into a zip in a new directory and returns its path.
    local function export_zip()
      local dir = fixtures.temp_dir()
      local result = run_cli(emu, { "export", SOURCE_ID, "--output", dir .. "/source.zip" })
      assert.are.equal(0, result.code, result.stderr)
      return dir .. "/source.zip"
    end

    it("imports an export zip", function()
      local zip = export_zip()
      emu:reset()
      local result = run_cli(emu, { "import", WORKFLOW_ID, zip })
      assert.are.equal(0, result.code, result.stderr)
      assert.are.equal("SUCCESS", summary_value(result.stdout, "status"))
      assert.is_truthy(contains(result.stderr, "uploading " .. zip .. ":flow_definition.json"), result.stderr)
      local stored = emu:workflow(WORKFLOW_ID)
      for _, name in ipairs(DEFINITION_FILES) do
        assert.are.equal(example_file(name), stored[STORED_FIELDS[name]], name)
      end
    end)

    it("saves a backup before importing", function()
      local zip = export_zip()
      local backup = fixtures.temp_dir() .. "/backup.zip"
      -- After this import WORKFLOW_ID contains the example definitions, so
      -- the backup must contain them too.
      local first = run_cli(emu, { "import", WORKFLOW_ID, EXAMPLE_DIR })
      assert.are.equal(0, first.code, first.stderr)
      emu:reset()
      local result = run_cli(emu, { "import", WORKFLOW_ID, zip, "--backup", backup, "--json" })
      assert.are.equal(0, result.code, result.stderr)
      local value = decode_json(result)
      assert.are.equal(true, value.ok)
      assert.are.equal(backup, value.backup.path)
      assert.are.equal(#fixtures.read_file(backup), value.backup.bytes)
      local saved = read_export_zip(backup)
      for _, name in ipairs(DEFINITION_FILES) do
        assert.are.equal(example_file(name), saved[name], name)
      end
      assert.is_truthy(contains(result.stderr, "backing up workflow " .. WORKFLOW_ID .. " to " .. backup),
        result.stderr)
      local exports = requests_to(emu, "/api/public/workflows/" .. WORKFLOW_ID .. "/export")
      local imports = requests_to(emu, "/api/public/workflows/" .. WORKFLOW_ID .. "/import")
      assert.are.equal(1, #exports)
      assert.are.equal(1, #imports)
    end)

    it("imports nothing when the backup fails", function()
      emu:seed_workflow("a-empty-backup-target", "empty backup target")
      local zip = export_zip()
      emu:reset()
      local backup = fixtures.temp_dir() .. "/backup.zip"
      local result = run_cli(emu, { "import", "a-empty-backup-target", zip, "--backup", backup })
      assert.are.equal(3, result.code, result.stderr)
      assert.is_truthy(contains(result.stderr, "nothing was imported"), result.stderr)
      assert.are.equal(0, #requests_to(emu, "/api/public/files"))
      assert.are.equal(0, #requests_to(emu, "/api/public/workflows/a-empty-backup-target/import"))
      assert.is_false(file_exists(backup))
    end)

    it("names the backup when the import job fails", function()
      local zip = export_zip()
      emu:reset()
      emu:script({
        method = "POST",
        path = "/api/public/workflows/" .. SOURCE_ID .. "/import",
        responses = { { status = 200, body = { dockStatusId = "ds-import-after-backup", workflowId = SOURCE_ID,
                                                jobType = "WORKFLOWS", action = "IMPORT", status = "IN_PROGRESS" } } },
        ["repeat"] = -1,
      })
      emu:script({
        method = "GET",
        path = "/api/public/dock-status/ds-import-after-backup",
        responses = { { status = 200, body = { _id = "ds-import-after-backup", status = "FAILED",
                                                message = "flow node 3 is invalid" } } },
        ["repeat"] = -1,
      })
      local backup = fixtures.temp_dir() .. "/before-failure.zip"
      local result = run_cli(emu, { "import", SOURCE_ID, zip, "--backup", backup })
      assert.are.equal(1, result.code, result.stderr)
      assert.is_truthy(contains(result.stderr, "flow node 3 is invalid"), result.stderr)
      assert.is_truthy(contains(result.stderr, "the backup of workflow " .. SOURCE_ID .. " is saved at " .. backup),
        result.stderr)
      assert.are.equal(example_file("app_definition.json"), read_export_zip(backup)["app_definition.json"])

      local json = run_cli(emu, { "import", SOURCE_ID, zip, "--backup", backup, "--json" })
      assert.are.equal(1, json.code, json.stderr)
      local value = decode_json(json)
      assert.are.equal("job_failed", value.error.kind)
      assert.are.equal(backup, value.backup.path)
    end)

    it("exits 2 for a zip without the definitions", function()
      local zip = fixtures.write_temp("not a zip archive", ".zip")
      local result = run_cli(emu, { "import", WORKFLOW_ID, zip, "--json" })
      os.remove(zip)
      assert.are.equal(2, result.code, result.stderr)
      assert.are.equal("file", decode_json(result).error.kind)
      assert.are.same({}, api_requests(emu))
    end)
  end)

  describe("import --new", function()
    it("imports into a new workflow", function()
      local name = "CLI new workflow " .. os.time() .. "-" .. math.random(1e6)
      local result = run_cli(emu, { "import", "--new", "--name", name, EXAMPLE_DIR })
      assert.are.equal(0, result.code, result.stderr)
      assert.are.equal("SUCCESS", summary_value(result.stdout, "status"))
      local new_id = summary_value(result.stdout, "workflow id")
      assert.is_truthy(new_id and new_id:find("^a%-"), result.stdout)
      assert.are_not.equal(WORKFLOW_ID, new_id)

      local creates = requests_to(emu, "/api/public/workflows/import")
      assert.are.equal(1, #creates)
      assert.are.equal(name, creates[1].body.workflowName)
      local stored = emu:workflow(new_id)
      assert.are.equal(name, stored.name)
      for _, name_of_file in ipairs(DEFINITION_FILES) do
        assert.are.equal(example_file(name_of_file), stored[STORED_FIELDS[name_of_file]], name_of_file)
      end
    end)

    it("prints the new workflow as JSON", function()
      local name = "CLI new workflow json " .. os.time() .. "-" .. math.random(1e6)
      local result = run_cli(emu, { "import", "--new", "--name=" .. name, "--json",
                                    "--workflow-data", EXAMPLE_DIR .. "/app_definition.json",
                                    "--flow-data", EXAMPLE_DIR .. "/flow_definition.json" })
      assert.are.equal(0, result.code, result.stderr)
      local value = decode_json(result)
      assert.are.equal(true, value.ok)
      assert.are.equal("SUCCESS", value.job.status)
      local stored = emu:workflow(value.job.workflowId)
      assert.are.equal(name, stored.name)
      assert.are.equal(example_file("flow_definition.json"), stored.flowData)
      assert.is_nil(stored.envVariables)
      local body = requests_to(emu, "/api/public/workflows/import")[1].body
      assert.is_nil(body.envVariablesFileId)
    end)

    it("exits 3 for a name already taken", function()
      local name = "CLI taken name " .. os.time() .. "-" .. math.random(1e6)
      local first = run_cli(emu, { "import", "--new", "--name", name, EXAMPLE_DIR })
      assert.are.equal(0, first.code, first.stderr)
      local second = run_cli(emu, { "import", "--new", "--name", name, EXAMPLE_DIR, "--json" })
      assert.are.equal(3, second.code, second.stderr)
      local value = decode_json(second)
      assert.are.equal("http", value.error.kind)
      assert.are.equal(409, value.error.status)
    end)

    it("rejects inconsistent options", function()
      local cases = {
        { args = { "import", "--new", EXAMPLE_DIR }, words = { "--name" } },
        { args = { "import", WORKFLOW_ID, EXAMPLE_DIR, "--name", "x" }, words = { "--new" } },
        { args = { "import", "--new", "--name", "x", EXAMPLE_DIR, "--backup", "b.zip" }, words = { "--backup" } },
        { args = { "import", "--new", "--name", "x", WORKFLOW_ID, EXAMPLE_DIR }, words = { "WORKFLOW_ID" } },
        { args = { "import", WORKFLOW_ID, EXAMPLE_DIR, "--no-wait", "--timeout", "5" }, words = { "--timeout" } },
      }
      for _, case in ipairs(cases) do
        local result = run_cli(emu, case.args)
        local label = table.concat(case.args, " ")
        assert.are.equal(2, result.code, label .. ": " .. result.stderr)
        for _, word in ipairs(case.words) do
          assert.is_truthy(contains(result.stderr, word), label .. ": " .. result.stderr)
        end
      end
      assert.are.same({}, api_requests(emu))
    end)
  end)

  describe("export", function()
    it("saves the zip at ./WORKFLOW_ID.zip", function()
      local dir = fixtures.temp_dir()
      local result = run_cli(emu, { "export", SOURCE_ID }, { work_dir = dir })
      assert.are.equal(0, result.code, result.stderr)
      local path = dir .. "/" .. SOURCE_ID .. ".zip"
      local content = fixtures.read_file(path)
      assert.are.equal("./" .. SOURCE_ID .. ".zip", summary_value(result.stdout, "file"))
      assert.are.equal(#content .. " bytes", summary_value(result.stdout, "size"))
      assert.are.equal("SUCCESS", summary_value(result.stdout, "status"))
      assert.are.equal("EXPORT", summary_value(result.stdout, "action"))
      local entries = read_export_zip(path)
      for _, name in ipairs(DEFINITION_FILES) do
        assert.are.equal(example_file(name), entries[name], name)
      end
      assert.is_false(contains(result.stdout .. result.stderr, "signature="))
      os.execute("rm -rf " .. shell_quote(dir))
    end)

    it("prints the file as JSON", function()
      local path = fixtures.temp_dir() .. "/named.zip"
      local result = run_cli(emu, { "export", SOURCE_ID, "--output", path, "--flow-id", "flow-7", "--json" })
      assert.are.equal(0, result.code, result.stderr)
      local value = decode_json(result)
      assert.are.equal(true, value.ok)
      assert.are.equal(path, value.file.path)
      assert.are.equal(#fixtures.read_file(path), value.file.bytes)
      assert.are.equal("application/zip", value.file.contentType)
      assert.are.equal("SUCCESS", value.job.status)
      assert.are.equal("EXPORT", value.job.action)
      assert.is_nil(value.job.downloadUrl:find("?", 1, true))
      assert.is_false(contains(result.stdout, "signature"))
      local exports = requests_to(emu, "/api/public/workflows/" .. SOURCE_ID .. "/export")
      assert.are.equal(1, #exports)
      assert.are.equal("/api/public/workflows/" .. SOURCE_ID .. "/export?flowId=flow-7", exports[1].path)
    end)

    it("returns the started job with --no-wait", function()
      local dir = fixtures.temp_dir()
      local result = run_cli(emu, { "export", SOURCE_ID, "--no-wait", "--json" }, { work_dir = dir })
      assert.are.equal(0, result.code, result.stderr)
      assert.are.equal("IN_PROGRESS", decode_json(result).job.status)
      assert.are.equal(0, #requests_to(emu, "/api/public/dock-status/"))
      assert.is_false(file_exists(dir .. "/" .. SOURCE_ID .. ".zip"))
      os.execute("rm -rf " .. shell_quote(dir))
    end)

    it("exits 3 for an unknown workflow", function()
      local dir = fixtures.temp_dir()
      local result = run_cli(emu, { "export", "a-unknown" }, { work_dir = dir })
      assert.are.equal(3, result.code, result.stderr)
      assert.is_truthy(contains(result.stderr, "HTTP 404"), result.stderr)
      assert.are.equal("", result.stdout)
      assert.is_false(file_exists(dir .. "/a-unknown.zip"))
      os.execute("rm -rf " .. shell_quote(dir))
    end)

    it("exits 2 for an unwritable --output", function()
      local result = run_cli(emu, { "export", SOURCE_ID, "--output", "/nonexistent/dir/x.zip", "--json" })
      assert.are.equal(2, result.code, result.stderr)
      assert.are.equal("file", decode_json(result).error.kind)
    end)

    it("rejects --output with --no-wait", function()
      local result = run_cli(emu, { "export", SOURCE_ID, "--no-wait", "--output", "x.zip" })
      assert.are.equal(2, result.code, result.stderr)
      assert.are.same({}, api_requests(emu))
    end)
  end)

  describe("deploy and undeploy", function()
    it("deploys synchronously", function()
      local result = run_cli(emu, { "deploy", SOURCE_ID })
      assert.are.equal(0, result.code, result.stderr)
      assert.are.equal("SUCCESS", summary_value(result.stdout, "status"))
      assert.are.equal("DEPLOY", summary_value(result.stdout, "action"))
      local deploys = requests_to(emu, "/api/public/workflows/" .. SOURCE_ID .. "/deploy")
      assert.are.equal(1, #deploys)
      assert.are.equal(false, deploys[1].body.isAsync)
      assert.are.equal(true, emu:workflow(SOURCE_ID).deployed)
    end)

    it("waits for an asynchronous deploy", function()
      local result = run_cli(emu, { "deploy", SOURCE_ID, "--async", "--json" })
      assert.are.equal(0, result.code, result.stderr)
      local value = decode_json(result)
      assert.are.equal(true, value.ok)
      assert.are.equal("SUCCESS", value.job.status)
      assert.are.equal(true, requests_to(emu, "/api/public/workflows/" .. SOURCE_ID .. "/deploy")[1].body.isAsync)
      assert.is_true(#requests_to(emu, "/api/public/dock-status/" .. value.job.dockStatusId) >= 1)
    end)

    it("returns an asynchronous deploy with --no-wait", function()
      local result = run_cli(emu, { "deploy", SOURCE_ID, "--async", "--no-wait" })
      assert.are.equal(0, result.code, result.stderr)
      assert.are.equal("IN_PROGRESS", summary_value(result.stdout, "status"))
      assert.is_truthy(contains(result.stderr, "the deploy continues on the server"), result.stderr)
      assert.are.equal(0, #requests_to(emu, "/api/public/dock-status/"))
    end)

    it("exits 1 when the deploy job ends FAILED", function()
      script_dock_status(emu, { _id = "ds-deploy-failed", status = "FAILED", message = "no runtime left" })
      local result = run_cli(emu, { "deploy", SOURCE_ID, "--async" })
      assert.are.equal(1, result.code, result.stderr)
      assert.are.equal("FAILED", summary_value(result.stdout, "status"))
      assert.is_truthy(contains(result.stderr, "no runtime left"), result.stderr)
    end)

    it("exits 3 when deploying an unknown workflow", function()
      local result = run_cli(emu, { "deploy", "a-unknown", "--json" })
      assert.are.equal(3, result.code, result.stderr)
      assert.are.equal(404, decode_json(result).error.status)
    end)

    it("undeploys a deployed workflow", function()
      local deployed = run_cli(emu, { "deploy", SOURCE_ID })
      assert.are.equal(0, deployed.code, deployed.stderr)
      assert.are.equal(true, emu:workflow(SOURCE_ID).deployed)
      local result = run_cli(emu, { "undeploy", SOURCE_ID })
      assert.are.equal(0, result.code, result.stderr)
      assert.are.equal("UNDEPLOY", summary_value(result.stdout, "action"))
      assert.are.equal("SUCCESS", summary_value(result.stdout, "status"))
      assert.are.equal(false, emu:workflow(SOURCE_ID).deployed)
    end)

    it("prints the undeploy job as JSON", function()
      local result = run_cli(emu, { "undeploy", SOURCE_ID, "--json" })
      assert.are.equal(0, result.code, result.stderr)
      local value = decode_json(result)
      assert.are.equal(true, value.ok)
      assert.are.equal("UNDEPLOY", value.job.action)
      assert.are.equal(SOURCE_ID, value.job.workflowId)
    end)

    it("exits 3 when undeploying an unknown workflow", function()
      local result = run_cli(emu, { "undeploy", "a-unknown" })
      assert.are.equal(3, result.code, result.stderr)
      assert.is_truthy(contains(result.stderr, "HTTP 404"), result.stderr)
    end)
  end)

  describe("models", function()
    it("exports a model and prints the job", function()
      local result = run_cli(emu, { "models", "export", MODEL_ID })
      assert.are.equal(0, result.code, result.stderr)
      assert.are.equal("SUCCESS", summary_value(result.stdout, "status"))
      assert.are.equal(MODEL_ID, summary_value(result.stdout, "model id"))
      assert.are.equal("EXPORT", summary_value(result.stdout, "action"))
      local url = summary_value(result.stdout, "download url")
      assert.is_truthy(url and url:find("(signature query omitted)", 1, true), result.stdout)
      assert.is_false(contains(result.stdout, "signature="))
      assert.is_truthy(result.stderr:find("waiting for dock status ds%-[^\n]*: IN_PROGRESS %d+%%"), result.stderr)
      assert.is_nil(result.stderr:find("downloading", 1, true))
    end)

    it("saves an exported model with --output", function()
      local path = fixtures.temp_dir() .. "/model.zip"
      local result = run_cli(emu, { "models", "export", MODEL_ID, "--output", path, "--json" })
      assert.are.equal(0, result.code, result.stderr)
      local value = decode_json(result)
      assert.are.equal(true, value.ok)
      assert.are.equal(path, value.file.path)
      assert.are.equal(#fixtures.read_file(path), value.file.bytes)
      assert.are.equal(MODEL_ID, value.job.modelId)
      local entries = require("kore_workflow.core").zip_read(path, { [MODEL_FILE_NAME] = true }, 1024 * 1024)
      assert.is_truthy(entries, "the download is not a zip")
      assert.are.equal(MODEL_CONTENT, entries[MODEL_FILE_NAME])
    end)

    it("exits 3 when exporting an unknown model", function()
      local result = run_cli(emu, { "models", "export", "cm-unknown", "--json" })
      assert.are.equal(3, result.code, result.stderr)
      assert.are.equal(404, decode_json(result).error.status)
    end)

    it("deploys a model with JSON parameters", function()
      local scaling = fixtures.write_temp('{"minReplicas": 1, "maxReplicas": 3}')
      local result = run_cli(emu, {
        "models", "deploy", MODEL_ID, "--type", "fineTune", "--name", "cli-deployment",
        "--device-type", "NVIDIA-T4", "--hyper-parameters", '{"epochs": 3, "learningRate": 0.0002}',
        "--scaling-parameters", "@" .. scaling, "--optimization-info", '{"quantization": "int8"}',
      })
      os.remove(scaling)
      assert.are.equal(0, result.code, result.stderr)
      assert.are.equal("SUCCESS", summary_value(result.stdout, "status"))
      local deploys = requests_to(emu, "/api/public/models/" .. MODEL_ID .. "/deploy")
      assert.are.equal(1, #deploys)
      assert.are.equal("/api/public/models/" .. MODEL_ID .. "/deploy?modelType=fineTune", deploys[1].path)
      local body = deploys[1].body
      assert.are.equal("cli-deployment", body.name)
      assert.are.equal("NVIDIA-T4", body.deviceType)
      assert.are.same({ epochs = 3, learningRate = 0.0002 }, body.hyperParameters)
      assert.are.same({ minReplicas = 1, maxReplicas = 3 }, body.scalingParameters)
      assert.are.same({ quantization = "int8" }, body.optimizationInfo)
      local model = emu:control("GET", "/_mock/models/" .. MODEL_ID)
      assert.are.equal(true, model.deployed)
    end)

    it("prints the model deploy job as JSON", function()
      local result = run_cli(emu, { "models", "deploy", MODEL_ID, "--type", "openSource", "--name", "d2", "--json" })
      assert.are.equal(0, result.code, result.stderr)
      local value = decode_json(result)
      assert.are.equal(true, value.ok)
      assert.are.equal("DEPLOY", value.job.action)
      assert.are.equal(MODEL_ID, value.job.modelId)
    end)

    it("rejects invalid model deploy options", function()
      local cases = {
        { args = { "--name", "d" }, word = "--type" },
        { args = { "--type", "closedSource", "--name", "d" }, word = "openSource or fineTune" },
        { args = { "--type", "openSource" }, word = "--name" },
        { args = { "--type", "openSource", "--name", "d", "--hyper-parameters", "[1, 2]" }, word = "an array" },
        { args = { "--type", "openSource", "--name", "d", "--scaling-parameters", "{oops" }, word = "not valid JSON" },
        { args = { "--type", "openSource", "--name", "d", "--optimization-info", "@/nonexistent/o.json" },
          word = "/nonexistent/o.json" },
      }
      for _, case in ipairs(cases) do
        local args = { "models", "deploy", MODEL_ID }
        for _, arg in ipairs(case.args) do
          args[#args + 1] = arg
        end
        local result = run_cli(emu, args)
        local label = table.concat(case.args, " ")
        assert.are.equal(2, result.code, label .. ": " .. result.stderr)
        assert.is_truthy(contains(result.stderr, case.word), label .. ": " .. result.stderr)
      end
      assert.are.same({}, api_requests(emu))
    end)

    it("undeploys a model", function()
      local result = run_cli(emu, { "models", "undeploy", MODEL_ID, "--json" })
      assert.are.equal(0, result.code, result.stderr)
      local value = decode_json(result)
      assert.are.equal("UNDEPLOY", value.job.action)
      assert.are.equal("SUCCESS", value.job.status)
      local model = emu:control("GET", "/_mock/models/" .. MODEL_ID)
      assert.are.equal(false, model.deployed)
    end)

    it("exits 3 when undeploying an unknown model", function()
      local result = run_cli(emu, { "models", "undeploy", "cm-unknown" })
      assert.are.equal(3, result.code, result.stderr)
      assert.is_truthy(contains(result.stderr, "HTTP 404"), result.stderr)
    end)

    it("imports a model file through a session", function()
      local path = fixtures.write_temp(string.rep("model-weights ", 1000), ".bin")
      local result = run_cli(emu, { "models", "import", path })
      assert.are.equal(0, result.code, result.stderr)
      assert.are.equal("SUCCESS", summary_value(result.stdout, "status"))
      local model_id = summary_value(result.stdout, "model id")
      assert.is_truthy(model_id and model_id:find("^cm%-"), result.stdout)
      local starts = requests_to(emu, "/api/public/files/session/start")
      assert.are.equal(1, #starts)
      assert.are.equal("model", starts[1].body.fileContext)
      assert.are.equal(14000, starts[1].body.fileSize)
      local model = emu:control("GET", "/_mock/models/" .. model_id)
      assert.are.equal(14000, model.size)
      os.remove(path)
    end)

    it("prints the model import as JSON", function()
      local path = fixtures.write_temp("small model", ".bin")
      local result = run_cli(emu, { "models", "import", path, "--json" })
      os.remove(path)
      assert.are.equal(0, result.code, result.stderr)
      local value = decode_json(result)
      assert.are.equal(true, value.ok)
      assert.are.equal("IMPORT", value.job.action)
      assert.is_truthy(value.job.modelId:find("^cm%-"))
    end)

    it("exits 2 when the model file is missing", function()
      local result = run_cli(emu, { "models", "import", "/nonexistent/model.bin" })
      assert.are.equal(2, result.code, result.stderr)
      assert.is_truthy(contains(result.stderr, "/nonexistent/model.bin"), result.stderr)
      assert.are.same({}, api_requests(emu))
    end)

    it("exits 2 for a missing or unknown models command", function()
      for _, args in ipairs({ { "models" }, { "models", "retrain", MODEL_ID } }) do
        local result = run_cli(emu, args)
        assert.are.equal(2, result.code, result.stderr)
        assert.is_truthy(contains(result.stderr, "export, deploy, undeploy and import"), result.stderr)
      end
      assert.are.same({}, api_requests(emu))
    end)
  end)

  describe("profiles", function()
    -- A second environment, which the runs must not reach: its requests
    -- show a profile or variable used in place of the one expected.
    local decoy

    setup(function()
      decoy = emulator.start({ api_key = "kg-00000000-key-of-the-decoy-environment", polls = 1,
                               workflows = { SOURCE_ID } })
    end)

    teardown(function()
      decoy:stop()
    end)

    before_each(function()
      decoy:reset()
    end)

    -- Returns the environment of a run that reads the profiles file at path
    -- and has neither KORE_HOST nor KORE_API_KEY.
    local function profile_env(path, extra)
      local env = { KORE_HOST = false, KORE_API_KEY = false, KORE_WORKFLOW_CONFIG = path }
      for name, value in pairs(extra or {}) do
        env[name] = value
      end
      return env
    end

    it("takes host and key file from --profile", function()
      -- A relative api_key_file is relative to the profiles file's directory.
      local dir, path = write_profiles({
        staging = ("{ host = %q, api_key_file = %q }"):format(emu.url, "keys/staging.key"),
      })
      assert(os.execute("mkdir -p " .. shell_quote(dir .. "/keys")))
      local handle = assert(io.open(dir .. "/keys/staging.key", "wb"))
      handle:write(KEY, "\n")
      handle:close()
      local result = run_cli(emu, { "import", WORKFLOW_ID, EXAMPLE_DIR, "--profile", "staging" },
        { env = profile_env(path) })
      assert.are.equal(0, result.code, result.stderr)
      local requests = api_requests(emu)
      assert.is_true(#requests >= 5)
      for _, record in ipairs(requests) do
        assert.is_true(record.key_ok, record.method .. " " .. record.path)
      end
    end)

    it("reads the default file with KORE_PROFILE", function()
      local home = fixtures.temp_dir()
      assert(os.execute("mkdir -p " .. shell_quote(home .. "/.config/kore-workflow")))
      local _, path = write_profiles({
        production = ("{ host = %q, api_key_env = \"KORE_SPEC_PROD_KEY\" }"):format(emu.url),
      })
      assert(os.execute(("cp %s %s"):format(shell_quote(path),
        shell_quote(home .. "/.config/kore-workflow/config.lua"))))
      local result = run_cli(emu, { "status", "ds-unknown", "--json" }, { env = {
        KORE_HOST = false, KORE_API_KEY = false, HOME = home,
        KORE_PROFILE = "production", KORE_SPEC_PROD_KEY = KEY,
      } })
      -- 404 shows that the request reached the emulator with a valid key.
      assert.are.equal(3, result.code, result.stderr)
      assert.are.equal(404, decode_json(result).error.status)
      local requests = requests_to(emu, "/api/public/dock-status/ds-unknown")
      assert.are.equal(1, #requests)
      assert.is_true(requests[1].key_ok)
    end)

    it("reads the file under XDG_CONFIG_HOME", function()
      local config_home = fixtures.temp_dir()
      assert(os.execute("mkdir -p " .. shell_quote(config_home .. "/kore-workflow")))
      local key_file = fixtures.write_temp(KEY .. "\n")
      local _, path = write_profiles({
        xdg = ("{ host = %q, api_key_file = %q }"):format(emu.url, key_file),
      })
      assert(os.execute(("cp %s %s"):format(shell_quote(path),
        shell_quote(config_home .. "/kore-workflow/config.lua"))))
      local result = run_cli(emu, { "--profile", "xdg", "deploy", SOURCE_ID },
        { env = { KORE_HOST = false, KORE_API_KEY = false, XDG_CONFIG_HOME = config_home } })
      os.remove(key_file)
      assert.are.equal(0, result.code, result.stderr)
      assert.are.equal(1, #requests_to(emu, "/api/public/workflows/" .. SOURCE_ID .. "/deploy"))
    end)

    it("lets --host and --api-key-file override the profile", function()
      local wrong_key = fixtures.write_temp("kg-00000000-wrong-key-of-the-profile\n")
      local right_key = fixtures.write_temp(KEY .. "\n")
      local _, path = write_profiles({
        override = ("{ host = %q, api_key_file = %q }"):format(decoy.url, wrong_key),
      })
      local result = run_cli(emu, { "export", SOURCE_ID, "--no-wait", "--profile", "override",
                                    "--host", emu.url, "--api-key-file", right_key },
        { env = profile_env(path) })
      os.remove(wrong_key)
      os.remove(right_key)
      assert.are.equal(0, result.code, result.stderr)
      local exports = requests_to(emu, "/api/public/workflows/" .. SOURCE_ID .. "/export")
      assert.are.equal(1, #exports)
      assert.is_true(exports[1].key_ok)
      assert.are.same({}, api_requests(decoy))
    end)

    it("uses the profile over KORE_HOST and KORE_API_KEY", function()
      local _, path = write_profiles({
        staging = ("{ host = %q, api_key_env = \"KORE_SPEC_STAGING_KEY\" }"):format(emu.url),
      })
      local result = run_cli(emu, { "status", "ds-unknown", "--profile", "staging" }, { env = {
        KORE_WORKFLOW_CONFIG = path, KORE_SPEC_STAGING_KEY = KEY,
        KORE_HOST = decoy.url, KORE_API_KEY = "kg-00000000-key-of-the-decoy-environment",
      } })
      assert.are.equal(3, result.code, result.stderr)
      assert.is_truthy(contains(result.stderr, "HTTP 404"), result.stderr)
      local requests = requests_to(emu, "/api/public/dock-status/ds-unknown")
      assert.are.equal(1, #requests)
      assert.is_true(requests[1].key_ok)
      assert.are.same({}, api_requests(decoy))
    end)

    it("rejects a profile that holds the key", function()
      local _, path = write_profiles({
        leaky = ("{ host = %q, api_key = %q }"):format(emu.url, KEY),
      })
      for _, json in ipairs({ false, true }) do
        local args = { "status", "ds-1", "--profile", "leaky" }
        if json then
          args[#args + 1] = "--json"
        end
        local result = run_cli(emu, args, { env = profile_env(path) })
        assert.are.equal(2, result.code, result.stderr)
        local message = json and decode_json(result).error.message or result.stderr
        assert.is_truthy(contains(message, "api_key field"), message)
        assert.is_truthy(contains(message, "api_key_file"), message)
        assert.is_truthy(contains(message, "api_key_env"), message)
        assert.is_truthy(contains(message, path), message)
        assert.is_truthy(contains(message, "'leaky'"), message)
      end
      assert.are.same({}, api_requests(emu))
    end)

    it("rejects an unknown or missing profile", function()
      local _, path = write_profiles({
        staging = ("{ host = %q, api_key_env = \"X\" }"):format(emu.url),
        production = ("{ host = %q, api_key_env = \"Y\" }"):format(emu.url),
      })
      local result = run_cli(emu, { "status", "ds-1", "--profile", "prod" }, { env = profile_env(path) })
      assert.are.equal(2, result.code, result.stderr)
      assert.is_truthy(contains(result.stderr, "'prod'"), result.stderr)
      assert.is_truthy(contains(result.stderr, path), result.stderr)
      assert.is_truthy(contains(result.stderr, "production, staging"), result.stderr)

      local env_result = run_cli(emu, { "status", "ds-1" }, { env = profile_env(path, { KORE_PROFILE = "qa" }) })
      assert.are.equal(2, env_result.code, env_result.stderr)
      assert.is_truthy(contains(env_result.stderr, "KORE_PROFILE names the profile 'qa'"), env_result.stderr)

      local missing = run_cli(emu, { "status", "ds-1", "--profile", "staging" },
        { env = profile_env("/nonexistent/kore-workflow/config.lua") })
      assert.are.equal(2, missing.code, missing.stderr)
      assert.is_truthy(contains(missing.stderr, "/nonexistent/kore-workflow/config.lua"), missing.stderr)
      assert.is_truthy(contains(missing.stderr, "KORE_WORKFLOW_CONFIG"), missing.stderr)
      assert.are.same({}, api_requests(emu))
    end)

    it("names the file, profile and field of an error", function()
      -- HOST stands for the emulator's URL, so that a run that went on to
      -- send a request would send it to the emulator.
      local cases = {
        { profile = "{ host = HOST, api_key_fiel = \"k\" }", words = { "'api_key_fiel'", "unknown field" } },
        { profile = "{ host = 8080, api_key_env = \"K\" }", words = { "field host", "a number" } },
        { profile = "{ host = HOST }", words = { "names no API key" } },
        { profile = "{ api_key_env = \"K\" }", words = { "no host field" } },
        { profile = "{ host = HOST, api_key_env = \"KORE SPEC\" }", words = { "api_key_env" } },
        { profile = "{ host = HOST, api_key_env = \"KORE_SPEC_UNSET_KEY\" }",
          words = { "KORE_SPEC_UNSET_KEY", "api_key_env" } },
        { profile = "{ host = HOST, api_key_file = \"missing.key\" }", words = { "api_key_file", "missing.key" } },
        { profile = "{ host = HOST, api_key_file = \"a\", api_key_env = \"B\" }",
          words = { "both api_key_file and api_key_env" } },
      }
      for _, case in ipairs(cases) do
        local _, path = write_profiles({ broken = case.profile:gsub("HOST", ("%q"):format(emu.url)) })
        local result = run_cli(emu, { "status", "ds-1", "--profile", "broken" }, { env = profile_env(path) })
        assert.are.equal(2, result.code, case.profile .. ": " .. result.stderr)
        assert.is_truthy(contains(result.stderr, path), case.profile .. ": " .. result.stderr)
        assert.is_truthy(contains(result.stderr, "'broken'"), case.profile .. ": " .. result.stderr)
        for _, word in ipairs(case.words) do
          assert.is_truthy(contains(result.stderr, word), case.profile .. ": " .. result.stderr)
        end
      end
      assert.are.same({}, api_requests(emu))
    end)

    it("runs the file without globals, as text only", function()
      local cases = {
        { text = "return { profiles = { x = { host = os.getenv(\"HOME\"), api_key_env = \"K\" } } }",
          words = { "raised an error", "global 'os'" } },
        { text = "return { profiles = {", words = { "not valid Lua" } },
        { text = "return \"profiles\"", words = { "must return a table" } },
        { text = "return { profile = {} }", words = { "unknown field 'profile'" } },
        { text = string.dump(function()
            return { profiles = {} }
          end), words = { "compiled Lua chunk" } },
      }
      for _, case in ipairs(cases) do
        local path = fixtures.write_temp(case.text, ".lua")
        local result = run_cli(emu, { "status", "ds-1", "--profile", "x" }, { env = profile_env(path) })
        os.remove(path)
        assert.are.equal(2, result.code, case.text .. ": " .. result.stderr)
        assert.is_truthy(contains(result.stderr, path), case.text .. ": " .. result.stderr)
        for _, word in ipairs(case.words) do
          assert.is_truthy(contains(result.stderr, word), case.text .. ": " .. result.stderr)
        end
      end
      assert.are.same({}, api_requests(emu))
    end)

    it("loads examples/config.lua", function()
      -- Both example profiles name keys that this machine lacks, so each run
      -- stops at the key, before any request, with a message that shows the
      -- file was read.
      local path = ROOT .. "/examples/config.lua"
      local production = run_cli(emu, { "status", "ds-1", "--profile", "production" },
        { env = profile_env(path, { KORE_PROD_KEY = false }) })
      assert.are.equal(2, production.code, production.stderr)
      assert.is_truthy(contains(production.stderr, "KORE_PROD_KEY"), production.stderr)
      local staging = run_cli(emu, { "status", "ds-1", "--profile", "staging" }, { env = profile_env(path) })
      assert.are.equal(2, staging.code, staging.stderr)
      assert.is_truthy(contains(staging.stderr, EMPTY_HOME .. "/.config/kore-workflow/staging.key"), staging.stderr)
    end)

    it("reports a profile error as JSON", function()
      local _, path = write_profiles({ broken = ("{ host = %q, colour = \"red\" }"):format(emu.url) })
      local result = run_cli(emu, { "status", "ds-1", "--profile", "broken", "--json" }, { env = profile_env(path) })
      assert.are.equal(2, result.code, result.stderr)
      local value = decode_json(result)
      assert.are.equal(false, value.ok)
      assert.are.equal("usage", value.error.kind)
      assert.is_truthy(contains(value.error.message, "'colour'"), value.error.message)
    end)
  end)

  describe("configuration", function()
    it("rejects --api-key", function()
      local value = "kg-a-key-typed-on-the-command-line"
      for _, args in ipairs({
        { "import", WORKFLOW_ID, EXAMPLE_DIR, "--api-key", value },
        { "status", "ds-1", "--api-key=" .. value },
        { "--api-key", value, "upload", EXAMPLE_DIR .. "/app_definition.json" },
      }) do
        local result = run_cli(emu, args)
        assert.are.equal(2, result.code, result.stderr)
        assert.is_truthy(contains(result.stderr, "process list"), result.stderr)
        assert.is_truthy(contains(result.stderr, "--api-key-file"), result.stderr)
        assert.is_truthy(contains(result.stderr, "KORE_API_KEY"), result.stderr)
        assert.is_false(contains(result.stdout .. result.stderr, value))
      end
      assert.are.same({}, api_requests(emu))
    end)

    it("exits 2 without KORE_HOST", function()
      local result = run_cli(emu, { "import", WORKFLOW_ID, EXAMPLE_DIR }, { env = { KORE_HOST = false } })
      assert.are.equal(2, result.code, result.stderr)
      assert.is_truthy(contains(result.stderr, "KORE_HOST"), result.stderr)
      assert.is_truthy(contains(result.stderr, "--host"), result.stderr)
      assert.are.same({}, api_requests(emu))
    end)

    it("takes the host from --host", function()
      local result = run_cli(emu, { "status", "ds-unknown", "--host", emu.url }, { env = { KORE_HOST = false } })
      assert.are.equal(3, result.code, result.stderr)
      assert.are.equal(1, #requests_to(emu, "/api/public/dock-status/ds-unknown"))
    end)

    it("exits 2 without an API key", function()
      local result = run_cli(emu, { "status", "ds-1" }, { env = { KORE_API_KEY = false } })
      assert.are.equal(2, result.code, result.stderr)
      assert.is_truthy(contains(result.stderr, "KORE_API_KEY"), result.stderr)
      assert.is_truthy(contains(result.stderr, "--api-key-file"), result.stderr)
    end)

    it("reads the key from --api-key-file", function()
      local key_file = fixtures.write_temp("  " .. KEY .. " \r\nsecond line\n")
      local result = run_cli(emu, { "import", WORKFLOW_ID, EXAMPLE_DIR, "--api-key-file", key_file },
        { env = { KORE_API_KEY = false } })
      os.remove(key_file)
      assert.are.equal(0, result.code, result.stderr)
      for _, record in ipairs(api_requests(emu)) do
        assert.is_true(record.key_ok, record.method .. " " .. record.path)
      end
    end)

    it("exits 2 for an empty or unreadable key file", function()
      local empty = fixtures.write_temp("\n")
      local result = run_cli(emu, { "status", "ds-1", "--api-key-file", empty }, { env = { KORE_API_KEY = false } })
      os.remove(empty)
      assert.are.equal(2, result.code, result.stderr)
      assert.is_truthy(contains(result.stderr, "empty"), result.stderr)

      result = run_cli(emu, { "status", "ds-1", "--api-key-file", "/nonexistent/key" })
      assert.are.equal(2, result.code, result.stderr)
      assert.are.same({}, api_requests(emu))
    end)

    it("exits 2 for a key with a control character", function()
      local bad_key = KEY .. "\1tail"
      local result = run_cli(emu, { "status", "ds-1", "--json" }, { env = { KORE_API_KEY = bad_key } })
      assert.are.equal(2, result.code, result.stderr)
      local value = decode_json(result)
      assert.are.equal("usage", value.error.kind)
      assert.is_truthy(contains(value.error.message, "control character"), value.error.message)
      assert.are.same({}, api_requests(emu))
    end)

    it("exits 2 for an invalid host", function()
      local result = run_cli(emu, { "status", "ds-1", "--host", "ftp://127.0.0.1" })
      assert.are.equal(2, result.code, result.stderr)
      assert.is_truthy(contains(result.stderr, "--host"), result.stderr)
    end)

    it("exits 2 for an unknown option or command", function()
      local option = run_cli(emu, { "import", WORKFLOW_ID, EXAMPLE_DIR, "--frobnicate=1" })
      assert.are.equal(2, option.code, option.stderr)
      assert.is_truthy(contains(option.stderr, "unknown option '--frobnicate'"), option.stderr)
      local command = run_cli(emu, { "frobnicate" })
      assert.are.equal(2, command.code, command.stderr)
      assert.is_truthy(contains(command.stderr, "unknown command 'frobnicate'"), command.stderr)
      assert.are.same({}, api_requests(emu))
    end)

    it("exits 2 without arguments", function()
      local result = run_cli(emu, {})
      assert.are.equal(2, result.code, result.stderr)
      assert.are.equal("", result.stdout)
      assert.is_truthy(contains(result.stderr, "Usage:"), result.stderr)
      for _, command in ipairs({ "import", "export", "deploy", "undeploy", "status", "upload", "models export",
                                 "models deploy", "models undeploy", "models import", "promote", "mock" }) do
        assert.is_truthy(contains(result.stderr, "kore-workflow " .. command), result.stderr)
      end
    end)
  end)

  describe("help", function()
    -- Words in the help of every command: output options, the profiles
    -- file format, the environment variables and the exit statuses.
    local common = { "--json", "--help", "Profiles:", "api_key_file", "api_key_env", "ca_file",
                     "KORE_HOST", "KORE_API_KEY", "KORE_PROFILE", "KORE_WORKFLOW_CONFIG", "XDG_CONFIG_HOME",
                     "KORE_WORKFLOW_DEBUG", "KORE_WORKFLOW_LUA" }
    -- Options of every command that selects one environment.
    local connection = { "--profile NAME", "--host URL", "--api-key-file FILE", "--ca-file FILE" }
    local all_commands = { "import", "export", "deploy", "undeploy", "status", "upload", "models export",
                           "models deploy", "models undeploy", "models import", "promote", "mock" }
    local cases = {
      { args = { "--help" }, words = all_commands, connection = true },
      { args = { "-h" }, words = all_commands, connection = true },
      { args = { "import", "--help" }, connection = true,
        words = { "--workflow-data FILE", "--flow-data FILE", "--env-variables FILE", "--new", "--name NAME",
                  "--backup FILE.zip", "--no-wait", "--timeout SECONDS", "in seconds", "FILE.zip" } },
      { args = { "export", "--help" }, connection = true,
        words = { "--output FILE.zip", "--flow-id ID", "--no-wait", "--timeout SECONDS", "in seconds",
                  "./WORKFLOW_ID.zip", "size in bytes" } },
      { args = { "deploy", "--help" }, connection = true,
        words = { "--async", "isAsync", "--no-wait", "--timeout SECONDS", "in seconds" } },
      { args = { "undeploy", "--help" }, connection = true,
        words = { "--no-wait", "--timeout SECONDS", "in seconds" } },
      { args = { "status", "-h" }, connection = true, words = { "--wait", "--timeout SECONDS", "in seconds" } },
      { args = { "upload", "--help" }, connection = true,
        words = { "--context CONTEXT", "bulkImport", "25,000,000 bytes" } },
      { args = { "models", "--help" }, connection = true,
        words = { "models export", "models deploy", "models undeploy", "models import" } },
      { args = { "models", "export", "--help" }, connection = true,
        words = { "--output FILE", "--no-wait", "--timeout SECONDS", "in seconds" } },
      { args = { "models", "deploy", "--help" }, connection = true,
        words = { "--type TYPE", "openSource", "fineTune", "--name NAME", "--device-type TYPE",
                  "--hyper-parameters JSON", "--scaling-parameters JSON", "--optimization-info JSON", "@FILE",
                  "--no-wait", "--timeout SECONDS", "in seconds" } },
      { args = { "models", "undeploy", "--help" }, connection = true,
        words = { "--no-wait", "--timeout SECONDS", "in seconds" } },
      { args = { "models", "import", "--help" }, connection = true,
        words = { "chunked upload session", "--no-wait", "--timeout SECONDS", "in seconds" } },
      { args = { "promote", "--help" }, connection = false,
        words = { "--from PROFILE", "--to PROFILE", "--target-workflow ID", "--new-name NAME", "--deploy",
                  "--backup FILE.zip", "--keep-export FILE.zip", "--timeout SECONDS", "in seconds" } },
      { args = { "help", "import" }, connection = true, words = { "--workflow-data", "--no-wait" } },
      { args = { "help", "models", "deploy" }, connection = true, words = { "--hyper-parameters" } },
    }

    for _, case in ipairs(cases) do
      it("documents every option for " .. table.concat(case.args, " "), function()
        local result = run_cli(nil, case.args)
        assert.are.equal(0, result.code, result.stderr)
        assert.are.equal("", result.stderr)
        local words = {}
        for _, word in ipairs(case.words) do
          words[#words + 1] = word
        end
        for _, word in ipairs(common) do
          words[#words + 1] = word
        end
        for _, word in ipairs(connection) do
          if case.connection then
            words[#words + 1] = word
          else
            assert.is_false(contains(result.stdout, "  " .. word), "help documents " .. word)
          end
        end
        for _, word in ipairs(words) do
          assert.is_truthy(contains(result.stdout, word), "help lacks " .. word)
        end
        for code = 0, 4 do
          assert.is_truthy(result.stdout:find("\n  " .. code .. " "), "help lacks exit status " .. code)
        end
      end)
    end

    it("passes mock --help to the emulator", function()
      for _, args in ipairs({ { "mock", "--help" }, { "help", "mock" } }) do
        local result = run_cli(nil, args)
        assert.are.equal(0, result.code, result.stderr)
        assert.is_truthy(contains(result.stdout, "--polls"), result.stdout)
      end
    end)

    it("returns the emulator's exit status", function()
      local result = run_cli(nil, { "mock", "--no-such-option" })
      assert.are.equal(2, result.code, result.stderr)
      assert.is_truthy(contains(result.stderr, "--no-such-option"), result.stderr)
    end)
  end)

  describe("launcher", function()
    it("runs through a symbolic link", function()
      local dir = fixtures.temp_dir()
      local link = dir .. "/kw-link"
      assert.are.equal(0, exit_status(os.execute("ln -s " .. shell_quote(LAUNCHER) .. " " .. shell_quote(link))))
      local chained = dir .. "/kw-chained"
      assert.are.equal(0, exit_status(os.execute("cd " .. shell_quote(dir) .. " && ln -s kw-link kw-chained")))

      for _, path in ipairs({ link, chained }) do
        local result = run_cli(emu, { "status", "ds-unknown" }, {
          launcher = path,
          env = { LUA_PATH = "/nonexistent/?.lua", LUA_CPATH = false },
        })
        assert.are.equal(3, result.code, result.stderr)
        assert.is_truthy(contains(result.stderr, "HTTP 404"), result.stderr)
      end
      os.execute("rm -rf " .. shell_quote(dir))
    end)
  end)

  describe("internal error", function()
    -- A copy of the launcher and the Lua modules without build/, so that
    -- loading the C core fails.
    local function copy_without_core()
      local dir = fixtures.temp_dir()
      local copy = ("cp -R %s %s %s"):format(shell_quote(ROOT .. "/bin"), shell_quote(ROOT .. "/lua"), shell_quote(dir))
      assert.are.equal(0, exit_status(os.execute(copy)))
      return dir
    end

    it("exits 3 without a traceback", function()
      local dir = copy_without_core()
      -- KORE_WORKFLOW_BUILD, set when the suite runs on another Lua, would
      -- lead the copy back to a core.
      local result = run_cli(emu, { "status", "ds-1" }, {
        launcher = dir .. "/bin/kore-workflow",
        env = { KORE_WORKFLOW_BUILD = false },
      })
      assert.are.equal(3, result.code, result.stderr)
      assert.is_truthy(contains(result.stderr, "cannot load the kore_workflow library"), result.stderr)
      assert.is_truthy(contains(result.stderr, "cmake"), result.stderr)
      assert.is_nil(result.stderr:find("stack traceback", 1, true))
      assert.are.same({}, api_requests(emu))

      local debug = run_cli(emu, { "status", "ds-1" }, {
        launcher = dir .. "/bin/kore-workflow",
        env = { KORE_WORKFLOW_DEBUG = "1", KORE_WORKFLOW_BUILD = false },
      })
      assert.are.equal(3, debug.code, debug.stderr)
      assert.is_truthy(contains(debug.stderr, "stack traceback"), debug.stderr)
      os.execute("rm -rf " .. shell_quote(dir))
    end)

    it("reports an internal error as JSON", function()
      local dir = copy_without_core()
      local result = run_cli(emu, { "status", "ds-1", "--json" }, {
        launcher = dir .. "/bin/kore-workflow",
        env = { KORE_WORKFLOW_BUILD = false },
      })
      os.execute("rm -rf " .. shell_quote(dir))
      assert.are.equal(3, result.code, result.stderr)
      local value = decode_json(result)
      assert.are.equal(false, value.ok)
      assert.are.equal("internal", value.error.kind)
    end)
  end)

  describe("terminal", function()
    local has_script = command_exists("script")

    it("rewrites one progress line with carriage returns", function()
      if not has_script then
        pending("the script command of util-linux is not installed")
        return
      end
      local result = run_cli(emu, { "import", WORKFLOW_ID, EXAMPLE_DIR }, {
        wrap = function(command)
          return "script -qec " .. shell_quote(command) .. " /dev/null"
        end,
      })
      assert.are.equal(0, result.code, result.stderr)
      assert.is_truthy(result.stdout:find("\ruploading [^\r\n]*app_definition%.json %(%d+ s%)"), result.stdout)
      assert.is_truthy(result.stdout:find("\rwaiting for dock status [^\r\n]*: IN_PROGRESS %(%d+ s%)"),
        result.stdout)
      assert.is_truthy(result.stdout:find("status:%s+SUCCESS"), result.stdout)
    end)
  end)

  it("never prints the test key", function()
    assert.is_true(#captured >= 60, "only " .. #captured .. " outputs were captured")
    for index, text in ipairs(captured) do
      assert.is_false(contains(text, KEY), "captured output " .. index .. " contains the key")
    end
  end)
end)
