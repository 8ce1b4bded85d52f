/*
 * Reading the definition files of a UI export zip with libzip. Entries are
 * matched by their base name, because exports put the files in a folder
 * named after the workflow. Each entry's size is checked against a limit
 * before it is read, so a zip bomb cannot exhaust memory.
 */
#include <stdlib.h>
#include <string.h>

#include <zip.h>

#include "kw.h"

#define KW_ZIP_MT "kore_workflow.zip"

typedef struct kw_zip {
  zip_t *archive;
  zip_file_t *file;
  char *buffer;
} kw_zip;

static void zip_release(kw_zip *z)
{
  if (z->file != NULL)
    zip_fclose(z->file);
  if (z->archive != NULL)
    zip_discard(z->archive);
  free(z->buffer);
  z->file = NULL;
  z->archive = NULL;
  z->buffer = NULL;
}

static int zip_gc(lua_State *L)
{
  zip_release(luaL_checkudata(L, 1, KW_ZIP_MT));
  return 0;
}

static int zip_failure(lua_State *L, const char *path, const char *problem)
{
  kw_error_info info;

  memset(&info, 0, sizeof(info));
  info.kind = "file";
  info.message = lua_pushfstring(L, "cannot read the zip file '%s': %s", path, problem);
  info.hint = "export the workflow again; the zip must hold app_definition.json, "
              "flow_definition.json and env_variables.json";
  info.id = path;
  info.retry_after = -1;
  return kw_error_return(L, NULL, &info);
}

static const char *base_name(const char *name)
{
  const char *slash = strrchr(name, '/');

  return slash != NULL ? slash + 1 : name;
}

/*
 * core.zip_read(path, names, max_bytes): returns a table from each name in
 * names to the content of the entry with that base name. Names with no entry
 * are left out. It returns nil and an error when the zip cannot be read or
 * an entry is larger than max_bytes.
 */
int kw_zip_read(lua_State *L)
{
  const char *path = luaL_checkstring(L, 1);
  lua_Number max_bytes = luaL_checknumber(L, 3);
  kw_zip *z;
  zip_int64_t count;
  zip_int64_t i;
  int error_code = 0;
  int result;

  luaL_checktype(L, 2, LUA_TTABLE);
  z = lua_newuserdata(L, sizeof(*z));
  memset(z, 0, sizeof(*z));
  if (luaL_newmetatable(L, KW_ZIP_MT)) {
    lua_pushcfunction(L, zip_gc);
    lua_setfield(L, -2, "__gc");
  }
  lua_setmetatable(L, -2);

  z->archive = zip_open(path, ZIP_RDONLY, &error_code);
  if (z->archive == NULL) {
    zip_error_t error;

    zip_error_init_with_code(&error, error_code);
    lua_pushstring(L, zip_error_strerror(&error));
    zip_error_fini(&error);
    return zip_failure(L, path, lua_tostring(L, -1));
  }

  lua_newtable(L);
  result = lua_gettop(L);
  count = zip_get_num_entries(z->archive, 0);
  for (i = 0; i < count; i++) {
    zip_stat_t st;
    const char *name;
    zip_int64_t got;

    if (zip_stat_index(z->archive, (zip_uint64_t)i, 0, &st) != 0 ||
        !(st.valid & ZIP_STAT_NAME) || !(st.valid & ZIP_STAT_SIZE))
      continue;
    name = base_name(st.name);
    lua_getfield(L, 2, name);
    if (!lua_toboolean(L, -1)) {
      lua_pop(L, 1);
      continue;
    }
    lua_pop(L, 1);
    if ((lua_Number)st.size > max_bytes)
      return zip_failure(L, path, lua_pushfstring(L, "entry %s is larger than %f bytes",
                                                  st.name, max_bytes));
    z->buffer = malloc(st.size > 0 ? (size_t)st.size : 1);
    if (z->buffer == NULL)
      return luaL_error(L, "kore_workflow: out of memory");
    z->file = zip_fopen_index(z->archive, (zip_uint64_t)i, 0);
    if (z->file == NULL)
      return zip_failure(L, path, zip_strerror(z->archive));
    got = zip_fread(z->file, z->buffer, st.size);
    if (got < 0 || (zip_uint64_t)got != st.size)
      return zip_failure(L, path, lua_pushfstring(L, "entry %s is damaged (%s)", st.name,
                                                  zip_file_strerror(z->file)));
    zip_fclose(z->file);
    z->file = NULL;
    lua_pushlstring(L, z->buffer, (size_t)st.size);
    lua_setfield(L, result, name);
    free(z->buffer);
    z->buffer = NULL;
  }
  zip_release(z);
  lua_pushvalue(L, result);
  return 1;
}
