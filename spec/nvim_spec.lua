-- The Neovim host adapter, kore_workflow.nvim, in a real headless Neovim with
-- the C core built for LuaJIT. Each case runs one `nvim --headless` process
-- (spec/support/neovim_cases.lua) against an emulator started here, and a
-- 10 ms timer inside Neovim measures how long the event loop was blocked.
local kw = require "kore_workflow"
local emulator = require "support.emulator"
local fixtures = require "support.fixtures"
local neovim = require "support.neovim"

local KEY = fixtures.TEST_KEY
local SERVER_DELAY = 1 -- seconds the emulator takes for each dock-status reply
local MAX_GAP_MS = 50 -- maximum gap between ticks of the 10 ms timer that counts as responsive
local DOCK_STATUS_PATTERN = "^/api/public/dock%-status/"

local function has_line(lines, expected)
  for _, line in ipairs(lines) do
    if line == expected then
      return true
    end
  end
  return false
end

local function count_requests(requests, method, path)
  local count = 0
  for _, request in ipairs(requests) do
    if request.method == method and request.path == path then
      count = count + 1
    end
  end
  return count
end

describe("Neovim host adapter", function()
  local emu, env

  setup(function()
    neovim.build_core()
    emu = emulator.start { api_key = KEY, polls = 1 }
    env = {
      KORE_HOST = emu.url,
      KORE_API_KEY = KEY,
      KORE_TEST_WORKFLOW_ID = fixtures.WORKFLOW_ID,
    }
  end)

  teardown(function()
    if emu then
      emu:stop()
    end
  end)

  before_each(function()
    emu:reset()
  end)

  -- Makes every dock-status reply take SERVER_DELAY seconds.
  local function slow_dock_status()
    emu:script {
      method = "GET",
      path_pattern = DOCK_STATUS_PATTERN,
      responses = { { delay = SERVER_DELAY, passthrough = true } },
      ["repeat"] = -1,
    }
  end

  -- Runs a case and returns its result. Fails with Neovim's output when the
  -- case wrote no result or reported an error.
  local function run_case(name, case_env)
    local result, run = neovim.run(name, case_env or env)
    local context = ("the case %s in Neovim (exit status %d after %.1f s) printed:\n%s")
      :format(name, run.status, run.seconds, run.output)
    if run.status == 127 then
      context = context .. "\nIs nvim installed? On Debian it is the package neovim."
    end
    assert(result ~= nil, "no result from " .. context)
    assert(result.error == nil, tostring(result.error) .. "; " .. context)
    assert.is_false(fixtures.contains(run.output, KEY), "Neovim's output contains the API key")
    assert.is_false(fixtures.contains(result, KEY), "the case's result contains the API key")
    return result, run
  end

  it("runs the example import without blocking", function()
    slow_dock_status()
    local result, run = run_case("snippet_import")
    print(("max timer gap %.1f ms over %d ticks during a %.1f s import; :KoreImport "
      .. "returned after %.1f ms; Neovim ran %.1f s in all")
      :format(result.max_gap_ms, result.ticks, result.import_seconds,
        result.command_seconds * 1000, run.seconds))

    assert.equal("SUCCESS", result.status, "the buffer holds:\n" .. table.concat(result.lines, "\n"))
    local done_line = ("done: SUCCESS (dock status %s)"):format(result.dock_status_id)
    assert.is_true(has_line(result.lines, done_line), "the buffer lacks '" .. done_line .. "'")
    -- on_progress writes to the buffer from inside the coroutine, which only
    -- works when the coroutine runs in the main loop.
    assert.is_true(has_line(result.lines, "status: IN_PROGRESS"),
      "the buffer lacks the progress line 'status: IN_PROGRESS'")
    assert.is_true(result.max_gap_ms < MAX_GAP_MS,
      ("the 10 ms timer paused for %.1f ms"):format(result.max_gap_ms))

    -- The job was polled until it ended, and each poll took SERVER_DELAY.
    local requests = emu:requests()
    local polls = count_requests(requests, "GET", "/api/public/dock-status/" .. result.dock_status_id)
    assert.is_true(polls >= 2, ("the job was polled %d times, not at least twice"):format(polls))
    assert.is_true(result.import_seconds >= polls * SERVER_DELAY,
      ("the import took %.2f s, less than %d polls of %d s"):format(result.import_seconds, polls, SERVER_DELAY))
    -- Ticks came on time: at least half the ticks that fit into the import.
    local expected_ticks = result.import_seconds * 1000 / 10
    assert.is_true(result.ticks >= expected_ticks / 2,
      ("%d ticks in %.2f s"):format(result.ticks, result.import_seconds))

    emu:reset()
    local client = kw.client { host = emu.url, api_key = KEY }
    local job, err = client.workflow.status(result.dock_status_id)
    assert.is_nil(err)
    assert.equal("SUCCESS", job.status)
  end)

  it("passes an HTTP error to on_done", function()
    local unknown = "a-00000000-0000-4000-8000-00000000dead"
    local case_env = {}
    for name, value in pairs(env) do
      case_env[name] = value
    end
    case_env.KORE_TEST_WORKFLOW_ID = unknown
    local result = run_case("import_unknown_workflow", case_env)

    assert.is_true(result.job_is_nil)
    assert.equal("table", result.err.type)
    assert.equal("http", result.err.kind)
    assert.equal(404, result.err.status)
    assert.matches(unknown, result.err.message, 1, true)
    assert.equal(1, count_requests(emu:requests(), "POST", "/api/public/workflows/" .. unknown .. "/import"))
  end)

  it("passes a Lua error to on_done as a string", function()
    local result = run_case("error_after_request")

    assert.is_true(result.first_is_nil)
    assert.equal("string", result.err.type)
    assert.matches("raised after a request", result.err.text, 1, true)
    assert.matches("stack traceback", result.err.text, 1, true)
    assert.equal(1, count_requests(emu:requests(), "GET", "/api/public/dock-status/ds-before-error"))
  end)

  it("notifies failures without on_done", function()
    local result = run_case("notify_without_on_done")

    assert.equal(2, #result.notes)
    local by_text = {}
    for _, note in ipairs(result.notes) do
      for _, text in ipairs { "ds-unknown-without-on-done", "raised without on_done" } do
        if note.message:find(text, 1, true) then
          by_text[text] = note
        end
      end
    end
    assert.is_table(by_text["ds-unknown-without-on-done"], "no notification names the unknown dock status")
    assert.is_table(by_text["raised without on_done"], "no notification holds the raised error")
    assert.equal(result.error_level, by_text["ds-unknown-without-on-done"].level)
    assert.equal(result.error_level, by_text["raised without on_done"].level)
  end)

  it("passes every result to on_done", function()
    local result = run_case("all_results")

    assert.equal(3, result.count)
    assert.same({ "one", "nil", "3" }, result.values)
  end)

  it("rejects sleep outside run", function()
    local result = run_case("sleep_outside_run")

    assert.is_false(result.main_ok)
    assert.matches("outside a coroutine of kore_workflow.nvim.run", result.main_message, 1, true)
    assert.is_false(result.foreign_ok)
    assert.matches("outside a coroutine of kore_workflow.nvim.run", result.foreign_message, 1, true)
  end)

  it("starts fn in the main loop", function()
    local result = run_case("run_from_libuv_callback")

    assert.is_nil(result.err)
    assert.equal("written by fn", result.line)
  end)

  it("reports a yield outside sleep", function()
    local result = run_case("foreign_yield")

    assert.is_true(result.first_is_nil)
    assert.equal("string", result.err.type)
    assert.matches("yielded outside adapter.sleep", result.err.text, 1, true)
  end)

  it("runs wait_all inside run", function()
    slow_dock_status()
    local result = run_case("wait_all")
    print(("wait_all of 3 jobs took %.2f s with %d s dock-status replies; max timer gap %.1f ms")
      :format(result.wait_seconds, SERVER_DELAY, result.max_gap_ms))

    assert.same({ "SUCCESS", "SUCCESS", "SUCCESS" }, result.statuses)
    assert.equal(0, #result.errors)
    -- Each job needs two polls in sequence, so waiting for three jobs one
    -- after another would take three times as long.
    assert.is_true(result.wait_seconds >= 2 * SERVER_DELAY,
      ("wait_all took %.2f s"):format(result.wait_seconds))
    assert.is_true(result.wait_seconds < 4 * SERVER_DELAY,
      ("wait_all took %.2f s, so the jobs were not polled at once"):format(result.wait_seconds))
    assert.is_true(result.max_gap_ms < MAX_GAP_MS,
      ("the 10 ms timer paused for %.1f ms"):format(result.max_gap_ms))
  end)
end)
