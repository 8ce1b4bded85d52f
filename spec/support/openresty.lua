-- Test helper that runs nginx with Debian's lua module (libnginx-mod-http-lua)
-- as a child process, for the specs of kore_workflow.openresty.
--
--   local openresty = require("support.openresty")
--   openresty.build_core()
--   local server = openresty.start {
--     env = { KORE_HOST = emu.url }, secret_env = { KORE_API_KEY = key },
--     server_config = "include /path/to/examples/nginx.conf;",
--   }
--   local status, body, seconds = server:request("GET", "/ping")
--   server:stop()
--
-- nginx runs as one foreground process (daemon off, master_process off), so
-- every request goes to the same worker. Its configuration, pid file, logs
-- and temporary paths live in a new directory. It listens only on
-- 127.0.0.1, and it never reads or changes the system's nginx configuration
-- or service. It runs under `timeout`, so a test run that dies before
-- stop() leaves no nginx behind for longer than RUN_LIMIT.

local socket = require("socket")

local openresty = {}

local Server = {}
Server.__index = Server

local START_LIMIT = 10 -- seconds to wait for nginx to respond to /ping, or to exit
local RUN_LIMIT = 300 -- seconds after which `timeout` stops a forgotten nginx
local PORT_ATTEMPTS = 5
local REQUEST_TIMEOUT = 30 -- seconds a request to nginx may take by default

local MODULE_DIR = "/usr/lib/nginx/modules"
local MODULES = {
  { file = "ndk_http_module.so", package = "libnginx-mod-http-ndk" },
  { file = "ngx_http_lua_module.so", package = "libnginx-mod-http-lua" },
}
-- Debian's lua-resty-core and lua-resty-lrucache, which the lua module
-- loads at startup.
local RESTY_PATH = "/usr/share/lua/5.1/?.lua"

local function shell_quote(text)
  return "'" .. tostring(text):gsub("'", "'\\''") .. "'"
end

local function file_exists(path)
  local handle = io.open(path, "rb")
  if handle then
    handle:close()
  end
  return handle ~= nil
end

local function read_file(path)
  local handle = io.open(path, "rb")
  if not handle then
    return nil
  end
  local content = handle:read("*a")
  handle:close()
  return content
end

local function write_file(path, content)
  local handle = assert(io.open(path, "wb"))
  handle:write(content)
  handle:close()
end

local function command_succeeded(first, _, code)
  if type(first) == "number" then
    return first == 0
  end
  return first == true and (code == nil or code == 0)
end

-- Returns the first line a shell command prints, or nil.
local function command_output(command)
  local handle = io.popen(command .. " 2>/dev/null")
  local line = handle:read("*l")
  handle:close()
  if line == nil or line == "" then
    return nil
  end
  return line
end

-- Returns the absolute path of the repository root, from this file's path.
local function repository_root()
  local source = debug.getinfo(1, "S").source:match("^@(.*)$") or ""
  local root = source:match("^(.*)/spec/support/[^/]*$") or "."
  if root:sub(1, 1) ~= "/" then
    root = assert(command_output("cd " .. shell_quote(root) .. " && pwd"),
      "cannot find the absolute path of the repository root")
  end
  return root
end

openresty.root = repository_root()
openresty.core_path = openresty.root .. "/build-luajit/kore_workflow/core.so"

--- Builds the C core for LuaJIT into build-luajit/ with cmake, unless it
-- exists already. Raises with cmake's output when the build fails.
function openresty.build_core()
  if file_exists(openresty.core_path) then
    return
  end
  local build_dir = openresty.root .. "/build-luajit"
  local log = os.tmpname()
  local command = ("cmake -S %s -B %s -DKW_LUA=luajit -DCMAKE_BUILD_TYPE=RelWithDebInfo >%s 2>&1"
    .. " && cmake --build %s >>%s 2>&1"):format(shell_quote(openresty.root),
    shell_quote(build_dir), shell_quote(log), shell_quote(build_dir), shell_quote(log))
  local built = command_succeeded(os.execute(command))
  local output = read_file(log) or ""
  os.remove(log)
  if not built or not file_exists(openresty.core_path) then
    error("building the C core for LuaJIT failed (it needs cmake, gcc, pkg-config, "
      .. "libcurl4-openssl-dev and libluajit2-5.1-dev):\n" .. output, 2)
  end
end

--- Returns the nginx executable: $KORE_TEST_NGINX, nginx on PATH, or
-- /usr/sbin/nginx, where Debian installs it outside a normal user's PATH.
function openresty.find_nginx()
  local configured = os.getenv("KORE_TEST_NGINX")
  if configured and configured ~= "" then
    return configured
  end
  local found = command_output("command -v nginx")
  if found then
    return found
  end
  if file_exists("/usr/sbin/nginx") then
    return "/usr/sbin/nginx"
  end
  error("nginx is not installed; install the Debian package nginx", 2)
end

-- Returns the directory of the Lua 5.1 C modules that contains lua-cjson
-- (Debian installs it under the multiarch directory, such as
-- /usr/lib/x86_64-linux-gnu/lua/5.1).
local function find_cjson_dir()
  local multiarch = command_output("dpkg-architecture -qDEB_HOST_MULTIARCH")
    or command_output("gcc -print-multiarch")
  local candidates = {}
  if multiarch then
    candidates[#candidates + 1] = "/usr/lib/" .. multiarch .. "/lua/5.1"
  end
  candidates[#candidates + 1] = "/usr/local/lib/lua/5.1"
  candidates[#candidates + 1] = "/usr/lib/lua/5.1"
  for _, dir in ipairs(candidates) do
    if file_exists(dir .. "/cjson.so") then
      return dir
    end
  end
  error("lua-cjson for Lua 5.1 (cjson.so) was not found in " .. table.concat(candidates, ", ")
    .. "; install the Debian package lua-cjson", 3)
end

local function check_modules()
  for _, module in ipairs(MODULES) do
    local path = MODULE_DIR .. "/" .. module.file
    if not file_exists(path) then
      error(("the nginx module %s is missing; install the Debian package %s")
        :format(path, module.package), 3)
    end
  end
  if not file_exists(RESTY_PATH:gsub("%?", "resty/core")) then
    error("resty/core.lua is missing from /usr/share/lua/5.1; install the Debian package "
      .. "lua-resty-core", 3)
  end
end

-- Returns a port on 127.0.0.1 that was free when the call was made.
local function free_port()
  local listener = assert(socket.bind("127.0.0.1", 0))
  local _, port = listener:getsockname()
  listener:close()
  return tonumber(port)
end

local function sleep(seconds)
  socket.sleep(seconds)
end

-- Returns true when ready() returns true within limit seconds.
local function wait_until(limit, ready)
  local deadline = socket.gettime() + limit
  repeat
    if ready() then
      return true
    end
    sleep(0.05)
  until socket.gettime() > deadline
  return ready()
end

-- Returns true while process pid runs; an exited process that its parent
-- has not reaped yet (a zombie) counts as ended.
local function process_running(pid)
  local stat = read_file("/proc/" .. pid .. "/stat")
  if stat then
    local state = stat:match("^%d+ %b() (%a)")
    return state ~= "Z" and state ~= "X"
  end
  return command_succeeded(os.execute("kill -0 " .. pid .. " 2>/dev/null"))
end

local function render_config(values)
  local lines = {
    "worker_processes 1;",
    "daemon off;",
    "master_process off;",
    "pid ${prefix}/nginx.pid;",
    "error_log ${prefix}/logs/error.log warn;",
    "",
    "load_module " .. MODULE_DIR .. "/" .. MODULES[1].file .. ";",
    "load_module " .. MODULE_DIR .. "/" .. MODULES[2].file .. ";",
    "",
  }
  for _, name in ipairs(values.env_names) do
    lines[#lines + 1] = "env " .. name .. ";"
  end
  local rest = {
    "",
    "events {",
    "    worker_connections 256;",
    "}",
    "",
    "http {",
    "    access_log ${prefix}/logs/access.log;",
    "    default_type text/plain;",
    "    client_body_temp_path ${prefix}/temp/client_body;",
    "    proxy_temp_path ${prefix}/temp/proxy;",
    "    fastcgi_temp_path ${prefix}/temp/fastcgi;",
    "    uwsgi_temp_path ${prefix}/temp/uwsgi;",
    "    scgi_temp_path ${prefix}/temp/scgi;",
    "",
    "    lua_package_path \"${root}/lua/?.lua;${root}/lua/?/init.lua;" .. RESTY_PATH .. ";;\";",
    "    lua_package_cpath \"${root}/build-luajit/?.so;${cjson_dir}/?.so;;\";",
    "",
    "    server {",
    "        listen 127.0.0.1:${port};",
    "",
    "        location = /ping {",
    "            return 200 \"pong\\n\";",
    "        }",
    "",
    "${server_config}",
    "    }",
    "}",
    "",
  }
  for _, line in ipairs(rest) do
    lines[#lines + 1] = line
  end
  return (table.concat(lines, "\n"):gsub("%${([%w_]+)}", function(name)
    return tostring(assert(values[name], "no value for ${" .. name .. "}"))
  end))
end

-- Returns the shell command that starts nginx with the given environment.
-- The secret variables reach nginx through a file that the shell reads, one
-- value a line, so their values appear on no command line.
local function start_command(nginx, prefix, env, secret_file, secret_names)
  local steps = {}
  for name, value in pairs(env) do
    steps[#steps + 1] = ("export %s=%s"):format(name, shell_quote(value))
  end
  if #secret_names > 0 then
    local reads = {}
    for _, name in ipairs(secret_names) do
      reads[#reads + 1] = "IFS= read -r " .. name
    end
    steps[#steps + 1] = ("{ %s; } <%s"):format(table.concat(reads, "; "), shell_quote(secret_file))
    steps[#steps + 1] = "export " .. table.concat(secret_names, " ")
  end
  -- `echo $$` prints the shell's process id, which exec hands on to timeout.
  steps[#steps + 1] = "echo $$"
  steps[#steps + 1] = ("exec timeout -k 5 %d %s -p %s -c %s -e %s >>%s 2>&1"):format(
    RUN_LIMIT, shell_quote(nginx), shell_quote(prefix .. "/"),
    shell_quote(prefix .. "/nginx.conf"), shell_quote(prefix .. "/logs/error.log"),
    shell_quote(prefix .. "/logs/stdout.log"))
  return table.concat(steps, "; ")
end

-- Sends one HTTP/1.0 request, so that nginx closes the connection after the
-- response and never sends it chunked. Returns the connected socket.
local function send_request(port, method, path, timeout)
  local connection = assert(socket.tcp())
  connection:settimeout(timeout or REQUEST_TIMEOUT)
  local ok, err = connection:connect("127.0.0.1", port)
  if not ok then
    connection:close()
    return nil, ("connecting to nginx on 127.0.0.1:%d failed: %s"):format(port, err)
  end
  local body_header = method == "POST" and "Content-Length: 0\r\n" or ""
  local sent, send_err = connection:send(("%s %s HTTP/1.0\r\nHost: 127.0.0.1\r\n%s\r\n")
    :format(method, path, body_header))
  if not sent then
    connection:close()
    return nil, ("sending %s %s to nginx failed: %s"):format(method, path, send_err)
  end
  return connection
end

-- Reads the whole response from a socket of send_request and closes it.
-- Returns the status code and the body, or nil and a message.
local function read_response(connection)
  local text, err, partial = connection:receive("*a")
  connection:close()
  if not text then
    return nil, ("reading the response from nginx failed (%s) after %d bytes")
      :format(err, #(partial or ""))
  end
  local status = tonumber(text:match("^HTTP/%d%.%d (%d%d%d)"))
  if not status then
    return nil, "nginx sent no HTTP status line: " .. text:sub(1, 200)
  end
  local body = text:match("\r\n\r\n(.*)$") or ""
  return status, body
end

local function start_on(nginx, prefix, port, opts)
  local env_names = {}
  for name in pairs(opts.env or {}) do
    env_names[#env_names + 1] = name
  end
  local secret_names = {}
  local secret_values = {}
  for name, value in pairs(opts.secret_env or {}) do
    assert(not tostring(value):find("\n", 1, true), "a secret_env value must be one line")
    env_names[#env_names + 1] = name
    secret_names[#secret_names + 1] = name
    secret_values[#secret_values + 1] = value
  end
  table.sort(env_names)

  write_file(prefix .. "/nginx.conf", render_config {
    prefix = prefix,
    root = openresty.root,
    cjson_dir = find_cjson_dir(),
    port = port,
    env_names = env_names,
    server_config = opts.server_config or "",
  })
  -- A log left by an earlier attempt must not decide this attempt's outcome.
  write_file(prefix .. "/logs/error.log", "")
  write_file(prefix .. "/logs/stdout.log", "")
  local secret_file = prefix .. "/secret-env"
  write_file(secret_file, "")
  assert(os.execute("chmod 600 " .. shell_quote(secret_file)))
  write_file(secret_file, table.concat(secret_values, "\n") .. "\n")

  local handle = assert(io.popen(start_command(nginx, prefix, opts.env or {}, secret_file, secret_names)))
  local pid = handle:read("*l")
  -- The shell has read the secret file before it printed its process id.
  os.remove(secret_file)
  local server = setmetatable({
    port = port,
    prefix = prefix,
    pid = pid and pid:match("^%d+$"),
    handle = handle,
  }, Server)
  if not server.pid then
    server:halt()
    error("the shell that starts nginx printed no process id", 3)
  end

  local listening = wait_until(START_LIMIT, function()
    if not process_running(server.pid) then
      return true
    end
    local connection = send_request(port, "GET", "/ping", 1)
    return connection ~= nil and read_response(connection) == 200
  end)
  local running = process_running(server.pid)
  if listening and running then
    return server
  end
  local log = server:error_log() .. (read_file(prefix .. "/logs/stdout.log") or "")
  server:halt()
  if log:find("Address already in use", 1, true) then
    return nil, log
  end
  local failure = running and ("did not respond to /ping on 127.0.0.1:%d within %d s"):format(port, START_LIMIT)
    or "exited during startup"
  error(("nginx %s; its error log and output:\n%s"):format(failure, log), 3)
end

--- Starts nginx in a new temporary directory and waits until it responds
-- to GET /ping. Options: env (variables passed to nginx and named in `env`
-- directives), secret_env (the same, but the values never appear on a
-- command line or in a file that outlives the start), server_config (text
-- placed in the server block). Raises when nginx does not start.
function openresty.start(opts)
  opts = opts or {}
  check_modules()
  local nginx = openresty.find_nginx()
  local prefix = os.tmpname()
  os.remove(prefix)
  assert(os.execute("mkdir -p " .. shell_quote(prefix .. "/logs") .. " " .. shell_quote(prefix .. "/temp")))
  local last_log
  for _ = 1, PORT_ATTEMPTS do
    local server, log = start_on(nginx, prefix, free_port(), opts)
    if server then
      return server
    end
    last_log = log
  end
  openresty.remove_prefix(prefix)
  error(("nginx found no free port in %d attempts; its last error log:\n%s")
    :format(PORT_ATTEMPTS, last_log), 2)
end

--- Removes a prefix directory made by start.
function openresty.remove_prefix(prefix)
  if prefix and prefix:find("^/tmp/") then
    os.execute("rm -rf " .. shell_quote(prefix))
  end
end

--- Returns the text of nginx's error log.
function Server:error_log()
  return read_file(self.prefix .. "/logs/error.log") or ""
end

--- Sends a request without reading the response. Returns the socket for
-- openresty.read_response, or nil and a message.
function Server:send(method, path, timeout)
  return send_request(self.port, method, path, timeout)
end

--- Reads the response to a request of Server:send and closes the socket.
-- Returns the status code and the body, or nil and a message.
openresty.read_response = read_response

--- Sends a request and reads its response. Returns the status code, the
-- body and the seconds it took, or nil and a message.
function Server:request(method, path, timeout)
  local started = socket.gettime()
  local connection, err = send_request(self.port, method, path, timeout)
  if not connection then
    return nil, err
  end
  local status, body = read_response(connection)
  if not status then
    return nil, body
  end
  return status, body, socket.gettime() - started
end

-- Returns the process ids of the children of process pid.
local function child_pids(pid)
  local text = read_file(("/proc/%s/task/%s/children"):format(pid, pid)) or ""
  local pids = {}
  for child in text:gmatch("%d+") do
    pids[#pids + 1] = child
  end
  return pids
end

--- Stops nginx with SIGTERM and waits for it to exit, sending SIGKILL to
-- nginx and to `timeout` after START_LIMIT seconds. Keeps its directory.
function Server:halt()
  if self.halted then
    return
  end
  self.halted = true
  if self.pid and process_running(self.pid) then
    -- timeout passes SIGTERM on to nginx, which then exits at once.
    os.execute("kill -TERM " .. self.pid .. " 2>/dev/null")
    local exited = wait_until(START_LIMIT, function()
      return not process_running(self.pid)
    end)
    if not exited then
      for _, child in ipairs(child_pids(self.pid)) do
        os.execute("kill -KILL " .. child .. " 2>/dev/null")
      end
      os.execute("kill -KILL " .. self.pid .. " 2>/dev/null")
    end
  end
  -- Closing the pipe waits for the process, which has exited by now.
  self.handle:close()
end

--- Stops nginx like halt, keeps its final error log in final_error_log and
-- removes its directory. Safe to call twice.
function Server:stop()
  if self.stopped then
    return
  end
  self.stopped = true
  self:halt()
  self.final_error_log = self:error_log()
  openresty.remove_prefix(self.prefix)
end

return openresty
