{
  # Source fallback: node-gyp-build compiles this when no prebuilt binary fits the
  # platform. CPU backend only (no CUDA); the cmake-js build (CMakeLists.txt) is the
  # main build and adds the CUDA backend.
  "targets": [
    {
      "target_name": "moekit",
      "sources": [
        "<!@(node -e \"const fs=require('fs');const l=[];for(const d of ['native','kernels/common','kernels/cpu'])for(const f of fs.readdirSync(d))if(f.endsWith('.cc'))l.push(d+'/'+f);l.push('kernels/cuda/runtime_disabled.cc');console.log(l.join(' '))\")"
      ],
      "include_dirs": [
        "<!@(node -p \"require('node-addon-api').include\")",
        "."
      ],
      "defines": ["NAPI_VERSION=8", "NAPI_CPP_EXCEPTIONS", "NODE_ADDON_API_CPP_EXCEPTIONS_ALL"],
      "cflags!": ["-fno-exceptions"],
      "cflags_cc!": ["-fno-exceptions", "-std=gnu++1y", "-std=gnu++17"],
      "cflags_cc": ["-std=c++17", "-O3", "-fexceptions"],
      "ldflags": ["-pthread"]
    }
  ]
}
