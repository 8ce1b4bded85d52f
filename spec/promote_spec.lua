-- Specs for `kore-workflow promote`. Two emulators stand for a staging and a
-- production environment: staging contains the example definitions as the
-- workflow SOURCE_ID, and production contains empty workflows to import into.
-- A profiles file in a temporary directory names both, with each key in its
-- own file, so no key is ever on a command line or in the environment. Each
-- case runs bin/kore-workflow as a separate process and checks what arrived
-- in production through the emulator's control routes.
local cjson = require("cjson")
local emulator = require("support.emulator")
local fixtures = require("support.fixtures")

local STAGING_KEY = fixtures.TEST_KEY
local PRODUCTION_KEY = "kg-7b1f0c2e-5a64-4d3e-9f80-1c2d3e4f5a6b-0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d"
local SOURCE_ID = "a-0a0a0a0a-0000-4000-8000-00000000000a"
local OTHER_ID = "a-0b0b0b0b-0000-4000-8000-00000000000b"
local DEFINITION_FILES = { "app_definition.json", "flow_definition.json", "env_variables.json" }
-- Field of GET /_mock/workflows/ID that stores each definition file.
local STORED_FIELDS = {
  ["app_definition.json"] = "workflowData",
  ["flow_definition.json"] = "flowData",
  ["env_variables.json"] = "envVariables",
}
local RUN_LIMIT = 120 -- seconds before `timeout` stops a hung tool run

local function shell_quote(text)
  return "'" .. tostring(text):gsub("'", "'\\''") .. "'"
end

local function absolute_root()
  local handle = assert(io.popen("cd " .. shell_quote(emulator.root) .. " && pwd -P"))
  local path = handle:read("*l")
  handle:close()
  return path
end

local ROOT = absolute_root()
local LAUNCHER = ROOT .. "/bin/kore-workflow"
local EXAMPLE_DIR = ROOT .. "/" .. fixtures.EXAMPLE_DIR

local function contains(text, needle)
  return text:find(needle, 1, true) ~= nil
end

local function starts_with(text, prefix)
  return text ~= nil and text:sub(1, #prefix) == prefix
end

local function file_exists(path)
  local handle = io.open(path, "rb")
  if handle then
    handle:close()
    return true
  end
  return false
end

local function example_file(name)
  return fixtures.read_file(EXAMPLE_DIR .. "/" .. name)
end

-- Returns the exit status from the results of os.execute on Lua 5.1 and on
-- Lua 5.2 and later.
local function exit_status(first, termination, code)
  if type(first) == "number" then
    return first >= 256 and math.floor(first / 256) or first
  end
  if termination == "signal" then
    return 128 + code
  end
  return code
end

local HAS_TIMEOUT = exit_status(os.execute("command -v timeout >/dev/null 2>&1")) == 0

-- Every stdout and stderr of the runs, for the final check for both keys.
local captured = {}

-- Runs the launcher with args in a new temporary directory, with the
-- profiles file at config_path and no other source of host or key.
-- Returns { code, stdout, stderr }.
local function run_promote(config_path, args)
  local env_lines = {
    "unset KORE_HOST KORE_API_KEY KORE_PROFILE KORE_WORKFLOW_DEBUG XDG_CONFIG_HOME",
    "KORE_WORKFLOW_CONFIG=" .. shell_quote(config_path) .. "; export KORE_WORKFLOW_CONFIG",
  }
  local env_file = fixtures.write_temp(table.concat(env_lines, "\n") .. "\n")
  local stdout_file, stderr_file = os.tmpname(), os.tmpname()
  local work_dir = fixtures.temp_dir()
  local quoted = {}
  for i, arg in ipairs(args) do
    quoted[i] = shell_quote(arg)
  end
  local tool = shell_quote(LAUNCHER) .. " " .. table.concat(quoted, " ")
  if HAS_TIMEOUT then
    tool = "timeout " .. RUN_LIMIT .. " " .. tool
  end
  local command = ("cd %s && . %s && exec %s >%s 2>%s"):format(shell_quote(work_dir), shell_quote(env_file),
    tool, shell_quote(stdout_file), shell_quote(stderr_file))
  assert(not contains(command, STAGING_KEY) and not contains(command, PRODUCTION_KEY),
    "the spec put a key on a command line")

  local result = { code = exit_status(os.execute(command)) }
  result.stdout = fixtures.read_file(stdout_file)
  result.stderr = fixtures.read_file(stderr_file)
  os.remove(env_file)
  os.remove(stdout_file)
  os.remove(stderr_file)
  os.execute("rm -rf " .. shell_quote(work_dir))

  captured[#captured + 1] = result.stdout
  captured[#captured + 1] = result.stderr
  for _, key in ipairs({ STAGING_KEY, PRODUCTION_KEY }) do
    assert(not contains(result.stdout .. result.stderr, key), "a key appears in the output of: "
      .. table.concat(args, " "))
  end
  return result
end

local function decode_json(result)
  local line_count = select(2, result.stdout:gsub("\n", "\n"))
  assert.are.equal(1, line_count, "stdout is not exactly one line: " .. result.stdout)
  local ok, value = pcall(cjson.decode, result.stdout)
  assert.is_true(ok, "stdout is not valid JSON: " .. result.stdout)
  return value
end

local function api_requests(emu)
  local found = {}
  for _, record in ipairs(emu:requests()) do
    if record.path:sub(1, 5) == "/api/" then
      found[#found + 1] = record
    end
  end
  return found
end

local function requests_to(emu, prefix)
  local found = {}
  for _, record in ipairs(emu:requests()) do
    if record.path:sub(1, #prefix) == prefix then
      found[#found + 1] = record
    end
  end
  return found
end

-- Returns the value of a "label: value" line of promote's summary.
local function step_line(stdout, label)
  return stdout:match("\n" .. label .. ":%s+([^\n]*)") or stdout:match("^" .. label .. ":%s+([^\n]*)")
end

-- Returns the three definition files of an export zip, keyed by file name.
local function read_export_zip(path)
  local names = {}
  for _, name in ipairs(DEFINITION_FILES) do
    names[name] = true
  end
  local entries, err = require("kore_workflow.core").zip_read(path, names, 64 * 1024 * 1024)
  assert(entries, "cannot read the zip " .. path .. ": " .. tostring(err))
  return entries
end

-- Asserts that a production workflow contains exactly the definitions of
-- staging's SOURCE_ID, and that those are the example files.
local function assert_same_definitions(staging, production, target_id)
  local source = staging:workflow(SOURCE_ID)
  local target = production:workflow(target_id)
  assert.is_truthy(target, "production has no workflow " .. target_id)
  for _, name in ipairs(DEFINITION_FILES) do
    local field = STORED_FIELDS[name]
    assert.are.equal(example_file(name), source[field], "staging " .. field)
    assert.are.equal(source[field], target[field], "production " .. field .. " of " .. target_id)
  end
end

describe("kore-workflow promote", function()
  local staging, production
  local config_dir, config_path

  setup(function()
    staging = emulator.start({ api_key = STAGING_KEY, polls = 1, workflows = { SOURCE_ID .. "=" .. EXAMPLE_DIR } })
    production = emulator.start({ api_key = PRODUCTION_KEY, polls = 1, workflows = { SOURCE_ID, OTHER_ID } })

    config_dir = fixtures.temp_dir()
    for name, key in pairs({ ["staging.key"] = STAGING_KEY, ["production.key"] = PRODUCTION_KEY }) do
      local handle = assert(io.open(config_dir .. "/" .. name, "wb"))
      handle:write(key, "\n")
      handle:close()
    end
    config_path = config_dir .. "/config.lua"
    local handle = assert(io.open(config_path, "wb"))
    handle:write(("return {\n  profiles = {\n"
      .. "    staging = { host = %q, api_key_file = %q },\n"
      .. "    production = { host = %q, api_key_file = %q },\n"
      .. "  },\n}\n"):format(staging.url, config_dir .. "/staging.key", production.url, "production.key"))
    handle:close()
  end)

  teardown(function()
    staging:stop()
    production:stop()
    os.execute("rm -rf " .. shell_quote(config_dir))
  end)

  before_each(function()
    staging:reset()
    production:reset()
  end)

  it("copies the definitions and deploys", function()
    assert.is_nil(production:workflow(SOURCE_ID).flowData)
    local result = run_promote(config_path, { "promote", SOURCE_ID, "--from", "staging", "--to", "production",
                                              "--deploy" })
    assert.are.equal(0, result.code, result.stderr)
    assert_same_definitions(staging, production, SOURCE_ID)
    assert.are.equal(true, production:workflow(SOURCE_ID).deployed)

    local deploys = requests_to(production, "/api/public/workflows/" .. SOURCE_ID .. "/deploy")
    assert.are.equal(1, #deploys)
    assert.are.equal(false, deploys[1].body.isAsync)
    for _, record in ipairs(api_requests(production)) do
      assert.is_true(record.key_ok, record.method .. " " .. record.path)
    end
    assert.are.equal(1, #requests_to(staging, "/api/public/workflows/" .. SOURCE_ID .. "/export"))
    assert.are.equal(0, #requests_to(staging, "/api/public/workflows/" .. SOURCE_ID .. "/import"))

    local exported = step_line(result.stdout, "export")
    assert.is_true(starts_with(exported, "workflow " .. SOURCE_ID .. " from staging: "), result.stdout)
    assert.is_truthy(exported:find(": %d+ bytes, dock status ds%-"), result.stdout)
    local in_production = "workflow " .. SOURCE_ID .. " on production: SUCCESS"
    assert.is_true(starts_with(step_line(result.stdout, "import"), in_production), result.stdout)
    assert.is_true(starts_with(step_line(result.stdout, "deploy"), in_production), result.stdout)
    local zip = step_line(result.stdout, "zip"):match("^(.-) removed$")
    assert.is_truthy(zip, result.stdout)
    assert.is_false(file_exists(zip))
    for _, step in ipairs({ "export: exporting workflow " .. SOURCE_ID .. " from staging", "import: uploading ",
                            "import: importing into workflow " .. SOURCE_ID, "deploy: deploying workflow " }) do
      assert.is_truthy(contains(result.stderr, step), result.stderr)
    end
  end)

  it("prints every step as JSON", function()
    local result = run_promote(config_path, { "promote", SOURCE_ID, "--from", "staging", "--to", "production",
                                              "--target-workflow", OTHER_ID, "--json" })
    assert.are.equal(0, result.code, result.stderr)
    local value = decode_json(result)
    assert.are.equal(true, value.ok)
    assert.are.same({ profile = "staging", host = staging.url, workflowId = SOURCE_ID }, value.source)
    assert.are.equal("production", value.target.profile)
    assert.are.equal(OTHER_ID, value.target.workflowId)
    assert.are.equal("SUCCESS", value.export.job.status)
    assert.are.equal(false, value.export.kept)
    assert.is_false(file_exists(value.export.path))
    assert.is_true(value.export.bytes > 0)
    assert.are.equal("SUCCESS", value.import.job.status)
    assert.are.equal(OTHER_ID, value.import.job.workflowId)
    assert.is_nil(value.deploy)
    assert.is_false(contains(result.stdout, "signature="))
    assert_same_definitions(staging, production, OTHER_ID)
    assert.are.equal(0, #requests_to(production, "/api/public/workflows/" .. OTHER_ID .. "/deploy"))
  end)

  it("promotes into a new workflow", function()
    local name = "Banking assistant " .. os.time() .. "-" .. math.random(1e6)
    local result = run_promote(config_path, { "promote", SOURCE_ID, "--from", "staging", "--to", "production",
                                              "--new-name", name, "--deploy", "--json" })
    assert.are.equal(0, result.code, result.stderr)
    local value = decode_json(result)
    assert.are.equal(true, value.ok)
    local new_id = value.target.workflowId
    assert.is_truthy(new_id:find("^a%-"), new_id)
    assert.are_not.equal(SOURCE_ID, new_id)
    assert.are_not.equal(OTHER_ID, new_id)
    assert.are.equal(name, value.target.name)
    assert.are.equal("SUCCESS", value.deploy.job.status)

    local creates = requests_to(production, "/api/public/workflows/import")
    assert.are.equal(1, #creates)
    assert.are.equal(name, creates[1].body.workflowName)
    assert.are.equal(name, production:workflow(new_id).name)
    assert.are.equal(true, production:workflow(new_id).deployed)
    assert_same_definitions(staging, production, new_id)
  end)

  it("keeps the export with --keep-export", function()
    local keep = fixtures.temp_dir() .. "/staging export.zip"
    local result = run_promote(config_path, { "promote", SOURCE_ID, "--from", "staging", "--to", "production",
                                              "--target-workflow", OTHER_ID, "--keep-export", keep })
    assert.are.equal(0, result.code, result.stderr)
    assert.are.equal("kept at " .. keep, step_line(result.stdout, "zip"))
    local entries = read_export_zip(keep)
    for _, name in ipairs(DEFINITION_FILES) do
      assert.are.equal(example_file(name), entries[name], name)
    end
    os.remove(keep)
  end)

  it("backs up the target before importing", function()
    local old = { workflowData = '{"version": "old app"}', flowData = '{"version": "old flow"}',
                  envVariables = '[{"key": "OLD", "value": "1"}]' }
    production:control("POST", "/_mock/workflows", { id = "a-with-old-version", name = "old version",
                                                      definitions = old })
    local backup = fixtures.temp_dir() .. "/backup.zip"
    local result = run_promote(config_path, { "promote", SOURCE_ID, "--from", "staging", "--to", "production",
                                              "--target-workflow", "a-with-old-version", "--backup", backup })
    assert.are.equal(0, result.code, result.stderr)
    assert.is_truthy(step_line(result.stdout, "backup"):find("saved at " .. backup, 1, true), result.stdout)
    local saved = read_export_zip(backup)
    assert.are.equal(old.workflowData, saved["app_definition.json"])
    assert.are.equal(old.flowData, saved["flow_definition.json"])
    assert.are.equal(old.envVariables, saved["env_variables.json"])
    assert_same_definitions(staging, production, "a-with-old-version")
    os.remove(backup)
  end)

  it("imports nothing for an unknown source workflow", function()
    local result = run_promote(config_path, { "promote", "a-not-in-staging", "--from", "staging",
                                              "--to", "production" })
    assert.are.equal(3, result.code, result.stderr)
    assert.is_truthy(contains(result.stderr, "promote failed at the export step"), result.stderr)
    assert.is_truthy(contains(result.stderr, "HTTP 404"), result.stderr)
    assert.is_truthy(contains(result.stderr, "nothing was imported into production"), result.stderr)
    assert.are.equal("", result.stdout)
    assert.are.same({}, api_requests(production))
    assert.are.equal(1, #requests_to(staging, "/api/public/workflows/a-not-in-staging/export"))
  end)

  it("reports an export failure as JSON", function()
    local result = run_promote(config_path, { "promote", "a-not-in-staging", "--from", "staging",
                                              "--to", "production", "--json" })
    assert.are.equal(3, result.code, result.stderr)
    local value = decode_json(result)
    assert.are.equal(false, value.ok)
    assert.are.equal("export", value.step)
    assert.are.equal("http", value.error.kind)
    assert.are.equal(404, value.error.status)
    assert.is_nil(value.export)
    assert.are.same({}, api_requests(production))
  end)

  it("keeps the zip when the import fails", function()
    local result = run_promote(config_path, { "promote", SOURCE_ID, "--from", "staging", "--to", "production",
                                              "--target-workflow", "a-not-in-production", "--json" })
    assert.are.equal(3, result.code, result.stderr)
    local value = decode_json(result)
    assert.are.equal("import", value.step)
    assert.are.equal(404, value.error.status)
    assert.are.equal(true, value.export.kept)
    assert.is_true(file_exists(value.export.path))
    assert.are.equal("kore-workflow import --profile production a-not-in-production " .. value.export.path,
      value.retry)
    local entries = read_export_zip(value.export.path)
    assert.are.equal(example_file("flow_definition.json"), entries["flow_definition.json"])
    os.remove(value.export.path)
  end)

  it("names the kept zip when the import fails", function()
    local result = run_promote(config_path, { "promote", SOURCE_ID, "--from", "staging", "--to", "production",
                                              "--target-workflow", "a-not-in-production" })
    assert.are.equal(3, result.code, result.stderr)
    assert.is_truthy(contains(result.stderr, "promote failed at the import step"), result.stderr)
    local zip = result.stderr:match("is kept at ([^\n]+)\n")
    assert.is_truthy(zip, result.stderr)
    assert.is_true(file_exists(zip))
    assert.is_truthy(contains(result.stderr, "kore-workflow import --profile production a-not-in-production " .. zip),
      result.stderr)
    assert.is_truthy(step_line(result.stdout, "export"), result.stdout)
    os.remove(zip)
  end)

  it("exits 1 when the deploy job ends FAILED", function()
    production:script({
      method = "POST",
      path = "/api/public/workflows/" .. OTHER_ID .. "/deploy",
      responses = { { status = 200, body = { dockStatusId = "ds-deploy-failed", workflowId = OTHER_ID,
                                              jobType = "WORKFLOWS", action = "DEPLOY", status = "FAILED",
                                              message = "quota of deployed workflows reached" } } },
    })
    local result = run_promote(config_path, { "promote", SOURCE_ID, "--from", "staging", "--to", "production",
                                              "--target-workflow", OTHER_ID, "--deploy" })
    assert.are.equal(1, result.code, result.stderr)
    assert.is_truthy(contains(result.stderr, "promote failed at the deploy step"), result.stderr)
    assert.is_truthy(contains(result.stderr, "quota of deployed workflows reached"), result.stderr)
    assert.is_truthy(contains(result.stderr, "kore-workflow deploy --profile production " .. OTHER_ID), result.stderr)
    assert.is_truthy(step_line(result.stdout, "import"):find("SUCCESS", 1, true), result.stdout)
    local zip = result.stderr:match("is kept at ([^\n]+)\n")
    assert.is_truthy(zip, result.stderr)
    os.remove(zip)
  end)

  it("rejects invalid options before any request", function()
    local cases = {
      { args = { "--from", "staging" }, word = "--to PROFILE" },
      { args = { "--from", "staging", "--to", "production", "--host", staging.url }, word = "--host does not apply" },
      { args = { "--from", "staging", "--to", "production", "--new-name", "N", "--target-workflow", OTHER_ID },
        word = "exclude each other" },
      { args = { "--from", "staging", "--to", "production", "--new-name", "N", "--backup", "b.zip" },
        word = "--backup" },
      { args = { "--from", "staging", "--to", "staging" }, word = "itself" },
      { args = { "--from", "staging", "--to", "prod" }, word = "--to names the profile 'prod'" },
      { args = { "--from", "staging", "--to", "production", "--keep-export", "export.tar" }, word = ".zip" },
      { args = { "--from", "staging", "--to", "production", "--timeout", "0" }, word = "--timeout" },
    }
    for _, case in ipairs(cases) do
      local args = { "promote", SOURCE_ID }
      for _, arg in ipairs(case.args) do
        args[#args + 1] = arg
      end
      local result = run_promote(config_path, args)
      local label = table.concat(case.args, " ")
      assert.are.equal(2, result.code, label .. ": " .. result.stderr)
      assert.is_truthy(contains(result.stderr, case.word), label .. ": " .. result.stderr)
    end
    assert.are.same({}, api_requests(staging))
    assert.are.same({}, api_requests(production))
  end)

  it("never prints either key", function()
    assert.is_true(#captured >= 20, "only " .. #captured .. " outputs were captured")
    for index, text in ipairs(captured) do
      assert.is_false(contains(text, STAGING_KEY), "captured output " .. index .. " contains the staging key")
      assert.is_false(contains(text, PRODUCTION_KEY), "captured output " .. index .. " contains the production key")
    end
  end)
end)
