{
  "targets": [
    {
      "target_name": "iaflow",
      "sources": [
        "native/addon.cc",
        "native/core/plan.cc",
        "native/core/backend.cc",
        "native/core/cpu_backend.cc",
        "native/core/thread_pool.cc",
        "native/core/kernels.cc",
        "native/core/kernels_avx512.cc",
        "native/core/kernels_avx2.cc",
        "native/core/kernels_portable.cc",
        "native/core/train.cc",
        "native/core/block_emulator.cc"
      ],
      "include_dirs": ["<!(node -p \"require('node-addon-api').include_dir\")"],
      "defines": ["NAPI_VERSION=8", "NAPI_CPP_EXCEPTIONS"],
      "cflags!": ["-fno-exceptions"],
      "cflags_cc!": ["-fno-exceptions"],
      "cflags_cc": ["-std=c++17", "-O3", "-fvisibility=hidden", "-ffp-contract=off", "-fno-math-errno"],
      "conditions": [
        ["OS=='linux'", {
          "libraries": ["-ldl"]
        }],
        ["OS=='win'", {
          "defines!": ["_HAS_EXCEPTIONS=0"],
          "defines": ["_HAS_EXCEPTIONS=1"],
          "msvs_settings": {
            "VCCLCompilerTool": { "ExceptionHandling": 1, "AdditionalOptions": ["/std:c++17", "/O2"] }
          }
        }],
        ["OS=='mac'", {
          "xcode_settings": {
            "GCC_ENABLE_CPP_EXCEPTIONS": "YES",
            "CLANG_CXX_LANGUAGE_STANDARD": "c++17",
            "CLANG_CXX_LIBRARY": "libc++",
            "MACOSX_DEPLOYMENT_TARGET": "11.0",
            "GCC_SYMBOLS_PRIVATE_EXTERN": "YES",
            "OTHER_CPLUSPLUSFLAGS": ["-O3", "-ffp-contract=off", "-fno-math-errno"]
          }
        }]
      ]
    }
  ]
}
