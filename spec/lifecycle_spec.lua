-- The whole life cycle over real HTTP to the emulator: new imports,
-- exports and downloads, deploys, upload sessions and models.
local kw = require "kore_workflow"
local emulator = require "support.emulator"
local fixtures = require "support.fixtures"

local KEY = fixtures.TEST_KEY
local WORKFLOW_ID = fixtures.WORKFLOW_ID
local FAST = { timeout = 30, interval = 0.05, max_interval = 0.2 }
local MODEL_ID = "cm-00000000-0000-4000-8000-0000000000aa"

local function read_status_kib(field)
  local handle = io.open("/proc/self/status", "r")
  if not handle then
    return nil
  end
  local text = handle:read("*a")
  handle:close()
  return tonumber(text:match(field .. ":%s*(%d+) kB"))
end

local function make_file(path, megabytes)
  local handle = assert(io.open(path, "wb"))
  local block = {}
  for i = 1, 1024 do
    block[i] = string.char(i % 251)
  end
  block = table.concat(block)
  for i = 1, megabytes * 1024 do
    handle:write(block:sub(1, 1023) .. string.char(i % 256))
  end
  handle:close()
end

local function sha256(path)
  local handle = assert(io.popen("sha256sum '" .. path .. "'"))
  local sum = handle:read("*l"):match("^(%x+)")
  handle:close()
  return sum
end

local function posts_to(requests, pattern)
  local found = {}
  for _, request in ipairs(requests) do
    if request.method == "POST" and request.path:match(pattern) then
      found[#found + 1] = request
    end
  end
  return found
end

describe("life cycle", function()
  local emu, client

  setup(function()
    emu = emulator.start { api_key = KEY, polls = 1,
                           workflow_dirs = { [WORKFLOW_ID] = fixtures.EXAMPLE_DIR },
                           models = { MODEL_ID } }
    client = kw.client { host = emu.url, api_key = KEY }
  end)

  teardown(function()
    emu:stop()
  end)

  before_each(function()
    emu:reset()
  end)

  local function upload_example()
    local fields = {}
    for _, def in ipairs(kw.definition_files) do
      fields[def.field] = assert(client.files.upload(fixtures.EXAMPLE_DIR .. "/" .. def.file)).fileId
    end
    return fields
  end

  it("imports a new workflow", function()
    local fields = upload_example()
    fields.workflowName = "Banking Assistant " .. os.time() .. "-" .. math.random(1e6)
    local job, err = client.workflow.import_new(fields)
    assert.is_nil(err)
    assert.is_string(job.dockStatusId)
    assert.matches("^a%-", job.workflowId)
    local final = assert(client:wait(job.dockStatusId, FAST))
    assert.equal("SUCCESS", final.status)
    local stored = emu:workflow(job.workflowId)
    assert.equal(fixtures.read_file(fixtures.EXAMPLE_DIR .. "/flow_definition.json"), stored.flowData)
  end)

  it("reports a taken name of a new workflow", function()
    local fields = upload_example()
    fields.workflowName = "Taken " .. os.time() .. "-" .. math.random(1e6)
    assert(client.workflow.import_new(fields))
    local job, err = client.workflow.import_new(fields)
    assert.is_nil(job)
    assert.equal("http", err.kind)
    assert.equal(409, err.status)
    assert.matches("import of a new workflow failed with HTTP 409", err.message, 1, true)
    assert.matches(fields.workflowName, err.message, 1, true)
  end)

  it("rejects a new import without a name before any request", function()
    local ok, message = pcall(client.workflow.import_new, { workflowDataFileId = "a",
                                                           flowDataFileId = "b" })
    assert.is_false(ok)
    assert.matches("workflowName", message, 1, true)
    assert.equal(0, #emu:requests())
  end)

  it("exports a workflow to a zip holding its definitions", function()
    local path = os.tmpname() .. ".zip"
    local saved, err = client:export_to(WORKFLOW_ID, path, FAST)
    assert.is_nil(err)
    assert.equal(path, saved.path)
    assert.is_true(saved.bytes > 0)
    assert.equal("SUCCESS", saved.job.status)
    assert.is_string(saved.job.downloadUrl)
    local dir = fixtures.temp_dir()
    assert(os.execute(("cd '%s' && unzip -qo '%s'"):format(dir, path)))
    for _, def in ipairs(kw.definition_files) do
      local handle = assert(io.popen(("find '%s' -name '%s'"):format(dir, def.file)))
      local found = handle:read("*l")
      handle:close()
      assert.is_string(found, def.file)
      assert.equal(fixtures.read_file(fixtures.EXAMPLE_DIR .. "/" .. def.file),
        fixtures.read_file(found))
    end
    os.remove(path)
  end)

  it("sends the key only to its own host when downloading", function()
    local job = assert(client.workflow.export(WORKFLOW_ID))
    local final = assert(client:wait(job.dockStatusId, FAST))
    local function key_header_sent(url)
      local lines = {}
      local logged = kw.client { host = emu.url, api_key = KEY, verbose = true,
                                 logger = function(line) lines[#lines + 1] = line end }
      local path = os.tmpname()
      assert(logged:download(url, path))
      os.remove(path)
      for _, line in ipairs(lines) do
        if line:lower():find("^> x%-api%-key:") then
          return true
        end
      end
      return false
    end
    assert.is_true(key_header_sent(final.downloadUrl))
    assert.is_false(key_header_sent((final.downloadUrl:gsub("127%.0%.0%.1", "localhost"))))
  end)

  it("leaves no file behind when a download fails", function()
    local path = os.tmpname()
    os.remove(path)
    local saved, err = client:download(emu.url .. "/_mock/exports/none.zip?signature=bad", path)
    assert.is_nil(saved)
    assert.equal("http", err.kind)
    assert.is_nil(io.open(path, "rb"))
    assert.is_nil(io.open(path .. ".part", "rb"))
  end)

  it("deploys synchronously and undeploys", function()
    local job, err = client.workflow.deploy(WORKFLOW_ID, { async = false })
    assert.is_nil(err)
    assert.equal("SUCCESS", job.status)
    assert.is_true(emu:workflow(WORKFLOW_ID).deployed)
    local request = posts_to(emu:requests(), "/deploy$")[1]
    assert.same({ isAsync = false }, request.body)
    job = assert(client.workflow.undeploy(WORKFLOW_ID))
    assert(client:wait(job.dockStatusId, FAST))
    assert.is_false(emu:workflow(WORKFLOW_ID).deployed)
  end)

  it("deploys asynchronously and waits", function()
    local job = assert(client.workflow.deploy(WORKFLOW_ID, { async = true }))
    assert.equal("IN_PROGRESS", job.status)
    local final = assert(client:wait(job.dockStatusId, FAST))
    assert.equal("SUCCESS", final.status)
  end)

  it("rejects deploy without async before any request", function()
    local ok, message = pcall(client.workflow.deploy, WORKFLOW_ID, {})
    assert.is_false(ok)
    assert.matches("async", message, 1, true)
    ok, message = pcall(client.workflow.deploy, WORKFLOW_ID, { async = "yes" })
    assert.is_false(ok)
    assert.matches("boolean", message, 1, true)
    assert.equal(0, #emu:requests())
  end)

  it("uploads a 60 MB file through a session in bounded memory", function()
    local path = os.tmpname()
    make_file(path, 60)
    collectgarbage()
    local clear = io.open("/proc/self/clear_refs", "w")
    local baseline = read_status_kib("VmRSS")
    if clear then
      clear:write("5")
      clear:close()
    end
    local chunks = 0
    local file, err = client.files.upload(path, { on_chunk = function() chunks = chunks + 1 end })
    local peak = read_status_kib("VmHWM")
    assert.is_nil(err)
    assert.matches("^%x+$", file.fileId)
    assert.equal(12, chunks)
    print(("60 MB upload in %d chunks: peak RSS %.1f MiB above the %.1f MiB baseline")
      :format(chunks, (peak - baseline) / 1024, baseline / 1024))
    assert.is_true(peak - baseline < 8 * 1024)

    local copy = os.tmpname()
    local saved = assert(client:download(file.url, copy))
    assert.equal(60 * 1024 * 1024, saved.bytes)
    assert.equal(sha256(path), sha256(copy))
    os.remove(copy)
    os.remove(path)
  end)

  it("resends a failed chunk alone", function()
    local path = os.tmpname()
    make_file(path, 26)
    emu:script { method = "POST", path_pattern = "^/api/public/files/session/[%x%-]+$",
                 responses = { { status = 503, body = '{"message":"busy"}' } } }
    local retries = {}
    local file, err = client.files.upload(path, {
      chunk_size = 9 * 1024 * 1024,
      on_chunk_retry = function(number) retries[#retries + 1] = number end,
    })
    assert.is_nil(err)
    assert.is_string(file.fileId)
    assert.same({ 0 }, retries)
    local chunk_posts = posts_to(emu:requests(), "^/api/public/files/session/[%x%-]+$")
    assert.equal(4, #chunk_posts)
    assert.equal(1, #posts_to(emu:requests(), "/complete$"))
    assert.equal(1, #posts_to(emu:requests(), "/session/start$"))
    os.remove(path)
  end)

  it("sends chunkNumber from 0 and a chunk size option", function()
    local path = os.tmpname()
    make_file(path, 26)
    assert(client.files.upload(path, { chunk_size = 13 * 1024 * 1024 }))
    local start = posts_to(emu:requests(), "/session/start$")[1]
    assert.equal(2, start.body.totalChunks)
    assert.equal(26 * 1024 * 1024, start.body.fileSize)
    os.remove(path)
  end)

  it("imports a model through a session and reports progress", function()
    local path = os.tmpname() .. ".bin"
    make_file(path, 1)
    local job, err = client.models.import(path)
    assert.is_nil(err)
    assert.is_string(job.dockStatusId)
    assert.is_string(job.modelId)
    local percentages = {}
    local final = assert(client:wait(job.dockStatusId, {
      timeout = 30, interval = 0.05, max_interval = 0.2,
      on_progress = function(status) percentages[#percentages + 1] = status.percentageComplete end,
    }))
    assert.equal("SUCCESS", final.status)
    assert.is_true(#percentages >= 1)
    assert.equal(100, percentages[#percentages])
    local start = posts_to(emu:requests(), "/session/start$")[1]
    assert.equal("model", start.body.fileContext)
    os.remove(path)
  end)

  it("exports, deploys and undeploys a model", function()
    local job = assert(client.models.export(MODEL_ID))
    assert(client:wait(job.dockStatusId, FAST))
    job = assert(client.models.deploy(MODEL_ID, { model_type = "openSource", name = "demo",
                                                  hyperParameters = { batch = 4 } }))
    assert(client:wait(job.dockStatusId, FAST))
    local request = posts_to(emu:requests(), "/deploy")[1]
    assert.matches("modelType=openSource", request.path, 1, true)
    assert.equal("demo", request.body.name)
    job = assert(client.models.undeploy(MODEL_ID))
    assert(client:wait(job.dockStatusId, FAST))
  end)

  it("rejects a model deploy without model_type before any request", function()
    local ok, message = pcall(client.models.deploy, MODEL_ID, { name = "demo" })
    assert.is_false(ok)
    assert.matches("model_type", message, 1, true)
    assert.equal(0, #emu:requests())
  end)

  it("imports a UI export zip", function()
    local path = os.tmpname() .. ".zip"
    assert(client:export_to(WORKFLOW_ID, path, FAST))
    local final, err = client:import_files(WORKFLOW_ID, path, FAST)
    assert.is_nil(err)
    assert.equal("SUCCESS", final.status)
    os.remove(path)
  end)

  it("rejects a zip without env_variables.json before any request", function()
    local dir = fixtures.copy_example()
    os.remove(dir .. "/env_variables.json")
    local path = os.tmpname() .. ".zip"
    assert(os.execute(("cd '%s' && zip -q '%s' *.json"):format(dir, path)))
    emu:reset()
    local final, err = client:import_files(WORKFLOW_ID, path)
    assert.is_nil(final)
    assert.equal("file", err.kind)
    assert.matches("env_variables.json", err.message, 1, true)
    assert.equal(0, #emu:requests())
    os.remove(path)
  end)

  it("backs up the current version before importing", function()
    local backup = os.tmpname() .. ".zip"
    local steps = {}
    local options = { on_step = function(step) steps[#steps + 1] = step end, backup = backup }
    for k, v in pairs(FAST) do
      options[k] = v
    end
    local final, err = client:import_files(WORKFLOW_ID, fixtures.EXAMPLE_DIR, options)
    assert.is_nil(err)
    assert.equal("SUCCESS", final.status)
    assert.equal("backup", steps[2])
    assert.is_true(#fixtures.read_file(backup) > 0)
    os.remove(backup)
  end)

  it("keeps the backup when the import fails", function()
    local backup = os.tmpname() .. ".zip"
    emu:script { method = "POST", path = "/api/public/workflows/" .. WORKFLOW_ID .. "/import",
                 responses = { { status = 500, body = '{"message":"import broke"}' } } }
    local final, err = client:import_files(WORKFLOW_ID, fixtures.EXAMPLE_DIR,
      { backup = backup, timeout = 30, interval = 0.05 })
    assert.is_nil(final)
    assert.equal(500, err.status)
    assert.is_true(#fixtures.read_file(backup) > 0)
    os.remove(backup)
  end)
end)
