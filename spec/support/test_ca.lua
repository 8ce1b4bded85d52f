-- Test helper that makes a private certificate authority and a server
-- certificate with the openssl command, in a new temporary directory.
--
--   local test_ca = require("support.test_ca")
--   local certs = test_ca.create()
--   -- certs.ca_file verifies certs.server_cert for the host name localhost;
--   -- certs.other_ca_file is an unrelated CA that verifies nothing here.
--   certs:remove()
--
-- Keys are P-256 EC keys, because they are generated in milliseconds, and
-- every certificate is valid for two days from now.

local test_ca = {}

local Certificates = {}
Certificates.__index = Certificates

local function shell_quote(text)
  return "'" .. tostring(text):gsub("'", "'\\''") .. "'"
end

local function read_file(path)
  local handle = io.open(path, "rb")
  if not handle then
    return ""
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

-- Returns true for a successful os.execute on Lua 5.1 (0) and on Lua 5.2
-- and later (true, "exit", 0).
local function succeeded(first, _, code)
  if type(first) == "number" then
    return first == 0
  end
  return first == true and (code == nil or code == 0)
end

-- The openssl configuration: [req] lets `openssl req` run without prompts,
-- and the two extension sections make a CA certificate and a server
-- certificate whose only name is DNS:localhost, so that a client verifies
-- it for https://localhost and rejects it for https://127.0.0.1.
local CONFIG = [[
[req]
distinguished_name = subject
prompt = no

[subject]
CN = replaced by -subj

[authority]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash

[server]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
]]

local VALID_DAYS = "2"
local KEY_OPTIONS = { "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-noenc" }

-- Runs openssl with args in dir, its output going to dir/openssl.log.
-- Raises with the command and that output when openssl fails.
local function run_openssl(dir, openssl, args)
  local quoted = { shell_quote(openssl) }
  for _, arg in ipairs(args) do
    quoted[#quoted + 1] = shell_quote(arg)
  end
  local log = dir .. "/openssl.log"
  local command = ("cd %s && %s >%s 2>&1"):format(shell_quote(dir), table.concat(quoted, " "),
    shell_quote(log))
  if not succeeded(os.execute(command)) then
    error(("openssl failed: %s\n%s"):format(table.concat(quoted, " "), read_file(log)), 3)
  end
end

-- Returns the arguments of `openssl req` with KEY_OPTIONS after command.
local function req_arguments(command, args)
  local all = { "req", command }
  for _, option in ipairs(KEY_OPTIONS) do
    all[#all + 1] = option
  end
  for _, arg in ipairs(args) do
    all[#all + 1] = arg
  end
  return all
end

-- Makes a self-signed CA certificate and its key, named prefix.pem and
-- prefix.key in dir.
local function make_authority(dir, openssl, prefix, common_name)
  run_openssl(dir, openssl, req_arguments("-x509", {
    "-keyout", prefix .. ".key", "-out", prefix .. ".pem",
    "-days", VALID_DAYS, "-config", "openssl.cnf", "-extensions", "authority",
    "-subj", "/CN=" .. common_name,
  }))
end

-- Makes server.key and server.pem, signed by the CA named by prefix.
local function make_server(dir, openssl, prefix)
  run_openssl(dir, openssl, req_arguments("-new", {
    "-keyout", "server.key", "-out", "server.csr",
    "-config", "openssl.cnf", "-subj", "/CN=kore_workflow test server",
  }))
  run_openssl(dir, openssl, {
    "x509", "-req", "-in", "server.csr",
    "-CA", prefix .. ".pem", "-CAkey", prefix .. ".key", "-set_serial", "2",
    "-days", VALID_DAYS, "-extfile", "openssl.cnf", "-extensions", "server",
    "-out", "server.pem",
  })
end

local function new_temp_dir()
  local path = os.tmpname()
  os.remove(path)
  if not succeeded(os.execute("mkdir -m 700 " .. shell_quote(path))) then
    error("cannot create the directory " .. path, 3)
  end
  return path
end

--- Makes a test CA, a server certificate that it signed for localhost, and a
-- second, unrelated CA. Options: openssl (the command, default "openssl").
-- Returns a table with dir, ca_file, server_cert, server_key, other_ca_file
-- (all absolute paths) and a remove method that deletes dir.
function test_ca.create(opts)
  opts = opts or {}
  local openssl = opts.openssl or "openssl"
  local dir = new_temp_dir()
  local ok, err = pcall(function()
    write_file(dir .. "/openssl.cnf", CONFIG)
    make_authority(dir, openssl, "ca", "kore_workflow test CA")
    make_server(dir, openssl, "ca")
    make_authority(dir, openssl, "other-ca", "kore_workflow unrelated test CA")
  end)
  if not ok then
    os.execute("rm -rf " .. shell_quote(dir))
    error(err, 2)
  end
  return setmetatable({
    dir = dir,
    ca_file = dir .. "/ca.pem",
    server_cert = dir .. "/server.pem",
    server_key = dir .. "/server.key",
    other_ca_file = dir .. "/other-ca.pem",
  }, Certificates)
end

--- Deletes the directory and every key and certificate in it. Safe to call
-- more than once.
function Certificates:remove()
  if self.dir then
    os.execute("rm -rf " .. shell_quote(self.dir))
    self.dir = nil
  end
end

return test_ca
