/* convkit C ABI. Written to match src/capi.rs; tests/c/check_header.sh compares the two
 * (every exported function and status value must appear in both). */
#ifndef CONVKIT_H
#define CONVKIT_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Status codes returned by every function. */
typedef enum ConvkitStatus {
  ConvkitStatus_Ok = 0,
  ConvkitStatus_InvalidArgument = 1, /* a NULL pointer, a bad length or an invalid option */
  ConvkitStatus_InvalidSpec = 2,     /* the layer spec is malformed or impossible */
  ConvkitStatus_Unsupported = 3,     /* the algorithm or ISA cannot run this layer here */
  ConvkitStatus_OutOfMemory = 4,     /* the plan would exceed its memory budget */
  ConvkitStatus_Internal = 5,        /* a caught panic: please report it */
} ConvkitStatus;

/* An opaque plan: a layer with its algorithm chosen and its weights packed. */
typedef struct ConvkitPlan ConvkitPlan;

/* The library version, e.g. "0.1.0" (static storage). */
const char *convkit_version(void);

/* The message of the last failed call on this thread ("" if none). */
const char *convkit_last_error_message(void);

/* Creates a plan from a layer spec in JSON (SPEC.md section 1) and OIHW weights. bias may be
 * NULL (bias_len 0) when the spec has "bias": false; algo NULL or "auto" lets convkit choose;
 * layout 0 = NCHW, 1 = NHWC; threads 0 = all cores. Free with convkit_plan_destroy. */
ConvkitStatus convkit_plan_create_json(const char *spec_json, const float *weight, size_t weight_len,
                                       const float *bias, size_t bias_len, const char *algo,
                                       uint32_t layout, size_t threads, ConvkitPlan **out);

/* Floats in the plan's output. */
ConvkitStatus convkit_plan_output_len(const ConvkitPlan *plan, size_t *len);

/* Per-run scratch of the plan, in bytes (owned by the library). */
ConvkitStatus convkit_plan_scratch_size(const ConvkitPlan *plan, size_t *bytes);

/* Runs the plan; residual may be NULL (length 0) when the spec has none. Lengths are checked;
 * on error the output is untouched. A plan may run from several threads at once. */
ConvkitStatus convkit_plan_run(const ConvkitPlan *plan, const float *input, size_t input_len,
                               const float *residual, size_t residual_len, float *output,
                               size_t output_len);

/* Frees a plan; NULL is ignored. */
void convkit_plan_destroy(ConvkitPlan *plan);

/* Loads a wisdom file into the tuner's cache (entries may be NULL). */
ConvkitStatus convkit_wisdom_load(const char *path, size_t *entries);

/* Saves the tuner's cache to a wisdom file (atomically). */
ConvkitStatus convkit_wisdom_save(const char *path);

#ifdef __cplusplus
}
#endif

#endif /* CONVKIT_H */
