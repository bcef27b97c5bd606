{
  "targets": [
    {
      "target_name": "berth_native",
      "sources": ["src/berth_native.c"],
      "cflags": ["-Wall", "-Wextra", "-O2"],
      "defines": ["NAPI_VERSION=8", "_GNU_SOURCE"]
    }
  ]
}
