-- Memory behaviour of the C core. Calls rejected for their arguments and
-- clients that are dropped must not grow the process. A request body must
-- reach the server intact when full collections run while the call reads
-- and encodes it.
--
-- The Lua heap is measured in this process. The resident set size (RSS) is
-- measured in a fresh process running scripts/memory-probe.lua, because in
-- this one the free memory that earlier specs left behind would absorb a
-- leak of several MiB without any growth.
--
-- KORE_TEST_MEMCHECK is set to "asan" or "valgrind" by scripts/test-asan and
-- scripts/test-valgrind. Those tools report leaks and invalid accesses of
-- this process themselves, and under them the RSS is the tool's (ASan's
-- quarantine and valgrind's queue of freed blocks hold freed memory on
-- purpose), so the RSS checks run only in a plain run.
local kw = require "kore_workflow"
local emulator = require "support.emulator"
local fixtures = require "support.fixtures"

local probe = dofile("scripts/memory-probe.lua")

local KEY = fixtures.TEST_KEY
local WORKFLOW_ID = fixtures.WORKFLOW_ID
local MEMCHECK = os.getenv("KORE_TEST_MEMCHECK")
-- The interpreter of the fresh processes, as for the emulator (spec/support/emulator.lua).
local LUA = os.getenv("KORE_TEST_LUA") or "lua5.4"

local BAD_CALLS = 100000
local BAD_CALLS_WARM_UP = 10000
-- A leak of 100 bytes per call is a 112-byte malloc chunk each, 10.7 MiB
-- over BAD_CALLS calls: above this bound, which the leak test below checks.
local BAD_CALLS_RSS_BOUND_KB = 8 * 1024
local LUA_HEAP_BOUND_KB = 1024

local CLIENTS = 1000
local CLIENTS_WARM_UP = 100
-- A client that is never freed keeps about 10 KiB (the libcurl handle, its
-- strings and the codec), so 1000 of them would pass this bound five times.
-- Smaller leaks per client are left to the valgrind run, which checks every
-- block at exit.
local CLIENTS_RSS_BOUND_KB = 2 * 1024
local CLIENTS_LUA_HEAP_BOUND_KB = 256

local IMPORT_RUNS = 500

local function report(label, before, after)
  print(string.format("\n%s: Lua heap %.0f -> %.0f KiB (%+.0f), RSS %d -> %d KiB (%+d)",
    label, before.lua_kb, after.lua_kb, after.lua_kb - before.lua_kb,
    before.rss_kb, after.rss_kb, after.rss_kb - before.rss_kb))
end

local function shell_quote(text)
  return "'" .. text:gsub("'", "'\\''") .. "'"
end

-- Runs scripts/memory-probe.lua in a fresh process with this process's
-- module paths, and extra_cpath first when given. Returns the figures
-- before and after, and the count it printed.
local function run_probe(mode, count, warm_up, extra_cpath)
  local cpath = (extra_cpath and extra_cpath .. ";" or "") .. package.cpath
  local command = string.format("LUA_PATH=%s LUA_CPATH=%s %s scripts/memory-probe.lua %s %d %d",
    shell_quote(package.path), shell_quote(cpath), shell_quote(LUA), mode, count, warm_up)
  local handle = assert(io.popen(command .. " 2>&1"))
  local output = handle:read("*a")
  handle:close()
  local lua_before, rss_before, lua_after, rss_after, result =
    output:match("^(%d+) (%d+) (%d+) (%d+) (%d+)\n$")
  assert(result, "memory-probe.lua printed: " .. output)
  return { lua_kb = tonumber(lua_before), rss_kb = tonumber(rss_before) },
    { lua_kb = tonumber(lua_after), rss_kb = tonumber(rss_after) },
    tonumber(result)
end

-- Returns 24 lowercase hex digits built from three 32-bit numbers.
local function hex24(numbers)
  return string.format("%08x%08x%08x", numbers[1], numbers[2], numbers[3])
end

-- Three random 32-bit numbers, drawn as 16-bit halves because math.random
-- takes only int-sized bounds on Lua 5.1 and LuaJIT.
local function random_numbers()
  local numbers = {}
  for i = 1, 3 do
    numbers[i] = math.random(0, 0xffff) * 0x10000 + math.random(0, 0xffff)
  end
  return numbers
end

describe("memory", function()
  local emu

  setup(function()
    emu = emulator.start { api_key = KEY, workflows = { WORKFLOW_ID } }
  end)

  teardown(function()
    emu:stop()
  end)

  it("stays flat over 100000 bad calls", function()
    local client = kw.client { host = emu.url, api_key = KEY }
    local calls = probe.bad_calls(client, emu.url)

    local raised, unexpected = probe.run_bad_calls(calls, BAD_CALLS_WARM_UP)
    assert.is_nil(unexpected)
    assert.equal(BAD_CALLS_WARM_UP, raised)

    -- LuaJIT's compiled traces count towards its heap, and how many it makes
    -- varies from run to run, so the measured loop runs interpreted.
    local jit_module = rawget(_G, "jit")
    if jit_module then
      jit_module.flush()
      jit_module.off()
    end
    local before = probe.measure()
    raised, unexpected = probe.run_bad_calls(calls, BAD_CALLS)
    local after = probe.measure()
    if jit_module then
      jit_module.on()
    end
    report(BAD_CALLS .. " bad calls in this process", before, after)

    assert.is_nil(unexpected)
    assert.equal(BAD_CALLS, raised)
    assert.is_true(after.lua_kb - before.lua_kb < LUA_HEAP_BOUND_KB,
      string.format("the Lua heap grew by %.0f KiB", after.lua_kb - before.lua_kb))
    assert.equal(0, #emu:requests())
  end)

  it("keeps RSS flat over 100000 bad calls", function()
    if MEMCHECK then
      pending("RSS is the memory checker's under " .. MEMCHECK)
      return
    end
    local before, after, raised = run_probe("bad-calls", BAD_CALLS, BAD_CALLS_WARM_UP)
    report(BAD_CALLS .. " bad calls in a fresh process", before, after)
    assert.equal(BAD_CALLS, raised)
    assert.is_true(after.rss_kb - before.rss_kb < BAD_CALLS_RSS_BOUND_KB,
      string.format("RSS grew by %d KiB", after.rss_kb - before.rss_kb))
  end)

  it("RSS bound catches a 100-byte leak per call", function()
    if MEMCHECK then
      pending("RSS is the memory checker's under " .. MEMCHECK)
      return
    end
    -- memcheck_canary.leak(100) drops a malloc'd block of 100 bytes, as a
    -- leak in the C core would.
    local dir = fixtures.temp_dir()
    -- Debian names the pkg-config package of each Lua after its interpreter.
    assert(os.execute(("gcc -O2 -fPIC -shared $(pkg-config --cflags %s) -o %s "
      .. "scripts/memcheck-canary.c"):format(shell_quote(LUA), shell_quote(dir .. "/memcheck_canary.so"))))
    local before, after, raised = run_probe("leak", BAD_CALLS, BAD_CALLS_WARM_UP, dir .. "/?.so")
    os.execute("rm -rf " .. shell_quote(dir))
    report(BAD_CALLS .. " bad calls leaking 100 bytes each", before, after)
    assert.equal(BAD_CALLS, raised)
    assert.is_true(after.rss_kb - before.rss_kb > BAD_CALLS_RSS_BOUND_KB,
      string.format("RSS grew by only %d KiB", after.rss_kb - before.rss_kb))
  end)

  it("stays flat over 1000 dropped clients", function()
    assert.equal(0, probe.drop_clients(CLIENTS_WARM_UP, emu.url))
    local before = probe.measure()
    local left = probe.drop_clients(CLIENTS, emu.url)
    local after = probe.measure()
    report(CLIENTS .. " dropped clients in this process", before, after)

    assert.equal(0, left)
    assert.is_true(after.lua_kb - before.lua_kb < CLIENTS_LUA_HEAP_BOUND_KB,
      string.format("the Lua heap grew by %.0f KiB", after.lua_kb - before.lua_kb))
  end)

  it("keeps RSS flat over 1000 dropped clients", function()
    if MEMCHECK then
      pending("RSS is the memory checker's under " .. MEMCHECK)
      return
    end
    local before, after, freed = run_probe("clients", CLIENTS, CLIENTS_WARM_UP)
    report(CLIENTS .. " dropped clients in a fresh process", before, after)
    assert.equal(CLIENTS, freed)
    assert.is_true(after.rss_kb - before.rss_kb < CLIENTS_RSS_BOUND_KB,
      string.format("RSS grew by %d KiB", after.rss_kb - before.rss_kb))
  end)

  it("sends bodies intact across collections", function()
    local client = kw.client { host = emu.url, api_key = KEY }
    local seed = os.time()
    math.randomseed(seed)
    emu:reset()

    -- Each field is made by __index when the call reads it, right after a
    -- full collection, and nothing of the spec's refers to it: only the
    -- numbers it is made from are kept. The encoder runs another full
    -- collection after encoding, inside the call and before the transfer.
    -- A C pointer into a Lua string that is no longer on the call's stack
    -- would then point to freed memory. The asan run reports such a read,
    -- and here it would show as a body that differs from the one passed.
    local finalized = 0
    local finalized_at_encode
    local function on_gc()
      finalized = finalized + 1
    end
    -- Lua 5.1 and LuaJIT run __gc only for userdata, made with newproxy.
    local function new_helper()
      if _VERSION == "Lua 5.1" and newproxy then
        local proxy = newproxy(true)
        getmetatable(proxy).__gc = on_gc
        return proxy
      end
      return setmetatable({}, { __gc = on_gc })
    end
    local encode = client._codec.encode
    client._codec.encode = function(value)
      local text = encode(value)
      value = nil -- luacheck: no unused
      collectgarbage()
      finalized_at_encode = finalized
      return text
    end

    local runs = {}
    for run = 1, IMPORT_RUNS do
      local numbers = {
        id = random_numbers(),
        workflowDataFileId = random_numbers(),
        flowDataFileId = random_numbers(),
        envVariablesFileId = random_numbers(),
      }
      local body = setmetatable({}, { __index = function(_, field)
        new_helper()
        collectgarbage()
        return hex24(numbers[field])
      end })
      local finalized_before = finalized
      finalized_at_encode = nil
      local job, err = client.workflow.import("a-" .. hex24(numbers.id), body)
      runs[run] = {
        numbers = numbers,
        finalized = finalized_at_encode and finalized_at_encode - finalized_before,
        job = job,
        status = err and err.status,
      }
    end
    client._codec.encode = encode

    local requests = emu:requests()
    assert.equal(IMPORT_RUNS, #requests, "seed " .. seed)
    for run, expected in ipairs(runs) do
      local numbers = expected.numbers
      local request = requests[run]
      local where = string.format("run %d of seed %d", run, seed)
      assert.equal(3, expected.finalized, where)
      assert.is_nil(expected.job, where)
      assert.equal(404, expected.status, where)
      assert.equal("POST", request.method, where)
      assert.equal("/api/public/workflows/a-" .. hex24(numbers.id) .. "/import", request.path, where)
      assert.same({
        workflowDataFileId = hex24(numbers.workflowDataFileId),
        flowDataFileId = hex24(numbers.flowDataFileId),
        envVariablesFileId = hex24(numbers.envVariablesFileId),
      }, request.body, where)
    end
  end)
end)
