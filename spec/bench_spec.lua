-- Runs the benchmark suite (bench/run.lua) in its quick mode: a few calls of
-- every contender and every measurement, with no targets judged, so that a
-- change that breaks a contender or the report fails here and not first in
-- `make bench`. The figures of a quick run mean nothing; BENCHMARKS.md has
-- the real ones.

local fixtures = require "support.fixtures"

local run = fixtures.run

local function escape(text)
  return (text:gsub("%p", "%%%0"))
end

local CONTENDERS = {
  "raw libcurl (C)", "kore_workflow", "Debian lua-curl", "LuaSocket socket.http",
  "curl command per call",
}

-- The same lock as `make bench`, so that the two never measure at once.
local BENCH = "flock build-bench/bench.lock lua5.4 bench/run.lua --lua lua5.1 --core build-bench "
  .. "--tools build-bench/tools"

describe("bench", function()
  local skip = os.getenv("KORE_TEST_MEMCHECK")
  if skip then
    it("is skipped under " .. skip, function()
      print("\nbench spec skipped: the bench runs its own build of the core, not the "
        .. skip .. " build this run checks")
    end)
    return
  end

  setup(function()
    local ok, output = run("make --no-print-directory bench-tools")
    assert(ok, output)
  end)

  it("reports every contender and measurement in a quick run", function()
    local ok, report = run(BENCH .. " --quick")
    print("\n" .. report)
    assert.is_true(ok, report)
    for _, name in ipairs(CONTENDERS) do
      local rate, ratio = report:match("\n| " .. escape(name) .. " | (%d+) | ([%d%.]+) |")
      assert.is_truthy(rate, "no row for " .. name)
      assert.is_true(tonumber(rate) > 0, name)
      assert.is_true(tonumber(ratio) > 0, name)
    end
    assert.matches("\n| raw libcurl %(C%) | %d+ | 1%.00 |", report)
    for _, in_flight in ipairs({ 1, 8, 32, 128 }) do
      local wall, ideal = report:match("\n| " .. in_flight .. " | ([%d%.]+) | ([%d%.]+) |")
      assert.is_truthy(wall, "no concurrency row for " .. in_flight)
      -- Every call waits 50 ms in the emulator, so no run beats the ideal.
      assert.is_true(tonumber(wall) >= tonumber(ideal) * 0.95, in_flight .. " in flight")
    end
    local mb, rss = report:match("Upload of (%d+) MB through files%.upload %(%d+ chunks%) to "
      .. "the emulator: [%d%.]+ MB/s, peak RSS ([%d%.]+) MiB above")
    assert.equal("30", mb)
    assert.is_truthy(rss)
    assert.matches('require "kore_workflow" [%d%.]+ ms', report)
    local targets = 0
    for _ in report:gmatch("\n| [^|\n]+ | not judged |") do
      targets = targets + 1
    end
    -- A quick run judges none of the six targets.
    assert.equal(6, targets)
    assert.matches("kore_workflow's calls/s over raw libcurl's, within each repetition: "
      .. "[%d%.]+ to [%d%.]+", report)
    assert.matches("Quick run: figures from few calls; targets are not judged.", report, 1, true)
  end)

  it("stops with a message naming a contender that fails", function()
    local missing = os.tmpname()
    os.remove(missing)
    local ok, report, code = run(BENCH:gsub("%-%-tools build%-bench/tools", "--tools " .. missing)
      .. " --quick")
    assert.is_false(ok)
    assert.equal(2, code)
    assert.matches("this command failed", report, 1, true)
    assert.matches(missing .. "/measure", report, 1, true)
  end)
end)
