-- Profiles file of kore-workflow: copy it to ~/.config/kore-workflow/config.lua,
-- or point KORE_WORKFLOW_CONFIG at it, and select an environment with
-- `kore-workflow --profile NAME ...` or KORE_PROFILE=NAME.
--
-- The tool runs this file as Lua source with no global variables, so it can
-- hold only constants. Each profile has:
--   host          base URL of the environment (required);
--   api_key_file  a file whose first line is the API key, readable only by
--                 you (chmod 600). A leading ~ is your home directory, and a
--                 relative path is relative to this file's directory;
--   api_key_env   or instead, the name of an environment variable that
--                 contains the key;
--   ca_file       optional PEM file of the CAs that verify the server, with
--                 the same path rules as api_key_file.
-- A profile must never contain the key itself: the tool rejects a file with
-- an api_key field, because configuration files get copied and committed.
--
-- Example: copy the workflow a-5f0c... from staging to production and
-- deploy it there:
--   kore-workflow promote a-5f0c... --from staging --to production --deploy
return {
  profiles = {
    staging = {
      host = "https://staging.ai-for-process.example.ai",
      api_key_file = "~/.config/kore-workflow/staging.key",
    },
    production = {
      host = "https://ai-for-process.example.ai",
      api_key_env = "KORE_PROD_KEY",
      ca_file = "/etc/ssl/certs/example-corp-ca.pem",
    },
  },
}
