std = "max"
max_line_length = 110
read_globals = { "vim", "ngx" }
exclude_files = { "build/", "build-*/" }
files["spec/"] = { std = "+busted" }
