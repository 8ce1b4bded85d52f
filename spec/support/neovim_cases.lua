-- Runs one case of spec/nvim_spec.lua inside headless Neovim, started by
-- spec/support/neovim.lua. Settings come from the environment:
--   KORE_TEST_ROOT      absolute path of the checkout
--   KORE_NVIM_CASE      name of the case in `cases` below
--   KORE_NVIM_RESULT    file that receives the case's result as JSON
--   KORE_NVIM_TIMEOUT   seconds before the case gives up (default 30)
--   KORE_HOST, KORE_API_KEY, KORE_TEST_WORKFLOW_ID
-- While the case runs, a 10 ms libuv timer records the gaps between its
-- ticks, so the result shows whether anything blocked the event loop.
local root = assert(os.getenv("KORE_TEST_ROOT"), "KORE_TEST_ROOT is not set")
package.path = root .. "/lua/?.lua;" .. root .. "/lua/?/init.lua;" .. package.path
package.cpath = root .. "/build-luajit/?.so;" .. package.cpath

local result_path = assert(os.getenv("KORE_NVIM_RESULT"), "KORE_NVIM_RESULT is not set")
local case_name = os.getenv("KORE_NVIM_CASE")
local time_limit = tonumber(os.getenv("KORE_NVIM_TIMEOUT")) or 30

local TICK_MS = 10
local uv = vim.loop

-- The 10 ms timer, its tick count and the maximum gap between two ticks, in
-- nanoseconds of uv.hrtime.
local ticker = { timer = uv.new_timer(), ticks = 0, max_gap = 0 }

local function start_ticker()
  ticker.last = uv.hrtime()
  ticker.timer:start(TICK_MS, TICK_MS, function()
    local now = uv.hrtime()
    ticker.max_gap = math.max(ticker.max_gap, now - ticker.last)
    ticker.last = now
    ticker.ticks = ticker.ticks + 1
  end)
end

local function seconds_since(start)
  return (uv.hrtime() - start) / 1e9
end

local finished = false

-- Writes the result with the timer figures to the result file and quits.
local function finish(result)
  if finished then
    return
  end
  finished = true
  ticker.timer:stop()
  ticker.timer:close()
  result.max_gap_ms = ticker.max_gap / 1e6
  result.ticks = ticker.ticks
  local handle = assert(io.open(result_path, "w"))
  handle:write(vim.json.encode(result))
  handle:close()
  vim.cmd("qa!")
end

-- Returns a plain table that describes err: the fields of an error table of
-- kore_workflow, or the type and text of any other value.
local function describe_error(err)
  if type(err) ~= "table" then
    return { type = type(err), text = tostring(err) }
  end
  return {
    type = "table",
    kind = err.kind,
    status = err.status,
    message = err.message,
    text = tostring(err),
  }
end

local function new_client(kwn)
  return kwn.client { host = os.getenv("KORE_HOST"), api_key = os.getenv("KORE_API_KEY") }
end

local EXPORT_DIR = "examples/banking-assistant"

local cases = {}

-- Loads examples/nvim.lua as it is, runs :KoreImport and waits until its
-- buffer shows the outcome.
function cases.snippet_import()
  vim.api.nvim_set_var("kore_workflow_id", os.getenv("KORE_TEST_WORKFLOW_ID"))
  vim.cmd("luafile " .. vim.fn.fnameescape(root .. "/examples/nvim.lua"))

  local started = uv.hrtime()
  vim.cmd("KoreImport " .. vim.fn.fnameescape(EXPORT_DIR))
  local command_seconds = seconds_since(started)
  local buf = vim.api.nvim_get_current_buf()

  local function check()
    local lines = vim.api.nvim_buf_get_lines(buf, 0, -1, false)
    for _, line in ipairs(lines) do
      local status, dock_status_id = line:match("^done: (%S+) %(dock status (%S+)%)$")
      if status or line:find("^failed: ") then
        finish {
          import_seconds = seconds_since(started),
          command_seconds = command_seconds,
          status = status,
          dock_status_id = dock_status_id,
          lines = lines,
        }
        return
      end
    end
  end

  vim.api.nvim_buf_attach(buf, false, {
    on_lines = function()
      vim.schedule(check)
    end,
  })
end

-- Imports into a workflow that the server does not know.
function cases.import_unknown_workflow()
  local kwn = require "kore_workflow.nvim"
  local client = new_client(kwn)
  kwn.import_files(client, os.getenv("KORE_TEST_WORKFLOW_ID"), EXPORT_DIR, nil, function(job, err)
    finish { job_is_nil = job == nil, err = describe_error(err) }
  end)
end

-- Raises a Lua error in the coroutine after a request, so the error comes
-- from a resumed coroutine and not from the first run of fn.
function cases.error_after_request()
  local kwn = require "kore_workflow.nvim"
  local client = new_client(kwn)
  kwn.run(function()
    client.workflow.status("ds-before-error")
    error("raised after a request")
  end, function(first, second)
    finish { first_is_nil = first == nil, err = describe_error(second) }
  end)
end

-- Runs two calls without on_done: one raises, one returns nil, err. Both
-- must reach vim.notify.
function cases.notify_without_on_done()
  local kwn = require "kore_workflow.nvim"
  local client = new_client(kwn)
  local notes = {}
  vim.notify = function(message, level) -- luacheck: ignore 122
    notes[#notes + 1] = { message = message, level = level }
    if #notes == 2 then
      finish { notes = notes, error_level = vim.log.levels.ERROR }
    end
  end
  kwn.run(function()
    kwn.adapter.sleep(0.01)
    error("raised without on_done")
  end)
  kwn.run(function()
    return client.workflow.status("ds-unknown-without-on-done")
  end)
end

-- Passes every result of fn to on_done, nils included.
function cases.all_results()
  local kwn = require "kore_workflow.nvim"
  kwn.run(function()
    kwn.adapter.sleep(0.01)
    return "one", nil, 3
  end, function(...)
    local count = select("#", ...)
    local values = {}
    for i = 1, count do
      values[i] = tostring((select(i, ...)))
    end
    finish { count = count, values = values }
  end)
end

-- Calls adapter.sleep where it must raise: in the main thread and in a
-- coroutine that kore_workflow.nvim.run did not start.
function cases.sleep_outside_run()
  local kwn = require "kore_workflow.nvim"
  local main_ok, main_message = pcall(kwn.adapter.sleep, 0.01)
  local foreign_ok, foreign_message = coroutine.wrap(function()
    return pcall(kwn.adapter.sleep, 0.01)
  end)()
  finish {
    main_ok = main_ok,
    main_message = tostring(main_message),
    foreign_ok = foreign_ok,
    foreign_message = tostring(foreign_message),
  }
end

-- Calls run from a libuv timer callback with an fn that uses vim.api, which
-- raises inside such a callback unless run moves fn to the main loop.
function cases.run_from_libuv_callback()
  local kwn = require "kore_workflow.nvim"
  local timer = uv.new_timer()
  timer:start(0, 0, function()
    timer:close()
    kwn.run(function()
      vim.api.nvim_buf_set_lines(0, 0, -1, false, { "written by fn" })
      return vim.api.nvim_buf_get_lines(0, 0, -1, false)[1]
    end, function(line, err)
      finish { line = line, err = err ~= nil and describe_error(err) or nil }
    end)
  end)
end

-- Yields from fn with coroutine.yield, which the adapter cannot resume.
function cases.foreign_yield()
  local kwn = require "kore_workflow.nvim"
  kwn.run(function()
    coroutine.yield("not a sleep")
  end, function(first, second)
    finish { first_is_nil = first == nil, err = describe_error(second) }
  end)
end

-- Starts three imports, then waits for all three jobs at once with
-- client:wait_all, whose scheduler sleeps through the adapter.
function cases.wait_all()
  local kwn = require "kore_workflow.nvim"
  local client = new_client(kwn)
  local workflow_id = os.getenv("KORE_TEST_WORKFLOW_ID")
  kwn.run(function()
    local ids = {}
    for i = 1, 3 do
      local job, err = client:import_files(workflow_id, EXPORT_DIR, { wait = false })
      if not job then
        return nil, err
      end
      ids[i] = job.dockStatusId
    end
    local started = uv.hrtime()
    local jobs, errors = client:wait_all(ids, { interval = 0.1 })
    return { jobs = jobs, errors = errors, ids = ids, seconds = seconds_since(started) }
  end, function(outcome, err)
    if not outcome then
      finish { err = describe_error(err) }
      return
    end
    local statuses, error_texts = {}, {}
    for i, id in ipairs(outcome.ids) do
      statuses[i] = outcome.jobs[i] and outcome.jobs[i].status or "none"
      if outcome.jobs[i] and outcome.jobs[i].dockStatusId ~= id then
        statuses[i] = "wrong id " .. tostring(outcome.jobs[i].dockStatusId)
      end
      if outcome.errors and outcome.errors[i] then
        error_texts[#error_texts + 1] = tostring(outcome.errors[i])
      end
    end
    finish { statuses = statuses, errors = error_texts, wait_seconds = outcome.seconds }
  end)
end

vim.defer_fn(function()
  finish { error = ("the case %s did not finish within %d s"):format(tostring(case_name), time_limit) }
end, time_limit * 1000)

local case = cases[case_name]
if not case then
  finish { error = "unknown case " .. tostring(case_name) }
  return
end
start_ticker()
local ok, message = pcall(case)
if not ok then
  finish { error = "the case raised an error: " .. tostring(message) }
end
