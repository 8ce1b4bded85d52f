-- Specs for the kore-workflow command-line tool. Each case runs
-- bin/kore-workflow as a separate process, from a temporary directory, against
-- a spawned emulator, with stdout and stderr captured in separate files. The
-- API key reaches the tool through KORE_API_KEY, set by a sourced shell file,
-- so it never appears on a command line.
local cjson = require("cjson")
local emulator = require("support.emulator")
local fixtures = require("support.fixtures")

local KEY = fixtures.TEST_KEY
local WORKFLOW_ID = fixtures.WORKFLOW_ID
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
-- KORE_API_KEY default to the emulator and the test key, and a value of
-- false leaves the variable unset.
local function write_env_file(env)
  local lines = { "unset KORE_HOST KORE_API_KEY KORE_WORKFLOW_DEBUG" }
  for name, value in pairs(env) do
    if value ~= false then
      lines[#lines + 1] = ("%s=%s; export %s"):format(name, shell_quote(value), name)
    end
  end
  return fixtures.write_temp(table.concat(lines, "\n") .. "\n")
end

-- Runs the launcher with args from a temporary directory. Options: env
-- (variables to set, false to unset), launcher (another path to run),
-- wrap (function turning the shell command into the one to execute).
-- Returns { code, stdout, stderr, elapsed }.
local function run_cli(emu, args, options)
  options = options or {}
  local env = { KORE_HOST = emu and emu.url or false, KORE_API_KEY = KEY }
  for name, value in pairs(options.env or {}) do
    env[name] = value
  end
  local env_file = write_env_file(env)
  local stdout_file, stderr_file = os.tmpname(), os.tmpname()
  local work_dir = fixtures.temp_dir()

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
  os.execute("rm -rf " .. shell_quote(work_dir))

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
    emu = emulator.start({ api_key = KEY, polls = 1, workflows = { WORKFLOW_ID } })
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
      for _, command in ipairs({ "import", "status", "upload", "mock" }) do
        assert.is_truthy(contains(result.stderr, "kore-workflow " .. command), result.stderr)
      end
    end)
  end)

  describe("help", function()
    local common = { "--host", "--api-key-file", "--ca-file", "--json", "--help",
                     "KORE_HOST", "KORE_API_KEY", "KORE_WORKFLOW_DEBUG", "KORE_WORKFLOW_LUA" }
    local cases = {
      { args = { "--help" }, words = { "import", "status", "upload", "mock", "--version" } },
      { args = { "-h" }, words = { "import", "status", "upload", "mock" } },
      { args = { "import", "--help" },
        words = { "--workflow-data", "--flow-data", "--env-variables", "--no-wait", "--timeout", "seconds" } },
      { args = { "status", "-h" }, words = { "--wait", "--timeout", "seconds" } },
      { args = { "upload", "--help" }, words = { "--context", "bulkImport" } },
      { args = { "help", "import" }, words = { "--workflow-data", "--no-wait" } },
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
      local result = run_cli(emu, { "status", "ds-1" }, { launcher = dir .. "/bin/kore-workflow" })
      assert.are.equal(3, result.code, result.stderr)
      assert.is_truthy(contains(result.stderr, "cannot load the kore_workflow library"), result.stderr)
      assert.is_truthy(contains(result.stderr, "cmake"), result.stderr)
      assert.is_nil(result.stderr:find("stack traceback", 1, true))
      assert.are.same({}, api_requests(emu))

      local debug = run_cli(emu, { "status", "ds-1" }, {
        launcher = dir .. "/bin/kore-workflow",
        env = { KORE_WORKFLOW_DEBUG = "1" },
      })
      assert.are.equal(3, debug.code, debug.stderr)
      assert.is_truthy(contains(debug.stderr, "stack traceback"), debug.stderr)
      os.execute("rm -rf " .. shell_quote(dir))
    end)

    it("reports an internal error as JSON", function()
      local dir = copy_without_core()
      local result = run_cli(emu, { "status", "ds-1", "--json" }, { launcher = dir .. "/bin/kore-workflow" })
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
