--- Neovim host adapter: runs kore_workflow calls without blocking the editor.
--
-- A call runs in a coroutine. While a request is in flight, the coroutine
-- sleeps on a libuv timer (vim.loop) between steps of the request, so the
-- editor keeps handling input, redraws and other timers. The coroutine is
-- resumed through vim.schedule, so code inside it (an on_progress or on_step
-- callback) may call any vim.api function.
--
--   local kwn = require("kore_workflow.nvim")
--   local client = kwn.client { host = ..., api_key = ... }
--   kwn.import_files(client, workflow_id, "exports/x", nil, function(job, err) ... end)
local kw = require "kore_workflow"

local M = {}

-- Marks the adapter's own yields, so that any other yield is reported.
local SLEEP = {}

-- Coroutines started by M.run, the only ones adapter.sleep may suspend.
local owned = setmetatable({}, { __mode = "k" })

local function pack(...)
  return { n = select("#", ...), ... }
end

local function unpack_results(results, first)
  return (table.unpack or unpack)(results, first, results.n)
end

-- Returns the running coroutine when M.run started it, otherwise nil.
local function owned_coroutine()
  local co = coroutine.running()
  if co ~= nil and owned[co] then
    return co
  end
  return nil
end

--- Adapter for client:nonblocking(adapter).
M.adapter = {
  --- Suspends the running coroutine for `seconds`. The coroutine must have
  --- been started by kore_workflow.nvim.run. In any other coroutine this
  --- raises an error, because the yield would go to a resumer that does not
  --- expect it.
  ---@param seconds number
  sleep = function(seconds)
    if owned_coroutine() == nil then
      error("kore_workflow.nvim: adapter.sleep ran outside a coroutine of "
        .. "kore_workflow.nvim.run; start the call with kore_workflow.nvim.run(fn, on_done)", 2)
    end
    coroutine.yield(SLEEP, seconds)
  end,
}

-- Converts a sleep length in seconds to whole timer milliseconds. A value
-- that is not a number, NaN or negative counts as 0.
local function timer_milliseconds(seconds)
  if type(seconds) ~= "number" or seconds ~= seconds or seconds <= 0 then
    return 0
  end
  return math.floor(seconds * 1000 + 0.5)
end

-- Calls on_done with the results in the main loop, where every vim.api
-- function is allowed. Without on_done, reports a failure with vim.notify,
-- so that it is not lost: a Lua error, or the nil, err that fn returned.
local function deliver(on_done, results)
  vim.schedule(function()
    if on_done then
      on_done(unpack_results(results, 1))
    elseif results[1] == nil and results[2] ~= nil then
      vim.notify("kore_workflow: " .. tostring(results[2]), vim.log.levels.ERROR)
    end
  end)
end

-- Resumes co with the arguments. When co finishes or raises an error, passes
-- the outcome to deliver. When it sleeps, starts a timer that resumes it.
local function resume(co, on_done, ...)
  local outcome = pack(coroutine.resume(co, ...))
  if not outcome[1] then
    owned[co] = nil
    deliver(on_done, pack(nil, debug.traceback(co, tostring(outcome[2]))))
    return
  end
  if coroutine.status(co) == "dead" then
    owned[co] = nil
    deliver(on_done, pack(unpack_results(outcome, 2)))
    return
  end
  if outcome[2] ~= SLEEP then
    owned[co] = nil
    deliver(on_done, pack(nil, "kore_workflow.nvim: the function yielded outside "
      .. "adapter.sleep, so it cannot be resumed; call coroutine.yield only in a "
      .. "coroutine of your own"))
    return
  end

  local timer = vim.loop.new_timer()
  timer:start(timer_milliseconds(outcome[3]), 0, function()
    timer:close()
    -- The timer callback runs in a libuv callback, where most of vim.api is
    -- not allowed, so the coroutine continues in the main loop instead.
    vim.schedule(function()
      resume(co, on_done)
    end)
  end)
end

--- Runs fn() in a new coroutine that sleeps through M.adapter, and returns at
--- once. When fn returns, on_done receives its results. When fn raises an
--- error, on_done receives nil and the error as a string with a traceback.
--- on_done runs through vim.schedule, so it may call any vim.api function.
--- Without on_done, an error, or a nil, err result of fn, goes to vim.notify.
--- Called inside a libuv callback, run starts fn later in the main loop.
--- Elsewhere fn starts at once.
---@param fn function
---@param on_done fun(...: any)|nil
function M.run(fn, on_done)
  if type(fn) ~= "function" then
    error("bad argument #1 (fn) to 'kore_workflow.nvim.run' (function expected, got "
      .. type(fn) .. ")", 2)
  end
  if on_done ~= nil and type(on_done) ~= "function" then
    error("bad argument #2 (on_done) to 'kore_workflow.nvim.run' (function or nil expected, got "
      .. type(on_done) .. ")", 2)
  end
  local co = coroutine.create(fn)
  owned[co] = true
  if vim.in_fast_event() then
    vim.schedule(function()
      resume(co, on_done)
    end)
  else
    resume(co, on_done)
  end
end

--- Creates a non-blocking client: kore_workflow.client(options) in the form
--- whose calls sleep through M.adapter. Its calls must run inside M.run.
---@param options table as for kore_workflow.client
---@return table client
function M.client(options)
  return kw.client(options):nonblocking(M.adapter)
end

--- Runs client:import_files(workflow_id, source, options) through M.run and
--- returns at once. on_done receives the final job, or nil and the error.
---@param client table a client from M.client
---@param workflow_id string
---@param source string|table export directory, or { workflow_data, flow_data, env_variables }
---@param options table|nil as for client:import_files
---@param on_done fun(job: table|nil, err: table|string|nil)|nil
function M.import_files(client, workflow_id, source, options, on_done)
  M.run(function()
    return client:import_files(workflow_id, source, options)
  end, on_done)
end

return M
