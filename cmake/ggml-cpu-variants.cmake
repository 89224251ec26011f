# Included by CMake right after ggml's project() (CMAKE_PROJECT_ggml_INCLUDE, set in
# .cargo/config.toml). With runtime CPU-variant selection (the `cpu-variants` feature) ggml
# builds 14 x86 variants of its CPU backend; we build the ones worth shipping (ADR 0006):
#   x64        baseline x86-64, the fallback every CPU runs
#   haswell    AVX2 + FMA + F16C + BMI2 (most x86 CPUs since 2013)
#   alderlake  AVX2 + AVX-VNNI (Intel desktop and laptop CPUs without AVX-512)
#   skylakex   AVX-512 (F, CD, BW, DQ, VL)
#   zen4       AVX-512 with VBMI, VNNI and BF16 (AMD Zen 4+, Intel Cooper Lake and newer Xeons)
# Others run the best of these that they support. On 64-bit ARM (Linux and Android lists):
#   armv8.0_1  the baseline every arm64 CPU runs (NEON)
#   armv8.2_2  + the int8 dot product and FP16 arithmetic (most phones since 2018)
#   armv8.6_1  + the int8 matrix multiply (i8mm) and SVE (recent phones and servers)
# (Android's lists carry the same names with an android_ prefix; Apple's are all kept.)
# Without variants (a static build, mobile) ggml calls the implementation with an empty tag:
# passed through.
#
# How: ggml defines ggml_add_cpu_backend_variant_impl in ggml-cpu/CMakeLists.txt and calls it
# for each variant afterwards. Every add_subdirectory in ggml goes through the macro below;
# once that file has defined the function, we define it again as a filter, and CMake keeps the
# original as _ggml_add_cpu_backend_variant_impl.
if(NOT DEFINED EDGECASCADE_CPU_VARIANTS)
  set(EDGECASCADE_CPU_VARIANTS x64 haswell alderlake skylakex zen4)
endif()
if(NOT DEFINED EDGECASCADE_ARM_CPU_VARIANTS)
  set(EDGECASCADE_ARM_CPU_VARIANTS armv8.0_1 armv8.2_2 armv8.6_1
      android_armv8.0_1 android_armv8.2_2 android_armv8.6_1 apple_m1 apple_m2_m3 apple_m4)
endif()

macro(add_subdirectory)
  _add_subdirectory(${ARGV})
  get_property(_ec_wrapped GLOBAL PROPERTY EDGECASCADE_CPU_VARIANTS_WRAPPED)
  if(NOT _ec_wrapped AND COMMAND ggml_add_cpu_backend_variant_impl)
    set_property(GLOBAL PROPERTY EDGECASCADE_CPU_VARIANTS_WRAPPED TRUE)
    function(ggml_add_cpu_backend_variant_impl tag_name)
      if(GGML_SYSTEM_ARCH STREQUAL "ARM")
        set(_ec_keep ${EDGECASCADE_ARM_CPU_VARIANTS})
      else()
        set(_ec_keep ${EDGECASCADE_CPU_VARIANTS})
      endif()
      if(tag_name STREQUAL "" OR NOT GGML_SYSTEM_ARCH MATCHES "^(x86|ARM)$"
         OR tag_name IN_LIST _ec_keep)
        _ggml_add_cpu_backend_variant_impl("${tag_name}")
      else()
        message(STATUS "edgecascade: skipping the ${tag_name} CPU variant")
      endif()
    endfunction()
  endif()
endmacro()
