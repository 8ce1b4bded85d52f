--- Polls a dock status until its job ends, within one overall deadline.
--
-- Import, export, deploy and undeploy return a job record at once, and the job's
-- progress is read with GET /api/public/dock-status/{id}. Only SUCCESS and FAILED
-- end a job, and any other status value is treated as "not finished yet".
--
-- The module performs no I/O. The caller injects the status request, the clock
-- and the sleep, so the schedule can be tested with a fake clock.
local M = {}

local huge = math.huge
local floor = math.floor
local min = math.min
local max = math.max

-- Poll delays vary by up to ±20 % so that clients started together spread out.
local JITTER = 0.2

-- With less time than this left, no request is made, because a smaller request
-- timeout may round to 0 ms and libcurl's CURLOPT_TIMEOUT_MS treats 0 as "never
-- time out".
local MIN_REQUEST_SECONDS = 0.001

-- Numeric options with their default and lowest accepted value. An option
-- with `positive = true` must be greater than `lowest`.
local NUMBER_OPTIONS = {
  { name = "timeout", default = 900, lowest = 0, positive = true },
  { name = "request_timeout", default = 30, lowest = 0, positive = true },
  { name = "interval", default = 1, lowest = 0, positive = true },
  { name = "factor", default = 1.5, lowest = 1 },
  { name = "max_interval", default = 15, lowest = 0, positive = true },
  { name = "retry_base", default = 1, lowest = 0, positive = true },
}

local REQUIRED_FUNCTIONS = { "status", "new_error", "sleep", "clock" }
local OPTIONAL_FUNCTIONS = { "on_progress", "random" }

local function is_nan(x)
  return x ~= x
end

local function is_finite(x)
  return x == x and x ~= huge and x ~= -huge
end

local function bad_option(name, expected, got)
  return string.format("bad option '%s' to 'wait' (%s expected, got %s)", name, expected, got)
end

-- Formats a number of seconds for messages: "10", "2.5", "inf", "nan".
local function format_seconds(seconds)
  if is_nan(seconds) then
    return "nan" -- tostring gives "-nan" or "nan" depending on the platform
  elseif not is_finite(seconds) then
    return tostring(seconds)
  end
  if seconds == floor(seconds) and math.abs(seconds) < 2 ^ 53 then
    return string.format("%d", seconds)
  end
  local text = string.format("%.3f", seconds):gsub("0+$", ""):gsub("%.$", "")
  return text
end

-- Validates the option table and returns a config table with defaults filled
-- in, or nil and a message naming the first bad option.
local function read_options(opts)
  if type(opts) ~= "table" then
    return nil, string.format("bad argument #1 to 'wait' (table expected, got %s)", type(opts))
  end
  local config = {}

  if type(opts.id) ~= "string" or opts.id == "" then
    local got = opts.id == "" and "empty string" or type(opts.id)
    return nil, bad_option("id", "non-empty string", got)
  end
  config.id = opts.id

  for _, name in ipairs(REQUIRED_FUNCTIONS) do
    if type(opts[name]) ~= "function" then
      return nil, bad_option(name, "function", type(opts[name]))
    end
    config[name] = opts[name]
  end
  for _, name in ipairs(OPTIONAL_FUNCTIONS) do
    if opts[name] ~= nil and type(opts[name]) ~= "function" then
      return nil, bad_option(name, "function or nil", type(opts[name]))
    end
    config[name] = opts[name]
  end
  config.random = config.random or math.random

  if opts.label ~= nil and type(opts.label) ~= "string" then
    return nil, bad_option("label", "string or nil", type(opts.label))
  end
  config.label = opts.label or "job"

  for _, option in ipairs(NUMBER_OPTIONS) do
    local value = opts[option.name]
    if value == nil then
      value = option.default
    end
    local expected
    if option.positive then
      expected = "positive finite number"
    else
      expected = string.format("finite number >= %s", format_seconds(option.lowest))
    end
    if type(value) ~= "number" then
      return nil, bad_option(option.name, expected, type(value))
    end
    local too_low = value < option.lowest or (option.positive and value == option.lowest)
    if not is_finite(value) or too_low then
      return nil, bad_option(option.name, expected, format_seconds(value))
    end
    config[option.name] = value
  end
  return config
end

-- Returns the reason a FAILED job gives, from the first field that has one.
local function describe_failure(job)
  for _, field in ipairs({ "message", "error", "reason", "errorMessage", "errors" }) do
    local value = job[field]
    if type(value) == "string" and value ~= "" then
      return value
    elseif type(value) == "number" then
      return tostring(value)
    elseif type(value) == "table" then
      -- Accepts {"message": "..."}, {"msg": "..."} and a list of either.
      local entry = value[1] ~= nil and value[1] or value
      if type(entry) == "string" and entry ~= "" then
        return entry
      elseif type(entry) == "table" then
        local text = entry.message or entry.msg
        if type(text) == "string" and text ~= "" then
          return text
        end
      end
    end
  end
  return "the server gave no reason"
end

-- Deadline and retry state of one wait.
local Wait = {}
Wait.__index = Wait

local function new_wait(config)
  local start = config.clock()
  if type(start) ~= "number" or not is_finite(start) then
    error(bad_option("clock", "function returning a finite number", tostring(start)), 3)
  end
  return setmetatable({
    config = config,
    start = start,
    elapsed_seconds = 0,
    slept_seconds = 0,
    last_status = nil,
    last_job = nil,
    last_error = nil,
  }, Wait)
end

-- Returns the seconds elapsed since the start. The value never decreases and
-- is never less than the total time slept, so the deadline still arrives with a
-- clock that goes backwards, returns NaN or does not advance.
function Wait:elapsed()
  local reading = self.config.clock()
  if type(reading) ~= "number" then
    error(bad_option("clock", "function returning a number", type(reading)), 0)
  end
  local since_start = reading - self.start
  if not is_nan(since_start) and since_start > self.elapsed_seconds then
    self.elapsed_seconds = since_start
  end
  if self.slept_seconds > self.elapsed_seconds then
    self.elapsed_seconds = self.slept_seconds
  end
  return self.elapsed_seconds
end

-- Returns the seconds left before the deadline, never negative.
function Wait:time_left()
  return max(0, self.config.timeout - self:elapsed())
end

-- Returns a number in [0, 1] from the injected random source.
function Wait:draw()
  local value = self.config.random()
  if type(value) ~= "number" then
    error(bad_option("random", "function returning a number", type(value)), 0)
  end
  if is_nan(value) then
    return 0.5
  end
  return min(1, max(0, value))
end

-- Sleeps for `seconds`, clamped to [0, time left]. NaN counts as 0.
function Wait:sleep(seconds)
  local left = self:time_left()
  if is_nan(seconds) or seconds < 0 then
    seconds = 0
  end
  seconds = min(seconds, left)
  if seconds > 0 then
    self.config.sleep(seconds)
    self.slept_seconds = self.slept_seconds + seconds
  end
end

-- Returns the delay before the next poll: `interval` with jitter, at most
-- `max_interval`.
function Wait:poll_delay(interval)
  local spread = 1 - JITTER + 2 * JITTER * self:draw()
  return min(self.config.max_interval, interval * spread)
end

-- Returns the delay before retry number `attempt` (from 0): full jitter over
-- min(max_interval, retry_base * 2^attempt).
function Wait:retry_delay(attempt)
  local config = self.config
  local ceiling = min(config.max_interval, config.retry_base * 2 ^ attempt)
  return ceiling * self:draw()
end

-- Builds the deadline error. `retry_after` is set when the wait ended because
-- the server's Retry-After reached past the deadline.
function Wait:timeout_error(retry_after)
  local config = self.config
  local last_status = self.last_status
  local message = string.format(
    "timed out after %s s waiting for dock status %s (last status %s)",
    format_seconds(config.timeout),
    config.id,
    last_status or "none"
  )
  local last_error = self.last_error
  local rate_limited = retry_after ~= nil or (last_error ~= nil and last_error.status == 429)
  local hint
  if retry_after ~= nil then
    message = message
      .. string.format(
        " because the server rate limited the requests with Retry-After %s s, which is past the deadline",
        format_seconds(retry_after)
      )
    hint = "wait for the rate limit to pass, or set a timeout longer than the Retry-After"
  else
    if last_error ~= nil then
      message = message .. ", and the last request failed: " .. tostring(last_error.message)
    end
    hint = string.format(
      "the %s may still finish on the server, so read dock status %s again later or set a longer timeout",
      config.label,
      config.id
    )
  end
  return config.new_error({
    kind = "timeout",
    id = config.id,
    message = message,
    hint = hint,
    retryable = true,
    last_status = last_status,
    job = self.last_job,
    last_error = last_error,
    rate_limited = rate_limited,
    retry_after = retry_after,
  })
end

local function failed_error(config, job)
  return config.new_error({
    kind = "job_failed",
    id = config.id,
    job = job,
    message = string.format("%s %s ended FAILED: %s", config.label, config.id, describe_failure(job)),
    hint = "check the definition files (app_definition.json, flow_definition.json, env_variables.json) "
      .. "and the server's reason, then retry",
    retryable = false,
  })
end

local function invalid_job_error(config, job, detail)
  return config.new_error({
    kind = "invalid_response",
    id = config.id,
    job = job,
    message = string.format("dock status %s returned an invalid job record: %s", config.id, detail),
    hint = "check that the host is an AI for Process server and that its API matches this client",
    retryable = false,
  })
end

-- Turns what the status function returned in place of a job into an error
-- table, because a caller's status function may return nil or a string.
local function read_status_error(config, err)
  if type(err) == "table" then
    if err.id == nil then
      err.id = config.id
    end
    return err
  end
  local detail = err == nil and "it returned neither a job nor an error" or tostring(err)
  return config.new_error({
    kind = "internal",
    id = config.id,
    message = string.format("reading dock status %s failed: %s", config.id, detail),
    hint = "the status function passed to wait must return a job table, or nil and an error table",
    retryable = false,
  })
end

-- Returns retry_after as a number of seconds, or nil when absent or NaN.
-- Negative values count as 0, and +inf is kept so that it reaches past any
-- deadline.
local function read_retry_after(err)
  local value = err.retry_after
  if type(value) ~= "number" or is_nan(value) then
    return nil
  end
  return max(0, value)
end

--- Waits for the job behind a dock status id to end.
--
-- Options: id, status(id, {timeout = seconds}), new_error(fields), sleep(seconds)
-- and clock() are required. Optional: timeout (900 s), request_timeout (30 s),
-- interval (1 s), factor (1.5), max_interval (15 s), retry_base (1 s),
-- on_progress(job), random() (math.random), label ("job").
--
-- Returns the job on SUCCESS. Otherwise returns nil and an error built with
-- new_error, of kind "job_failed", "timeout", "invalid_response", or the
-- non-retryable error that `status` returned. Raises a Lua error for a bad
-- option.
--
-- NOTE: on Lua 5.1 and LuaJIT math.random starts from a fixed seed unless the
-- program calls math.randomseed, so clients started together jitter in step
-- unless they seed it or pass `random`.
function M.wait(opts)
  local config, problem = read_options(opts)
  if not config then
    error(problem, 2)
  end
  local wait = new_wait(config)
  local interval = min(config.interval, config.max_interval)
  local retry_attempt = 0

  while true do
    local left = wait:time_left()
    if left < MIN_REQUEST_SECONDS then
      return nil, wait:timeout_error()
    end

    local job, err = config.status(config.id, { timeout = min(config.request_timeout, left) })
    local delay

    if job ~= nil then
      if type(job) ~= "table" then
        return nil, invalid_job_error(config, nil, string.format("got a %s, not a table", type(job)))
      end
      local status = job.status
      if type(status) ~= "string" then
        local detail = "the 'status' field is missing"
        if status ~= nil then
          detail = string.format("the 'status' field is a %s, not a string", type(status))
        end
        return nil, invalid_job_error(config, job, detail)
      end
      if config.on_progress then
        config.on_progress(job)
      end
      if status == "SUCCESS" then
        return job
      elseif status == "FAILED" then
        return nil, failed_error(config, job)
      end

      -- IN_PROGRESS, or a status value this client does not know.
      wait.last_status = status
      wait.last_job = job
      wait.last_error = nil
      retry_attempt = 0
      delay = wait:poll_delay(interval)
      interval = min(interval * config.factor, config.max_interval)
    else
      err = read_status_error(config, err)
      if err.retryable ~= true then
        return nil, err
      end
      wait.last_error = err
      delay = wait:retry_delay(retry_attempt)
      retry_attempt = retry_attempt + 1

      local retry_after = read_retry_after(err)
      if retry_after ~= nil and retry_after > delay then
        if retry_after > wait:time_left() - MIN_REQUEST_SECONDS then
          -- The server allows no request before the deadline, so wait it out and give up.
          wait:sleep(wait:time_left())
          return nil, wait:timeout_error(err.retry_after)
        end
        delay = retry_after
      end
    end

    wait:sleep(delay)
  end
end

return M
