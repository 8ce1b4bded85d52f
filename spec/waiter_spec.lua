-- Specs for kore_workflow.waiter, driven by a fake clock that moves only when
-- the waiter sleeps or a scripted status call advances it.
local waiter = require("kore_workflow.waiter")

local START = 1000 -- fake clock reading when a wait begins
local EPSILON = 1e-9
local MAX_CALLS = 10000 -- a wait that makes more status calls than this is stuck in a loop

local function job(status, fields)
  local record = { _id = "ds-123", workflowId = "a-1", jobType = "WORKFLOWS", action = "IMPORT", status = status }
  for key, value in pairs(fields or {}) do
    record[key] = value
  end
  return record
end

local function http_error(status, fields)
  local retryable = status == 429 or status == 502 or status == 503 or status == 504
  local err = { kind = "http", status = status, retryable = retryable, message = "HTTP " .. status }
  for key, value in pairs(fields or {}) do
    err[key] = value
  end
  return err
end

local function network_error()
  return { kind = "network", retryable = true, message = "connection refused" }
end

-- Returns a random source with its own state (a linear congruential generator),
-- so two waiters can be given different, reproducible sources.
local function seeded_random(seed)
  local state = seed
  return function()
    state = (state * 1103515245 + 12345) % 2147483648
    return state / 2147483648
  end
end

-- Builds a fake environment around a script. Each script entry is a job table,
-- { err = error table }, or a function(fake, call_opts) returning what status
-- returns. The last entry repeats once the script runs out.
local function new_fake(script, options)
  local fake = { now = START, sleeps = {}, calls = {}, progress = {}, errors_built = 0 }
  local step = 0
  local opts = {
    id = "ds-123",
    clock = function()
      return fake.now
    end,
    sleep = function(seconds)
      assert(type(seconds) == "number", "sleep got a " .. type(seconds))
      assert(seconds == seconds, "sleep got NaN")
      assert(seconds >= 0, "sleep got a negative value " .. seconds)
      assert(seconds < math.huge, "sleep got infinity")
      fake.sleeps[#fake.sleeps + 1] = seconds
      fake.now = fake.now + seconds
    end,
    status = function(id, call_opts)
      step = step + 1
      assert(step <= MAX_CALLS, "the waiter made more than " .. MAX_CALLS .. " status calls")
      assert(call_opts.timeout > 0, "status call got a timeout of " .. tostring(call_opts.timeout))
      local entry = script[math.min(step, #script)]
      fake.calls[#fake.calls + 1] = { id = id, at = fake.now, timeout = call_opts.timeout }
      if type(entry) == "function" then
        return entry(fake, call_opts)
      elseif entry.err then
        return nil, entry.err
      end
      return entry
    end,
    new_error = function(fields)
      fake.errors_built = fake.errors_built + 1
      fields.built_by_new_error = true
      return fields
    end,
    on_progress = function(record)
      fake.progress[#fake.progress + 1] = record.status
    end,
    random = function()
      return 0.5
    end,
  }
  for key, value in pairs(options or {}) do
    opts[key] = value
  end
  fake.opts = opts
  function fake.run()
    return waiter.wait(opts)
  end
  return fake
end

local function assert_near(expected, actual, message)
  assert(math.abs(expected - actual) < 1e-6, string.format("%s: expected %.9g, got %.9g", message, expected, actual))
end

local function sum(list)
  local total = 0
  for _, value in ipairs(list) do
    total = total + value
  end
  return total
end

describe("waiter.wait", function()
  describe("terminal status", function()
    it("returns the job after SUCCESS", function()
      local done = job("SUCCESS", { workflowId = "a-42" })
      local fake = new_fake({ job("IN_PROGRESS"), job("IN_PROGRESS"), job("IN_PROGRESS"), done })
      local result, err = fake.run()
      assert.is_nil(err)
      assert.are.equal(done, result)
      assert.are.equal(4, #fake.calls)
      assert.are.equal(3, #fake.sleeps)
      assert.are.same({ "IN_PROGRESS", "IN_PROGRESS", "IN_PROGRESS", "SUCCESS" }, fake.progress)
    end)

    it("passes the id to every status call", function()
      local fake = new_fake({ job("IN_PROGRESS"), job("SUCCESS") }, { id = "ds-abc" })
      fake.run()
      for _, call in ipairs(fake.calls) do
        assert.are.equal("ds-abc", call.id)
      end
    end)

    it("returns at once when the first poll is SUCCESS", function()
      local fake = new_fake({ job("SUCCESS") })
      local result = fake.run()
      assert.are.equal("SUCCESS", result.status)
      assert.are.equal(0, #fake.sleeps)
    end)

    it("turns FAILED into job_failed with the job", function()
      local failed = job("FAILED", { message = "flow_definition.json is not valid JSON" })
      local fake = new_fake({ job("IN_PROGRESS"), failed }, { label = "import job" })
      local result, err = fake.run()
      assert.is_nil(result)
      assert.are.equal("job_failed", err.kind)
      assert.are.equal(failed, err.job)
      assert.are.equal("ds-123", err.id)
      assert.is_false(err.retryable)
      assert.is_true(err.built_by_new_error)
      assert.are.equal("import job ds-123 ended FAILED: flow_definition.json is not valid JSON", err.message)
      assert.is_truthy(err.hint:find("definition files", 1, true))
      assert.are.same({ "IN_PROGRESS", "FAILED" }, fake.progress)
    end)

    it("reads the FAILED reason from each field", function()
      local cases = {
        { fields = { error = "env_variables.json: key missing" }, reason = "env_variables.json: key missing" },
        { fields = { reason = "quota exceeded" }, reason = "quota exceeded" },
        { fields = { error = { message = "bad node id" } }, reason = "bad node id" },
        { fields = { errors = { { msg = "duplicate name" } } }, reason = "duplicate name" },
        { fields = { errors = { "first problem", "second problem" } }, reason = "first problem" },
        { fields = { message = "", error = "empty message skipped" }, reason = "empty message skipped" },
        { fields = {}, reason = "the server gave no reason" },
      }
      for _, case in ipairs(cases) do
        local fake = new_fake({ job("FAILED", case.fields) })
        local _, err = fake.run()
        assert.are.equal("job ds-123 ended FAILED: " .. case.reason, err.message)
      end
    end)
  end)

  describe("polling schedule", function()
    it("grows the interval by factor up to max_interval", function()
      local fake = new_fake({ job("IN_PROGRESS") }, { timeout = 200 })
      fake.run()
      local expected = { 1, 1.5, 2.25, 3.375, 5.0625, 7.59375, 11.390625, 15, 15, 15 }
      for index, seconds in ipairs(expected) do
        assert_near(seconds, fake.sleeps[index], "sleep " .. index)
      end
    end)

    it("uses the interval, factor and max_interval options", function()
      local fake = new_fake({ job("IN_PROGRESS") }, { interval = 2, factor = 3, max_interval = 20, timeout = 100 })
      fake.run()
      local expected = { 2, 6, 18, 20, 20 }
      for index, seconds in ipairs(expected) do
        assert_near(seconds, fake.sleeps[index], "sleep " .. index)
      end
    end)

    it("jitters each delay by at most 20 percent", function()
      local low = new_fake({ job("IN_PROGRESS"), job("SUCCESS") }, {
        random = function()
          return 0
        end,
      })
      low.run()
      assert_near(0.8, low.sleeps[1], "delay with random() = 0")

      local high = new_fake({ job("IN_PROGRESS"), job("SUCCESS") }, {
        random = function()
          return 1
        end,
      })
      high.run()
      assert_near(1.2, high.sleeps[1], "delay with random() = 1")
    end)

    it("keeps jittered delays within bounds", function()
      local fake = new_fake({ job("IN_PROGRESS") }, { timeout = 300, random = seeded_random(7) })
      fake.run()
      local base = 1
      local below, above = 0, 0
      for index = 1, #fake.sleeps - 1 do
        local seconds = fake.sleeps[index]
        assert(seconds >= 0.8 * base - EPSILON, "sleep " .. index .. " below the jitter range: " .. seconds)
        assert(seconds <= math.min(1.2 * base, 15) + EPSILON, "sleep " .. index .. " above the range: " .. seconds)
        if seconds < base then
          below = below + 1
        elseif seconds > base then
          above = above + 1
        end
        base = math.min(base * 1.5, 15)
      end
      assert(below > 0, "no delay was shortened by jitter")
      assert(above > 0, "no delay was lengthened by jitter")
    end)
  end)

  describe("deadline", function()
    it("gives each call request_timeout when time allows", function()
      local fake = new_fake({ job("IN_PROGRESS"), job("SUCCESS") })
      fake.run()
      assert.are.equal(30, fake.calls[1].timeout)
      assert.are.equal(30, fake.calls[2].timeout)
    end)

    it("never overruns it while polling", function()
      local fake = new_fake({ job("IN_PROGRESS") }, { timeout = 60, random = seeded_random(3) })
      local result, err = fake.run()
      assert.is_nil(result)
      assert.are.equal("timeout", err.kind)
      assert.is_true(err.retryable)
      assert(fake.now - START <= 60 + EPSILON, "waited past the deadline: " .. (fake.now - START))
      assert_near(60, fake.now - START, "time at the timeout")
      for index, call in ipairs(fake.calls) do
        local left = START + 60 - call.at
        assert(call.timeout > 0, "call " .. index .. " got a timeout of 0")
        assert(call.timeout <= left + EPSILON, "call " .. index .. " may run past the deadline")
      end
    end)

    it("limits slow calls to the time left", function()
      -- Each call hangs until its own timeout, then fails as retryable.
      local hang = function(fake, call_opts)
        fake.now = fake.now + call_opts.timeout
        return nil, { kind = "timeout", retryable = true, message = "request timed out" }
      end
      local fake = new_fake({ hang }, { timeout = 10, request_timeout = 4 })
      local result, err = fake.run()
      assert.is_nil(result)
      assert.are.equal("timeout", err.kind)
      assert.are.equal("timeout", err.last_error.kind)
      assert(fake.now - START <= 10 + EPSILON, "waited past the deadline: " .. (fake.now - START))
      local shortened = false
      for index, call in ipairs(fake.calls) do
        local left = START + 10 - call.at
        assert(call.timeout > 0, "call " .. index .. " got a timeout of 0")
        assert(call.timeout <= 4, "call " .. index .. " exceeds request_timeout")
        assert(call.timeout <= left + EPSILON, "call " .. index .. " may run past the deadline")
        if call.timeout < 4 then
          shortened = true
        end
      end
      assert(shortened, "no call was shortened to the time left")
    end)

    it("stops without sleeping after a call overruns", function()
      local overrun = function(fake)
        fake.now = fake.now + 25
        return job("IN_PROGRESS")
      end
      local fake = new_fake({ overrun }, { timeout = 10 })
      local _, err = fake.run()
      assert.are.equal("timeout", err.kind)
      assert.are.equal(1, #fake.calls)
      assert.are.equal(0, #fake.sleeps)
    end)

    it("names the timeout, id and last status", function()
      local fake = new_fake({ job("IN_PROGRESS") }, { timeout = 10 })
      local _, err = fake.run()
      assert.are.equal("IN_PROGRESS", err.last_status)
      assert.are.equal("ds-123", err.id)
      local expected = "timed out after 10 s waiting for dock status ds-123 (last status IN_PROGRESS)"
      assert.are.equal(expected, err.message)
      assert.is_string(err.hint)
      assert.is_falsy(err.rate_limited)
    end)

    it("reports last status none when no job was read", function()
      local fake = new_fake({ { err = network_error() } }, { timeout = 5 })
      local _, err = fake.run()
      assert.are.equal("timeout", err.kind)
      assert.is_nil(err.last_status)
      assert.is_truthy(err.message:find("(last status none)", 1, true))
      assert.is_truthy(err.message:find("connection refused", 1, true))
    end)

    it("holds when the clock goes backwards", function()
      local readings = 0
      local fake = new_fake({ job("IN_PROGRESS") }, { timeout = 20 })
      fake.opts.clock = function()
        readings = readings + 1
        return START - readings
      end
      local _, err = fake.run()
      assert.are.equal("timeout", err.kind)
      assert(sum(fake.sleeps) <= 20 + EPSILON, "slept past the deadline: " .. sum(fake.sleeps))
      assert_near(20, sum(fake.sleeps), "total sleep")
    end)

    it("holds when the clock returns NaN", function()
      local first = true
      local fake = new_fake({ job("IN_PROGRESS") }, { timeout = 20 })
      fake.opts.clock = function()
        if first then
          first = false
          return START
        end
        return 0 / 0
      end
      local _, err = fake.run()
      assert.are.equal("timeout", err.kind)
      assert_near(20, sum(fake.sleeps), "total sleep")
    end)
  end)

  describe("unknown status", function()
    it("keeps polling and names it at the deadline", function()
      local fake = new_fake({ job("QUEUED") }, { timeout = 30 })
      local result, err = fake.run()
      assert.is_nil(result)
      assert.are.equal("timeout", err.kind)
      assert.are.equal("QUEUED", err.last_status)
      assert.is_truthy(err.message:find("(last status QUEUED)", 1, true))
      assert(#fake.calls > 1, "stopped polling after an unknown status")
      assert.are.equal(#fake.calls, #fake.progress)
      assert.are.equal("QUEUED", fake.progress[1])
    end)

    it("is never success, even in lower case", function()
      local fake = new_fake({ job("success") }, { timeout = 10 })
      local result, err = fake.run()
      assert.is_nil(result)
      assert.are.equal("timeout", err.kind)
      assert.are.equal("success", err.last_status)
    end)

    it("continues to a later SUCCESS", function()
      local fake = new_fake({ job("PENDING"), job("IN_PROGRESS"), job("SUCCESS") })
      local result = fake.run()
      assert.are.equal("SUCCESS", result.status)
      assert.are.same({ "PENDING", "IN_PROGRESS", "SUCCESS" }, fake.progress)
    end)
  end)

  describe("invalid job record", function()
    local cases = {
      { name = "missing status", record = { _id = "ds-123", action = "IMPORT" }, detail = "missing" },
      { name = "status = nil", record = { status = nil }, detail = "missing" },
      { name = "numeric status", record = { status = 42 }, detail = "number" },
      { name = "boolean status", record = { status = true }, detail = "boolean" },
      { name = "table status", record = { status = { "SUCCESS" } }, detail = "table" },
    }
    for _, case in ipairs(cases) do
      it("ends at once for " .. case.name, function()
        local fake = new_fake({ case.record, job("SUCCESS") })
        local result, err = fake.run()
        assert.is_nil(result)
        assert.are.equal("invalid_response", err.kind)
        assert.are.equal("ds-123", err.id)
        assert.is_false(err.retryable)
        assert.are.equal(case.record, err.job)
        assert.is_truthy(err.message:find("ds-123", 1, true))
        assert.is_truthy(err.message:find(case.detail, 1, true))
        assert.are.equal(1, #fake.calls)
        assert.are.equal(0, #fake.sleeps)
      end)
    end

    it("ends at once for a non-table job", function()
      local fake = new_fake({ function()
        return "IN_PROGRESS"
      end })
      local _, err = fake.run()
      assert.are.equal("invalid_response", err.kind)
      assert.is_truthy(err.message:find("ds-123", 1, true))
      assert.are.equal(1, #fake.calls)
    end)
  end)

  describe("retryable error", function()
    local cases = {
      { name = "HTTP 429", err = http_error(429) },
      { name = "HTTP 502", err = http_error(502) },
      { name = "HTTP 503", err = http_error(503) },
      { name = "HTTP 504", err = http_error(504) },
      { name = "network error", err = network_error() },
      { name = "request timeout", err = { kind = "timeout", retryable = true, message = "timed out" } },
    }
    for _, case in ipairs(cases) do
      it("is retried: " .. case.name, function()
        local fake = new_fake({ { err = case.err }, { err = case.err }, job("SUCCESS") })
        local result, err = fake.run()
        assert.is_nil(err)
        assert.are.equal("SUCCESS", result.status)
        assert.are.equal(3, #fake.calls)
        assert.are.equal(2, #fake.sleeps)
      end)
    end

    it("backs off exponentially up to max_interval", function()
      local fake = new_fake({ { err = http_error(503) } }, {
        timeout = 100,
        random = function()
          return 1
        end,
      })
      fake.run()
      local expected = { 1, 2, 4, 8, 15, 15 }
      for index, seconds in ipairs(expected) do
        assert_near(seconds, fake.sleeps[index], "retry sleep " .. index)
      end
    end)

    it("draws each backoff between 0 and its ceiling", function()
      local fake = new_fake({ { err = http_error(503) } }, { timeout = 200, random = seeded_random(11) })
      fake.run()
      local ceiling = 1
      for index = 1, #fake.sleeps - 1 do
        local seconds = fake.sleeps[index]
        assert(seconds >= 0, "retry sleep " .. index .. " is negative")
        assert(seconds <= ceiling + EPSILON, "retry sleep " .. index .. " exceeds " .. ceiling .. ": " .. seconds)
        ceiling = math.min(ceiling * 2, 15)
      end
    end)

    it("restarts the backoff after a job is read", function()
      local script = {
        { err = http_error(503) },
        { err = http_error(503) },
        job("IN_PROGRESS"),
        { err = http_error(503) },
        job("SUCCESS"),
      }
      local fake = new_fake(script, {
        random = function()
          return 1
        end,
      })
      fake.run()
      assert_near(1, fake.sleeps[1], "first retry")
      assert_near(2, fake.sleeps[2], "second retry")
      assert_near(1.2, fake.sleeps[3], "poll delay")
      assert_near(1, fake.sleeps[4], "retry after the poll")
    end)

    it("is not retried in step by two waiters", function()
      local unavailable = { err = http_error(503) }
      local script = { unavailable, unavailable, unavailable, unavailable, job("SUCCESS") }
      local first = new_fake(script, { random = seeded_random(1) })
      local second = new_fake(script, { random = seeded_random(2) })
      first.run()
      second.run()
      assert.are.equal(4, #first.sleeps)
      assert.are.equal(4, #second.sleeps)
      local differing = 0
      for index = 1, 4 do
        if math.abs(first.calls[index + 1].at - second.calls[index + 1].at) > 0.01 then
          differing = differing + 1
        end
      end
      assert(differing >= 3, "the two waiters retried at nearly the same times")
    end)
  end)

  describe("non-retryable error", function()
    local cases = {
      { name = "HTTP 404", err = http_error(404) },
      { name = "HTTP 401", err = http_error(401) },
      { name = "HTTP 400", err = http_error(400) },
      { name = "TLS error", err = { kind = "tls", retryable = false, message = "certificate verify failed" } },
      { name = "invalid response", err = { kind = "invalid_response", retryable = false, message = "not JSON" } },
      { name = "missing retryable flag", err = { kind = "http", status = 500, message = "HTTP 500" } },
    }
    for _, case in ipairs(cases) do
      it("ends at once: " .. case.name, function()
        local fake = new_fake({ { err = case.err }, job("SUCCESS") })
        local result, err = fake.run()
        assert.is_nil(result)
        assert.are.equal(case.err, err)
        assert.are.equal("ds-123", err.id)
        assert.are.equal(1, #fake.calls)
        assert.are.equal(0, #fake.sleeps)
      end)
    end

    it("keeps an id the error already has", function()
      local fake = new_fake({ { err = http_error(404, { id = "a-999" }) } })
      local _, err = fake.run()
      assert.are.equal("a-999", err.id)
    end)

    it("wraps a string error", function()
      local fake = new_fake({ function()
        return nil, "socket closed"
      end })
      local _, err = fake.run()
      assert.are.equal("internal", err.kind)
      assert.is_true(err.built_by_new_error)
      assert.is_truthy(err.message:find("socket closed", 1, true))
      assert.is_truthy(err.message:find("ds-123", 1, true))
    end)

    it("wraps a call that returns nothing", function()
      local fake = new_fake({ function() end })
      local _, err = fake.run()
      assert.are.equal("internal", err.kind)
      assert.is_false(err.retryable)
    end)
  end)

  describe("Retry-After", function()
    it("delays the next call at least that long", function()
      local fake = new_fake({ { err = http_error(429, { retry_after = 7 }) }, job("SUCCESS") })
      local result = fake.run()
      assert.are.equal("SUCCESS", result.status)
      local gap = fake.calls[2].at - fake.calls[1].at
      assert(gap >= 7 - EPSILON, "the next call came after " .. gap .. " s, expected at least 7 s")
    end)

    it("applies to a 503 as well", function()
      local fake = new_fake({ { err = http_error(503, { retry_after = 5 }) }, job("SUCCESS") })
      fake.run()
      assert(fake.calls[2].at - fake.calls[1].at >= 5 - EPSILON, "Retry-After 5 on a 503 was ignored")
    end)

    it("ends a day-long wait at the deadline", function()
      local fake = new_fake({ { err = http_error(429, { retry_after = 86400 }) } }, { timeout = 10 })
      local result, err = fake.run()
      assert.is_nil(result)
      assert.are.equal("timeout", err.kind)
      assert.is_true(err.rate_limited)
      assert.are.equal(86400, err.retry_after)
      assert.is_truthy(err.message:find("rate limited", 1, true))
      assert.is_truthy(err.message:find("86400", 1, true))
      assert.are.equal(1, #fake.calls)
      assert_near(10, fake.now - START, "fake time at the timeout")
    end)

    it("keeps the last status when rate limited later", function()
      local fake = new_fake({ job("IN_PROGRESS"), { err = http_error(429, { retry_after = 60 }) } }, { timeout = 10 })
      local _, err = fake.run()
      assert.are.equal("timeout", err.kind)
      assert.is_true(err.rate_limited)
      assert.are.equal("IN_PROGRESS", err.last_status)
      assert_near(10, fake.now - START, "fake time at the timeout")
    end)

    it("ignores a NaN value", function()
      local fake = new_fake({ { err = http_error(503, { retry_after = 0 / 0 }) }, job("SUCCESS") })
      local result = fake.run()
      assert.are.equal("SUCCESS", result.status)
      assert.are.equal(1, #fake.sleeps)
      assert(fake.sleeps[1] <= 1, "a NaN Retry-After changed the backoff: " .. fake.sleeps[1])
    end)

    it("clamps an infinite value to the deadline", function()
      local fake = new_fake({ { err = http_error(429, { retry_after = math.huge }) } }, { timeout = 12 })
      local _, err = fake.run()
      assert.are.equal("timeout", err.kind)
      assert.is_true(err.rate_limited)
      assert_near(12, fake.now - START, "fake time at the timeout")
    end)

    it("treats a negative value as zero", function()
      local fake = new_fake({ { err = http_error(503, { retry_after = -5 }) }, job("SUCCESS") })
      local result = fake.run()
      assert.are.equal("SUCCESS", result.status)
      assert(fake.sleeps[1] >= 0 and fake.sleeps[1] <= 1, "unexpected sleep " .. fake.sleeps[1])
    end)
  end)

  describe("options", function()
    local function valid_options()
      return {
        id = "ds-1",
        status = function()
          return job("SUCCESS")
        end,
        new_error = function(fields)
          return fields
        end,
        sleep = function() end,
        clock = function()
          return 0
        end,
      }
    end

    -- Calls wait from this file, not through a tail call, so the error
    -- position points here.
    local function wait_error(opts)
      local ok, message = pcall(function()
        local result = waiter.wait(opts)
        return result
      end)
      assert.is_false(ok)
      return message
    end

    it("works with only the required options", function()
      local result = waiter.wait(valid_options())
      assert.are.equal("SUCCESS", result.status)
    end)

    local cases = {
      { option = "id", value = false, got = "boolean" },
      { option = "id", value = 5, got = "number" },
      { option = "id", value = "", got = "empty string" },
      { option = "status", value = "GET", got = "string" },
      { option = "new_error", value = false, got = "boolean" },
      { option = "sleep", value = 1, got = "number" },
      { option = "clock", value = {}, got = "table" },
      { option = "random", value = 0.5, got = "number" },
      { option = "on_progress", value = true, got = "boolean" },
      { option = "label", value = 7, got = "number" },
      { option = "timeout", value = "900", got = "string" },
      { option = "timeout", value = 0, got = "0" },
      { option = "timeout", value = -1, got = "-1" },
      { option = "timeout", value = math.huge, got = "inf" },
      { option = "timeout", value = 0 / 0, got = "nan" },
      { option = "request_timeout", value = "30", got = "string" },
      { option = "interval", value = false, got = "boolean" },
      { option = "interval", value = -0.5, got = "-0.5" },
      { option = "factor", value = 0.5, got = "0.5" },
      { option = "factor", value = "1.5", got = "string" },
      { option = "max_interval", value = {}, got = "table" },
      { option = "retry_base", value = 0, got = "0" },
    }
    for _, case in ipairs(cases) do
      it("rejects " .. case.option .. " = " .. case.got, function()
        local opts = valid_options()
        opts[case.option] = case.value
        local message = wait_error(opts)
        assert.is_truthy(message:find("bad option '" .. case.option .. "' to 'wait'", 1, true), message)
        assert.is_truthy(message:find("got " .. case.got, 1, true), message)
        assert.is_truthy(message:find("waiter_spec.lua", 1, true), "error position is not the caller: " .. message)
      end)
    end

    for _, name in ipairs({ "id", "status", "new_error", "sleep", "clock" }) do
      it("requires " .. name, function()
        local opts = valid_options()
        opts[name] = nil
        local message = wait_error(opts)
        assert.is_truthy(message:find("bad option '" .. name .. "'", 1, true), message)
      end)
    end

    it("rejects a non-table argument", function()
      local message = wait_error("ds-1")
      assert.is_truthy(message:find("bad argument #1 to 'wait' (table expected, got string)", 1, true), message)
    end)

    it("rejects a clock returning a non-number", function()
      local opts = valid_options()
      opts.clock = function()
        return "now"
      end
      local message = wait_error(opts)
      assert.is_truthy(message:find("'clock'", 1, true), message)
    end)

    it("accepts interval above max_interval", function()
      local fake = new_fake({ job("IN_PROGRESS"), job("SUCCESS") }, { interval = 30, max_interval = 5 })
      fake.run()
      assert_near(5, fake.sleeps[1], "first delay")
    end)
  end)
end)
