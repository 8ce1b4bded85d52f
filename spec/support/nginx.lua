-- Test helper that runs an nginx of its own: TLS on a free loopback port,
-- with /api/ proxied to an emulator, and its prefix, configuration, pid
-- file, logs and temporary paths in a new temporary directory. It never
-- reads or changes the system's nginx configuration or service.
--
--   local nginx = require("support.nginx")
--   local server = nginx.start({ cert = certs.server_cert, key = certs.server_key,
--                                upstream = emu.url })
--   -- call https://localhost:<server.port>, then read server:access_log()
--   server:stop()
--
-- nginx runs in the foreground (`daemon off`) as one process
-- (`master_process off`), under `timeout`, so that a test run that dies
-- before stop() leaves no nginx behind for longer than the run limit.

local socket = require("socket")

local nginx = {}

local Server = {}
Server.__index = Server

local WAIT_LIMIT = 10 -- seconds to wait for nginx to listen, to write a log entry, or to exit
local RUN_LIMIT = 600 -- seconds after which `timeout` stops a forgotten nginx
local PORT_ATTEMPTS = 5

local function shell_quote(text)
  return "'" .. tostring(text):gsub("'", "'\\''") .. "'"
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

local function succeeded(first, _, code)
  if type(first) == "number" then
    return first == 0
  end
  return first == true and (code == nil or code == 0)
end

local function command_path(name)
  local handle = io.popen("command -v " .. shell_quote(name) .. " 2>/dev/null")
  local found = handle:read("*l")
  handle:close()
  if found == nil or found == "" then
    return nil
  end
  return found
end

--- Returns the nginx executable: $KORE_TEST_NGINX, nginx on PATH, or
-- /usr/sbin/nginx (Debian installs it there, outside a normal user's PATH).
-- Returns nil when none exists.
function nginx.find()
  local configured = os.getenv("KORE_TEST_NGINX")
  if configured and configured ~= "" then
    return configured
  end
  local found = command_path("nginx")
  if found then
    return found
  end
  if read_file("/usr/sbin/nginx") then
    return "/usr/sbin/nginx"
  end
  return nil
end

-- Returns true while process pid runs. A zombie (exited, not yet reaped by
-- its parent) counts as ended. Uses /proc where there is one, else kill -0.
local function process_running(pid)
  local stat = read_file("/proc/" .. pid .. "/stat")
  if stat then
    local state = stat:match("^%d+ %b() (%a)")
    return state ~= "Z" and state ~= "X"
  end
  if read_file("/proc/self/stat") then
    return false
  end
  return succeeded(os.execute("kill -0 " .. pid .. " 2>/dev/null"))
end

-- Returns a port that is free on 127.0.0.1 and on ::1 at the time of the
-- call. The ::1 check matters because a client resolving localhost may try
-- ::1 first (libcurl does), and must find nothing listening there.
local function free_port()
  for _ = 1, 20 do
    local listener = assert(socket.bind("127.0.0.1", 0))
    local _, port = listener:getsockname()
    listener:close()
    local ipv6 = socket.tcp6 and socket.tcp6()
    local free = true
    if ipv6 then
      ipv6:setoption("ipv6-v6only", true)
      local bound, err = ipv6:bind("::1", port)
      -- Any error but "address already in use" means no usable IPv6 loopback.
      free = bound ~= nil or not tostring(err):find("in use", 1, true)
      ipv6:close()
    end
    if free then
      return tonumber(port)
    end
  end
  error("found no port free on both 127.0.0.1 and ::1 in 20 attempts", 3)
end

-- Returns the loopback host and port of an http:// URL, raising for any
-- other host, so that nginx only ever proxies to a local server.
local function loopback_upstream(url)
  local host, port = url:match("^http://([%d%.]+):(%d+)/?$")
  if host ~= "127.0.0.1" then
    host, port = url:match("^http://(%[::1%]):(%d+)/?$")
  end
  if not host then
    error("upstream must be http://127.0.0.1:PORT or http://[::1]:PORT, got " .. tostring(url), 3)
  end
  return host .. ":" .. port
end

-- The access log has one line per request, "connection requests method uri
-- status protocol reused": nginx's serial number of the client connection,
-- the number of requests made on it so far, and whether the TLS session was
-- resumed ("r") or new (".").
local CONFIG = [[
daemon off;
master_process off;
worker_processes 1;
pid ${prefix}/nginx.pid;
error_log ${prefix}/error.log info;

events {
  worker_connections 64;
}

http {
  log_format connections '$connection $connection_requests $request_method $uri $status '
                         '$ssl_protocol $ssl_session_reused';
  access_log ${prefix}/access.log connections;

  client_body_temp_path ${prefix}/client_body;
  proxy_temp_path ${prefix}/proxy;
  fastcgi_temp_path ${prefix}/fastcgi;
  uwsgi_temp_path ${prefix}/uwsgi;
  scgi_temp_path ${prefix}/scgi;
  client_max_body_size 16m;

  server {
    listen 127.0.0.1:${port} ssl;
    server_name localhost;
    ssl_certificate ${cert};
    ssl_certificate_key ${key};
    ssl_protocols TLSv1.2 TLSv1.3;

    location /api/ {
      proxy_pass http://${upstream};
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }

    location / {
      return 404;
    }
  }
}
]]

local function render(template, values)
  return (template:gsub("%${(%w+)}", function(name)
    local value = values[name]
    if value == nil then
      error("no value for ${" .. name .. "} in the nginx configuration", 4)
    end
    return tostring(value)
  end))
end

-- Returns the process id in the pid file, or nil while nginx has not written it.
function Server:nginx_pid()
  local text = read_file(self.prefix .. "/nginx.pid")
  return text and text:match("^(%d+)")
end

function Server:error_log()
  return read_file(self.prefix .. "/error.log") or ""
end

-- Waits up to limit seconds for ready() to return true; returns whether it did.
local function wait_until(limit, ready)
  local deadline = socket.gettime() + limit
  repeat
    if ready() then
      return true
    end
    socket.sleep(0.02)
  until socket.gettime() > deadline
  return ready()
end

--- Returns the access log as a list of { connection, requests, method, uri,
-- status, protocol, reused }. connection, requests and status are numbers,
-- and reused is "r" for a resumed TLS session and "." for a full handshake.
function Server:access_log()
  local entries = {}
  for line in (read_file(self.prefix .. "/access.log") or ""):gmatch("[^\n]+") do
    local connection, requests, method, uri, status, protocol, reused =
      line:match("^(%d+) (%d+) (%S+) (%S+) (%d+) (%S+) (%S+)$")
    if connection then
      entries[#entries + 1] = {
        connection = tonumber(connection),
        requests = tonumber(requests),
        method = method,
        uri = uri,
        status = tonumber(status),
        protocol = protocol,
        reused = reused,
      }
    end
  end
  return entries
end

--- Returns the access log once it has at least count entries, or as it is
-- after WAIT_LIMIT seconds. nginx writes an entry after it has sent the
-- response, so a client can see the response before the entry is written.
function Server:wait_for_log(count)
  local entries
  wait_until(WAIT_LIMIT, function()
    entries = self:access_log()
    return #entries >= count
  end)
  return entries
end

-- Sends a signal to nginx (by its pid file) and to the process that popen
-- started (`timeout`, which passes the signal on to nginx).
function Server:signal(name)
  local nginx_pid = self:nginx_pid()
  if nginx_pid then
    os.execute(("kill -%s %s 2>/dev/null"):format(name, nginx_pid))
  end
  if self.pid then
    os.execute(("kill -%s %s 2>/dev/null"):format(name, self.pid))
  end
end

function Server:running()
  return self.pid ~= nil and process_running(self.pid)
end

--- Stops nginx: SIGTERM, then SIGKILL if it has not exited within
-- WAIT_LIMIT seconds. Reaps the process and deletes the temporary
-- directory. Safe to call more than once. Returns true when nginx exited on
-- SIGTERM.
function Server:stop()
  if self.stopped then
    return self.clean_exit
  end
  self.stopped = true
  self:signal("TERM")
  self.clean_exit = wait_until(WAIT_LIMIT, function()
    return not self:running()
  end)
  if not self.clean_exit then
    self:signal("KILL")
  end
  self.handle:close()
  if not self.keep_dir then
    os.execute("rm -rf " .. shell_quote(self.prefix))
  end
  return self.clean_exit
end

-- Starts nginx once on port. Returns the server, or nil, the error log and
-- whether the port was already in use.
local function start_on(executable, prefix, port, opts)
  write_file(prefix .. "/nginx.conf", render(CONFIG, {
    prefix = prefix,
    port = port,
    cert = opts.cert,
    key = opts.key,
    upstream = opts.upstream_address,
  }))
  os.remove(prefix .. "/error.log")
  os.remove(prefix .. "/nginx.pid")

  -- `echo $$` prints the shell's process id, which exec hands on to timeout.
  local command = ("echo $$; exec timeout -k 5 %d %s -p %s -c %s -e %s >>%s 2>&1"):format(
    RUN_LIMIT, shell_quote(executable), shell_quote(prefix .. "/"),
    shell_quote(prefix .. "/nginx.conf"), shell_quote(prefix .. "/error.log"),
    shell_quote(prefix .. "/output.log"))
  local handle = assert(io.popen(command, "r"))
  local server = setmetatable({
    handle = handle,
    pid = handle:read("*l"),
    prefix = prefix,
    port = port,
    keep_dir = true,
    url = "https://localhost:" .. port,
    ip_url = "https://127.0.0.1:" .. port,
  }, Server)

  local listening = wait_until(WAIT_LIMIT, function()
    if not server:running() then
      return true
    end
    if not server:nginx_pid() then
      return false
    end
    local probe = socket.connect("127.0.0.1", port)
    if probe then
      probe:close()
      return true
    end
    return false
  end)
  if listening and server:running() then
    server.keep_dir = false
    return server
  end
  server:stop()
  local log = server:error_log() .. (read_file(prefix .. "/output.log") or "")
  return nil, log, log:find("in use", 1, true) ~= nil
end

--- Starts nginx with TLS on 127.0.0.1 and a free port. Options: cert and
-- key (PEM files of the server), upstream (the emulator's base URL, on
-- 127.0.0.1 or ::1), nginx (the executable, default nginx.find()).
-- Returns a server with port, url (https://localhost:PORT), ip_url
-- (https://127.0.0.1:PORT) and prefix (its directory). Raises with nginx's
-- error log when it does not start.
function nginx.start(opts)
  local executable = opts.nginx or nginx.find()
  if not executable then
    error("nginx is not installed; `make test` installs it (Debian package nginx)", 2)
  end
  assert(opts.cert and opts.key and opts.upstream, "nginx.start needs cert, key and upstream")
  local settings = {
    cert = opts.cert,
    key = opts.key,
    upstream_address = loopback_upstream(opts.upstream),
  }
  local log
  for _ = 1, PORT_ATTEMPTS do
    local prefix = os.tmpname()
    os.remove(prefix)
    assert(succeeded(os.execute("mkdir -m 700 " .. shell_quote(prefix))), "cannot create " .. prefix)
    local server, port_in_use
    server, log, port_in_use = start_on(executable, prefix, free_port(), settings)
    if server then
      return server
    end
    os.execute("rm -rf " .. shell_quote(prefix))
    if not port_in_use then
      break
    end
  end
  error("nginx did not start:\n" .. tostring(log), 2)
end

return nginx
