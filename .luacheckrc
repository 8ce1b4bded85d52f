std = "max"
read_globals = { "vim", "ngx" }
exclude_files = { "build/", "build-*/" }
files["spec/"] = { std = "+busted" }
