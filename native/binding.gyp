{
  "targets": [
    {
      "target_name": "probepilot",
      "sources": [
        "src/addon.cc",
        "src/args.cc",
        "src/attach.cc",
        "src/btf.cc",
        "src/dcgm.cc",
        "src/errors.cc",
        "src/libbpf_log.cc",
        "src/maps.cc",
        "src/netlink.cc",
        "src/nvml.cc",
        "src/object.cc",
        "src/pins.cc",
        "src/ringbuf.cc",
        "src/stats.cc"
      ],
      "include_dirs": ["<!(node -p \"require('node-addon-api').include_dir\")"],
      "dependencies": ["<!(node -p \"require('node-addon-api').targets\"):node_addon_api_except"],
      "defines": ["NAPI_VERSION=8"],
      "cflags_cc!": ["-std=gnu++20"],
      "cflags_cc": ["-std=c++17", "-Wall", "-Wextra"],
      "libraries": ["-lbpf", "-lelf", "-lz", "-ldl"]
    }
  ]
}
