--- A small cooperative scheduler for running several non-blocking calls at
-- once in plain Lua.
--
-- Each task is a coroutine. Its adapter's sleep(seconds) yields to the
-- scheduler, which resumes the task when the time has passed; when every task
-- is asleep, the scheduler itself sleeps through `idle_sleep` (a blocking
-- sleep, or a host adapter's sleep when the scheduler runs inside one).
-- With a `poll` function, an idle wait while a task waits on a transfer goes
-- through poll instead, and socket activity wakes every such task at once.
local M = {}

local Scheduler = {}
Scheduler.__index = Scheduler

-- Marks the scheduler's own yields, so that a task's other yields are detected.
local SLEEP = {}

--- Creates a scheduler.
---@param options table idle_sleep(seconds) and clock() (both required), and
--- optionally poll(seconds), which blocks until a socket of the tasks'
--- transfers is ready or the time is up and returns true in the first case,
--- such as function(seconds) return client:poll(seconds) end
function M.new(options)
  return setmetatable({
    tasks = {},
    idle_sleep = options.idle_sleep,
    clock = options.clock,
    poll = options.poll,
  }, Scheduler)
end

--- The adapter that tasks of any scheduler suspend through. A sleep given a
-- request waits on that transfer, and poll may end it early.
M.task_adapter = {
  sleep = function(seconds, request)
    coroutine.yield(SLEEP, seconds, request ~= nil)
  end,
}

local function unpack_args(args)
  return (table.unpack or unpack)(args, 1, args.n)
end

--- Adds a task that runs fn(...) when the scheduler runs.
function Scheduler:spawn(fn, ...)
  local args = { n = select("#", ...), ... }
  local task = {
    co = coroutine.create(function()
      return fn(unpack_args(args))
    end),
    wake = 0,
  }
  self.tasks[#self.tasks + 1] = task
  return task
end

local function resume(task)
  local ok, marker, seconds, on_transfer = coroutine.resume(task.co)
  if not ok then
    error(debug.traceback(task.co, marker), 0)
  end
  if coroutine.status(task.co) == "dead" then
    return true
  end
  if marker ~= SLEEP then
    error("kore_workflow: a task yielded outside the scheduler's sleep; run other "
      .. "coroutine code outside scheduled tasks", 0)
  end
  task.delay = seconds
  task.on_transfer = on_transfer
  return false
end

--- Runs until every task has finished; a task's error is raised here.
function Scheduler:run()
  while #self.tasks > 0 do
    local now = self.clock()
    local index = 1
    while index <= #self.tasks do
      local task = self.tasks[index]
      if task.wake <= now and resume(task) then
        table.remove(self.tasks, index)
      else
        if task.delay then
          local delay = task.delay
          if type(delay) ~= "number" or delay ~= delay or delay < 0 then
            delay = 0
          end
          task.wake = self.clock() + delay
          task.delay = nil
        end
        index = index + 1
      end
    end

    local earliest, on_transfer
    for _, task in ipairs(self.tasks) do
      if earliest == nil or task.wake < earliest then
        earliest = task.wake
      end
      on_transfer = on_transfer or task.on_transfer
    end
    if earliest then
      local wait = earliest - self.clock()
      if wait > 0 and self.poll and on_transfer then
        if self.poll(wait) then
          for _, task in ipairs(self.tasks) do
            if task.on_transfer then
              task.wake = 0
            end
          end
        end
      elseif wait > 0 then
        self.idle_sleep(wait)
      end
    end
  end
end

return M
