-- Stepped requests on the curl multi handle, the non-blocking client, and
-- the calls that run many requests at once.
local kw = require "kore_workflow"
local scheduler = require "kore_workflow.scheduler"
local emulator = require "support.emulator"
local fixtures = require "support.fixtures"

local KEY = fixtures.TEST_KEY
local DELAY = 0.5

describe("non-blocking requests", function()
  local emu, client

  setup(function()
    emu = emulator.start { api_key = KEY, delay = DELAY, polls = 1 }
    client = kw.client { host = emu.url, api_key = KEY }
  end)

  teardown(function()
    emu:stop()
  end)

  before_each(function()
    emu:reset()
  end)

  it("keeps several requests in flight on one client", function()
    local count = 8
    local requests = {}
    local started = kw.monotonic()
    for i = 1, count do
      requests[i] = assert(client._api.start.workflow.status("ds-parallel-" .. i))
    end
    local finished = 0
    while finished < count do
      finished = 0
      for i = 1, count do
        if requests[i]:step() then
          finished = finished + 1
        end
      end
      kw.sleep(requests[1]:next_step())
    end
    local elapsed = kw.monotonic() - started
    print(("%d requests with a %.1f s server delay each took %.3f s in all")
      :format(count, DELAY, elapsed))
    for i = 1, count do
      local status, err = requests[i]:result()
      assert.is_nil(status)
      assert.equal(404, err.status)
      assert.matches("ds-parallel-" .. i, err.message, 1, true)
    end
    assert.is_true(elapsed < DELAY * count / 2)
  end)

  it("gives the same result as the blocking call", function()
    local request = assert(client._api.start.workflow.status("ds-same"))
    while not request:step() do
      kw.sleep(request:next_step())
    end
    local _, stepped = request:result()
    local _, blocking = client.workflow.status("ds-same")
    assert.equal(blocking.kind, stepped.kind)
    assert.equal(blocking.status, stepped.status)
    assert.equal(blocking.message, stepped.message)
  end)

  it("never waits inside a step", function()
    local request = assert(client._api.start.workflow.status("ds-step"))
    local longest = 0
    local done = false
    while not done do
      local before = kw.monotonic()
      done = request:step()
      longest = math.max(longest, kw.monotonic() - before)
      kw.sleep(0.005)
    end
    request:result()
    print(("longest step: %.2f ms against a %.0f ms server delay"):format(longest * 1000, DELAY * 1000))
    assert.is_true(longest < DELAY / 5)
  end)

  it("raises when the result is taken early or twice", function()
    local request = assert(client._api.start.workflow.status("ds-early"))
    local ok, message = pcall(request.result, request)
    assert.is_false(ok)
    assert.matches("has not finished", message, 1, true)
    while not request:step() do
      kw.sleep(0.01)
    end
    assert.is_nil((request:result()))
    ok, message = pcall(request.result, request)
    assert.is_false(ok)
    assert.matches("already taken", message, 1, true)
  end)

  it("drops a request collected mid-flight", function()
    local request = assert(client._api.start.workflow.status("ds-dropped"))
    request:step()
    request = nil -- luacheck: ignore 311
    collectgarbage()
    collectgarbage()
    local status, err = client.workflow.status("ds-after-drop")
    assert.is_nil(status)
    assert.equal(404, err.status)
  end)

  it("returns nil, err for an unreadable file before starting", function()
    local request, err = client._api.start.files.upload("/nonexistent/file.json")
    assert.is_nil(request)
    assert.equal("file", err.kind)
  end)

  it("runs the client's calls inside scheduler tasks", function()
    local tasks = scheduler.new { idle_sleep = kw.sleep, clock = kw.monotonic }
    local nonblocking = client:nonblocking(scheduler.task_adapter)
    local results = {}
    local started = kw.monotonic()
    for i = 1, 4 do
      tasks:spawn(function()
        results[i] = { nonblocking.workflow.status("ds-task-" .. i) }
      end)
    end
    tasks:run()
    local elapsed = kw.monotonic() - started
    print(("4 tasks took %.3f s with a %.1f s server delay"):format(elapsed, DELAY))
    for i = 1, 4 do
      assert.equal(404, results[i][2].status)
    end
    assert.is_true(elapsed < DELAY * 2.5)
  end)

  it("poll returns when a transfer's socket is ready", function()
    local request = assert(client._api.start.workflow.status("ds-poll"))
    local started = kw.monotonic()
    local ready = false
    while not request:step() do
      ready = client:poll(2) or ready
    end
    local elapsed = kw.monotonic() - started
    print(("poll woke on the reply after %.3f s with a %.1f s server delay"):format(elapsed, DELAY))
    assert.is_true(ready)
    assert.is_true(elapsed < DELAY + 1)
    local status, err = request:result()
    assert.is_nil(status)
    assert.equal(404, err.status)
  end)

  it("poll sleeps the whole time with nothing in flight", function()
    local started = kw.monotonic()
    assert.is_false(client:poll(0.05))
    assert.is_true(kw.monotonic() - started >= 0.045)
    local ok, message = pcall(client.poll, client, "soon")
    assert.is_false(ok)
    assert.matches("bad argument #1 (seconds) to 'poll' (number expected, got string)", message,
      1, true)
  end)

  it("wakes scheduler tasks through poll", function()
    local woken, idle = 0, 0
    local tasks = scheduler.new {
      idle_sleep = function(seconds)
        idle = idle + 1
        kw.sleep(seconds)
      end,
      clock = kw.monotonic,
      poll = function(seconds)
        local ready = client:poll(seconds)
        if ready then
          woken = woken + 1
        end
        return ready
      end,
    }
    local nonblocking = client:nonblocking(scheduler.task_adapter)
    local results = {}
    for i = 1, 4 do
      tasks:spawn(function()
        results[i] = { nonblocking.workflow.status("ds-woken-" .. i) }
      end)
    end
    tasks:run()
    for i = 1, 4 do
      assert.equal(404, results[i][2].status)
    end
    assert.is_true(woken >= 1)
    -- Every idle wait happened while tasks waited on transfers, so none slept blind.
    assert.equal(0, idle)
  end)

  it("waits for many jobs in parallel", function()
    local items = {}
    for i = 1, 8 do
      items[i] = { workflow_id = fixtures.WORKFLOW_ID, source = fixtures.EXAMPLE_DIR }
    end
    local started_jobs, start_errors = client:import_many(items, { wait = false, concurrency = 8 })
    assert.is_nil(start_errors)
    local ids = {}
    for i = 1, 8 do
      ids[i] = started_jobs[i].dockStatusId
    end
    local started = kw.monotonic()
    local jobs, errors = client:wait_all(ids, { concurrency = 8, interval = 0.05 })
    local elapsed = kw.monotonic() - started
    print(("wait_all of 8 jobs took %.3f s; one job alone takes two polls of %.1f s")
      :format(elapsed, DELAY))
    assert.is_nil(errors)
    for i = 1, 8 do
      assert.equal("SUCCESS", jobs[i].status)
      assert.equal(ids[i], jobs[i].dockStatusId)
    end
    assert.is_true(elapsed < DELAY * 2 * 3)
  end)

  it("limits how many requests are in flight", function()
    local ids = {}
    for i = 1, 6 do
      ids[i] = "ds-limited-" .. i
    end
    local started = kw.monotonic()
    local jobs, errors = client:wait_all(ids, { concurrency = 2 })
    local elapsed = kw.monotonic() - started
    print(("6 waits, 2 at a time, took %.3f s"):format(elapsed))
    assert.equal(0, #jobs)
    for i = 1, 6 do
      assert.equal(404, errors[i].status)
    end
    assert.is_true(elapsed >= DELAY * 3 * 0.9)
  end)

  it("imports several workflows at once", function()
    local items = {}
    for i = 1, 3 do
      items[i] = { workflow_id = fixtures.WORKFLOW_ID, source = fixtures.EXAMPLE_DIR }
    end
    local jobs, errors = client:import_many(items, { concurrency = 3, interval = 0.05 })
    assert.is_nil(errors)
    for i = 1, 3 do
      assert.equal("SUCCESS", jobs[i].status)
    end
  end)

  it("rejects a bad concurrency", function()
    local ok, message = pcall(client.wait_all, client, { "ds-1" }, { concurrency = 0 })
    assert.is_false(ok)
    assert.matches("concurrency", message, 1, true)
  end)
end)
